"""attune-e2e benchmark: measures the test plan's performance targets (python -m bench)."""
