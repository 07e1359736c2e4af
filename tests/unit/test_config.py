"""attune_emulator.config: YAML, ATTUNE__ overrides, path resolution, validation."""
from pathlib import Path

import pytest

from attune_emulator.config import ConfigError, env_overrides, load_config

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_e2e_config_loads():
    cfg = load_config(REPO / "config.e2e.yaml", environ={})
    assert cfg.database_url.startswith("postgresql://")
    assert cfg.amqp_url.startswith("amqp://")
    assert cfg.has_section("notifier")
    assert cfg.get("worker.heartbeat_interval") == 1
    assert Path(cfg.get("packs_base_dir")).is_absolute()
    assert cfg.get("packs_base_dir") == str((REPO / ".state/packs").resolve())


def test_defaults_and_dotted_get(tmp_path, monkeypatch):
    monkeypatch.delenv("ATTUNE_API_URL", raising=False)
    cfg = load_config(write(tmp_path, "server: {port: 9000}\n"), environ={})
    assert cfg.get("server.port") == 9000
    assert cfg.get("server.host") == "0.0.0.0"          # default kept beside the override
    assert cfg.get("worker.heartbeat_interval") == 30
    assert cfg.get("nope.nothing", "dflt") == "dflt"
    assert not cfg.has_section("notifier")
    assert cfg.section("notifier") == {}
    assert cfg.api_url == "http://127.0.0.1:9000"        # 0.0.0.0 rewritten


def test_env_overrides_are_typed_and_nested():
    out = env_overrides({"ATTUNE__WORKER__HEARTBEAT_INTERVAL": "1",
                         "ATTUNE__SECURITY__ALLOW_SELF_REGISTRATION": "true",
                         "ATTUNE__DATABASE__URL": "postgresql://a:b@h:1/d",
                         "ATTUNE__LOG__LEVEL": "debug",
                         "ATTUNE__EMPTY": "",
                         "OTHER": "x", "ATTUNE_CONFIG": "y"})
    assert out == {"worker": {"heartbeat_interval": 1},
                   "security": {"allow_self_registration": True},
                   "database": {"url": "postgresql://a:b@h:1/d"},
                   "log": {"level": "debug"}, "empty": ""}


def test_env_overrides_win_over_yaml(tmp_path):
    path = write(tmp_path, "server: {port: 9000}\nworker: {name: a}\n")
    cfg = load_config(path, environ={"ATTUNE__SERVER__PORT": "9100",
                                     "ATTUNE__WORKER__NAME": "b",
                                     "ATTUNE__NOTIFIER__PORT": "9101"})
    assert cfg.get("server.port") == 9100
    assert cfg.get("worker.name") == "b"
    assert cfg.get("notifier.port") == 9101 and cfg.has_section("notifier")


def test_relative_paths_resolve_against_config_folder(tmp_path):
    sub = tmp_path / "conf"
    sub.mkdir()
    path = write(sub, "packs_base_dir: ../packs\nartifacts_dir: /abs/art\nlog: {file: logs/x.log}\n")
    cfg = load_config(path, environ={"ATTUNE__RUNTIME_ENVS_DIR": "envs"})
    assert cfg.get("packs_base_dir") == str((tmp_path / "packs").resolve())
    assert cfg.get("artifacts_dir") == "/abs/art"
    assert cfg.get("runtime_envs_dir") == str((sub / "envs").resolve())
    assert cfg.get("log.file") == str((sub / "logs/x.log").resolve())


def test_config_from_environment_variable(tmp_path):
    path = write(tmp_path, "server: {port: 9200}\n")
    cfg = load_config(None, environ={"ATTUNE_CONFIG": str(path)})
    assert cfg.get("server.port") == 9200 and cfg.path == path.resolve()


@pytest.mark.parametrize("text,environ,message", [
    ("server: [\n", {}, "invalid YAML"),
    ("- a\n- b\n", {}, "top level must be a mapping"),
    ("security: {encryption_key: short}\n", {}, "at least 32 characters"),
    ("database: {url: ''}\n", {}, "database.url must not be empty"),
    ("log: {level: verbose}\n", {}, "log.level must be one of"),
    ("{}\n", {"ATTUNE__LOG__LEVEL": "loud"}, "log.level must be one of"),
])
def test_validation_errors(tmp_path, text, environ, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), environ=environ)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml", environ={})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(None, environ={"ATTUNE_CONFIG": str(tmp_path / "absent.yaml")})


def test_jwt_secret_default(tmp_path):
    cfg = load_config(write(tmp_path, "{}\n"), environ={})
    assert cfg.jwt_secret == "insecure_default_secret_change_in_production"
