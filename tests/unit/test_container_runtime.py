"""Unit tests of the container runtime's pure parts (extension E12, worker/container.py):
the `container` field, the environment allow-list and the docker/podman/bwrap command lines."""
import pytest

from attune_emulator.worker import container as c

SPEC = {"image": "python:3.11-slim", "network": "none", "memory_mb": 256, "cpus": 1}


def test_parse_spec_normalises_and_defaults_network():
    assert c.parse_spec(None) is None
    assert c.parse_spec({"image": "alpine:3"}) == {"image": "alpine:3", "network": "none"}
    assert c.parse_spec({**SPEC, "pull": "never", "command": ["python3", "{entry_point}"],
                         "env": {"MODE": "x", "N": 3, "FLAG": True}}) == {
        **SPEC, "pull": "never", "command": ["python3", "{entry_point}"],
        "env": {"MODE": "x", "N": "3", "FLAG": "true"}}


@pytest.mark.parametrize("bad, fragment", [
    ("alpine", "must be an object"),
    ({}, "container.image"),
    ({"image": "a b"}, "container.image"),
    ({"image": "a", "network": "host"}, "container.network"),
    ({"image": "a", "memory_mb": 8}, "container.memory_mb"),
    ({"image": "a", "memory_mb": True}, "container.memory_mb"),
    ({"image": "a", "cpus": 0}, "container.cpus"),
    ({"image": "a", "pull": "sometimes"}, "container.pull"),
    ({"image": "a", "command": []}, "container.command"),
    ({"image": "a", "env": {"ATTUNE__SECURITY__ENCRYPTION_KEY": "x"}}, "not allowed"),
    ({"image": "a", "env": {"ATTUNE_API_TOKEN": "x"}}, "not allowed"),
    ({"image": "a", "env": {"LD_PRELOAD": "/x.so"}}, "not allowed"),
    ({"image": "a", "env": {"1BAD": "x"}}, "not allowed"),
    ({"image": "a", "privileged": True}, "unknown container field"),
])
def test_parse_spec_rejects_malformed(bad, fragment):
    with pytest.raises(c.SpecError, match=fragment):
        c.parse_spec(bad)


def test_container_env_keeps_only_the_allow_list():
    worker_env = {"PATH": "/root/.pyenv/shims:/usr/bin", "HOME": "/root",
                  "ATTUNE__SECURITY__ENCRYPTION_KEY": "secret", "ATTUNE_E2E_STACK": "{}",
                  "ATTUNE_EXEC_ID": "7", "ATTUNE_API_TOKEN": "tok", "ATTUNE_CONTEXT_RUN": "r",
                  "ATTUNE_ARTIFACTS_DIR": "/host/path", "VIRTUAL_ENV": "/venv"}
    env = c.container_env(worker_env, {"env": {"MODE": "fast"}})
    assert env == {**c.BASE_ENV, "MODE": "fast", "ATTUNE_EXEC_ID": "7",
                   "ATTUNE_API_TOKEN": "tok", "ATTUNE_CONTEXT_RUN": "r"}
    assert env["PATH"] == c.CONTAINER_PATH and env["HOME"] == "/tmp"


def test_render_command_defaults_to_python_on_the_mounted_entry_point():
    assert c.render_command(SPEC, "probe.py") == \
        ["python3", "-u", "/opt/attune/pack/actions/probe.py"]
    assert c.render_command({"command": ["sh", "{actions_dir}/x.sh", "{pack_dir}"]}, "x") == \
        ["sh", "/opt/attune/pack/actions/x.sh", "/opt/attune/pack"]


def test_engine_run_argv_isolates_and_never_puts_attune_values_in_argv():
    argv = c.engine_run_argv("docker", 42, SPEC, "/packs/p", {"PATH": "/bin",
                             "ATTUNE_API_TOKEN": "tok"}, ["python3", "a.py"],
                             params_file="/stage/params")
    joined = " ".join(argv)
    for part in ("run --rm -i --name attune-exec-42 --label attune.execution_id=42",
                 "--network none", "--memory 256m", "--cpus 1", "--read-only --tmpfs /tmp",
                 "--cap-drop ALL", "--security-opt no-new-privileges",
                 "-v /packs/p:/opt/attune/pack:ro", "-v /stage/params:/opt/attune/params:ro",
                 "-w /opt/attune/pack/actions", "-e ATTUNE_API_TOKEN -e PATH=/bin"):
        assert part in joined, part
    assert "tok" not in argv
    assert argv[-3:] == ["python:3.11-slim", "python3", "a.py"]


def test_engine_client_env_forwards_attune_values_by_name_only():
    env = c.engine_client_env({"PATH": "/usr/bin", "DOCKER_HOST": "unix:///d.sock",
                               "ATTUNE__SECURITY__ENCRYPTION_KEY": "k", "SECRET": "s"},
                              {"PATH": "/in", "ATTUNE_API_TOKEN": "tok"})
    assert env == {"PATH": "/usr/bin", "DOCKER_HOST": "unix:///d.sock", "ATTUNE_API_TOKEN": "tok"}


def test_sandbox_argv_layout():
    argv = c.sandbox_argv("/usr/bin/bwrap", SPEC, "/packs/p", {"PATH": "/bin", "A": "1"},
                          ["python3", "x.py"], info_fd=9,
                          opt_entries=[("tools", None), ("link", "/elsewhere")])
    joined = " ".join(argv)
    assert argv[:5] == ["/usr/bin/bwrap", "--ro-bind", "/", "/", "--tmpfs"]
    for part in ("--unshare-all --die-with-parent --new-session --hostname attune-sandbox",
                 "--cap-drop ALL --clearenv --setenv A 1 --setenv PATH /bin",
                 "--tmpfs /opt --ro-bind /opt/tools /opt/tools --symlink /elsewhere /opt/link",
                 "--ro-bind /packs/p /opt/attune/pack --remount-ro /opt",
                 "--chdir /opt/attune/pack/actions --info-fd 9 -- python3 x.py"):
        assert part in joined, part
    assert "--share-net" not in argv
    bridged = c.sandbox_argv("bwrap", {**SPEC, "network": "bridge"}, "/p", {}, ["true"],
                             opt_entries=[])
    assert bridged[bridged.index("--unshare-all") + 1] == "--share-net"


def test_memory_limit_bytes():
    assert c.memory_limit_bytes(SPEC) == 256 * 1024 * 1024
    assert c.memory_limit_bytes({"image": "a"}) is None


def test_probe_engine_honours_none_and_the_runtime_filter(monkeypatch):
    class Cfg:
        def __init__(self, engine):
            self.engine = engine

        def get(self, key, default=None):
            return self.engine if key == "worker.container.engine" else default

    assert c.probe_engine(Cfg("none")) is None
    monkeypatch.setenv("ATTUNE_WORKER_RUNTIMES", "shell,python")
    assert c.probe_engine(Cfg("auto")) is None
