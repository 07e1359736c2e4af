"""tests/helpers/faults.py: the fault stack's derived configuration."""
import yaml

from tests.helpers.faults import FAULT_HTTP_OFFSET, FAULT_INFRA_OFFSET, derive_config


def test_derive_config_offsets_every_port_and_renames_the_worker(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({
        "database": {"url": "postgresql://attune:pw@127.0.0.1:35432/attune_e2e", "schema": "attune"},
        "message_queue": {"url": "amqp://guest:guest@127.0.0.1:35672/%2f"},
        "server": {"host": "127.0.0.1", "port": 18080},
        "notifier": {"port": 18081},
        "worker": {"name": "e2e-worker-1", "heartbeat_interval": 1},
        "packs_base_dir": ".state/packs"}))
    out = yaml.safe_load(derive_config(base, tmp_path / "faults").read_text())
    assert out["database"]["url"] == \
        f"postgresql://attune:pw@127.0.0.1:{35432 + FAULT_INFRA_OFFSET}/attune_e2e"
    assert out["message_queue"]["url"] == f"amqp://guest:guest@127.0.0.1:{35672 + FAULT_INFRA_OFFSET}/%2f"
    assert (out["server"]["port"], out["notifier"]["port"]) == \
        (18080 + FAULT_HTTP_OFFSET, 18081 + FAULT_HTTP_OFFSET)
    assert out["worker"] == {"name": "faults-e2e-worker-1", "heartbeat_interval": 1}
    assert out["packs_base_dir"] == str((tmp_path / "faults" / "packs").resolve())
    assert out["database"]["schema"] == "attune"
