"""attune_emulator.worker service."""
