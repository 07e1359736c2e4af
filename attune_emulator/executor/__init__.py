"""attune_emulator.executor service."""
