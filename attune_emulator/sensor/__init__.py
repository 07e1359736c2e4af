"""attune_emulator.sensor service."""
