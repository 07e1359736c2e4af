"""attune_emulator.notifier service."""
