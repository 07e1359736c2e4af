"""attune_emulator.api service."""
