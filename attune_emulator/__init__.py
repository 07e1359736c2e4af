"""attune_emulator: an Attune-compatible stack (api, executor, worker, sensor, notifier).

Each service is its own OS process, started like upstream's binaries:
`python -m attune_emulator <service> --config config.e2e.yaml`. They share nothing but PostgreSQL
and RabbitMQ. See README.md in this folder for the internal contracts between services.
"""
__version__ = "0.1.0"
