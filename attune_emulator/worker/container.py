"""Extension E12 `container_runtime`: actions whose runtime is `core.container` run isolated.

An action opts in with `runner_type: container` (runtime `core.container`, aliases `container`,
`docker`, `podman`) and a `container` object:

    {image, command?: [...] (default ["python3", "-u", "{entry_point}"]),
     network?: "none" | "bridge" (default none), memory_mb?, cpus?,
     pull?: "if_not_present" | "always" | "never", env?: {NAME: value}}

Engines (`worker.container.engine`: auto | docker | podman | sandbox | none, default auto) are
probed once at worker start; `auto` takes the first that works: docker (`docker info`), podman
(`podman info` plus a trial run of an image already present), then the bubblewrap sandbox
(`bwrap ... --unshare-all true`). Without one, the worker does not advertise the runtime
`container` and such actions are unschedulable (upstream's path for a missing runtime).

Docker / podman: `run --rm -i` with a name and label per execution, `--network none`, memory and
cpu limits, a read-only root with a private `/tmp`, all capabilities dropped, no new privileges,
the pack mounted read-only at `/opt/attune/pack`. The sandbox: `bwrap` over the host's root
mounted read-only, own PID/network/UTS/IPC/mount namespaces, a private `/tmp`, no capabilities, a
cleared environment, the pack mounted read-only at the same path and `RLIMIT_AS` from
`memory_mb`; it cannot honour the image, and says so (`result.container.image_honoured: false`).

Both: parameters go on stdin as for any process runtime (or as a read-only file at
`/opt/attune/params` with `parameter_delivery: file`); the environment holds only the allow-listed
`ATTUNE_*` variables (`container_env`), never the worker's own configuration or secrets. Stdout,
stderr, exit codes, truncation, timeout and cancel go through the common runner. Nothing is left
behind: the per-execution staging directory `<staging_dir>/<execution id>` is removed, the sandbox
process is gone, the container is removed (`rm -f` by name).
"""
from __future__ import annotations

import json
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from . import params as P

log = logging.getLogger("attune_emulator.worker.container")

ENGINES = ("docker", "podman", "sandbox")
ENGINE_SETTINGS = ("auto",) + ENGINES + ("none",)
NETWORKS = ("none", "bridge")
PULL_POLICIES = ("if_not_present", "always", "never")
SPEC_KEYS = ("image", "command", "network", "memory_mb", "cpus", "pull", "env")

PACK_MOUNT = "/opt/attune/pack"
WORKDIR = PACK_MOUNT + "/actions"
PARAMS_MOUNT = "/opt/attune/params"
DEFAULT_COMMAND = ("python3", "-u", "{entry_point}")
SANDBOX_HOSTNAME = "attune-sandbox"
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Fixed variables every container gets (no value comes from the worker's environment).
BASE_ENV = {
    "PATH": CONTAINER_PATH,
    "HOME": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONPATH": PACK_MOUNT + "/lib",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
}
# The worker's per-execution variables that may cross into a container (upstream's action
# environment); everything else of the worker's environment stays outside.
ALLOWED_ATTUNE_VARS = frozenset({
    "ATTUNE_EXEC_ID", "ATTUNE_ACTION", "ATTUNE_API_URL", "ATTUNE_API_TOKEN", "ATTUNE_PACK_REF",
    "ATTUNE_RULE", "ATTUNE_TRIGGER", "ATTUNE_PARAMETER_DELIVERY", "ATTUNE_PARAMETER_FORMAT",
})
ALLOWED_ATTUNE_PREFIXES = ("ATTUNE_CONTEXT_",)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Names an action's `container.env` may not set: the worker's own variables and loader hooks.
_RESERVED_ENV = re.compile(r"^(ATTUNE_|LD_|PATH$|HOME$|PYTHONPATH$)", re.IGNORECASE)
PROBE_TIMEOUT = 15.0
PULL_TIMEOUT = 600.0


class SpecError(ValueError):
    """A malformed `container` object (API: 422; pack YAML: reported and ignored)."""


class ContainerError(Exception):
    """The container cannot be started; the message becomes `result.error`."""


# ------------------------------------------------------------------ the action field (pure)
def parse_spec(value: Any) -> dict | None:
    """Validate and normalise an action's `container` object; None stays None."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise SpecError("container must be an object")
    unknown = sorted(set(value) - set(SPEC_KEYS))
    if unknown:
        raise SpecError(f"unknown container field(s): {', '.join(unknown)}")
    image = value.get("image")
    if not isinstance(image, str) or not image.strip() or len(image) > 512 \
            or any(ch.isspace() for ch in image):
        raise SpecError("container.image must be a non-empty image reference without spaces")
    spec: dict[str, Any] = {"image": image}
    command = value.get("command")
    if command is not None:
        if not isinstance(command, list) or not command \
                or not all(isinstance(c, str) and c for c in command):
            raise SpecError("container.command must be a non-empty list of strings")
        spec["command"] = list(command)
    network = value.get("network", "none")
    if network is None:
        network = "none"
    if network not in NETWORKS:
        raise SpecError(f"container.network must be one of {', '.join(NETWORKS)}")
    spec["network"] = network
    memory = value.get("memory_mb")
    if memory is not None:
        if isinstance(memory, bool) or not isinstance(memory, int) or not 16 <= memory <= 1048576:
            raise SpecError("container.memory_mb must be an integer between 16 and 1048576")
        spec["memory_mb"] = memory
    cpus = value.get("cpus")
    if cpus is not None:
        if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or not 0 < cpus <= 1024:
            raise SpecError("container.cpus must be a number greater than 0")
        spec["cpus"] = cpus
    pull = value.get("pull")
    if pull is not None:
        if pull not in PULL_POLICIES:
            raise SpecError(f"container.pull must be one of {', '.join(PULL_POLICIES)}")
        spec["pull"] = pull
    env = value.get("env")
    if env is not None:
        if not isinstance(env, Mapping):
            raise SpecError("container.env must be an object of NAME: value")
        clean: dict[str, str] = {}
        for name, val in env.items():
            if not isinstance(name, str) or not _ENV_NAME.match(name) or _RESERVED_ENV.match(name):
                raise SpecError(f"container.env: variable name {name!r} is not allowed")
            if isinstance(val, (dict, list)) or val is None:
                raise SpecError(f"container.env.{name} must be a string, number or boolean")
            clean[name] = str(val).lower() if isinstance(val, bool) else str(val)
        if clean:
            spec["env"] = clean
    return spec


def container_env(worker_env: Mapping[str, str], spec: Mapping | None = None) -> dict[str, str]:
    """The environment inside the container: fixed basics, the action's own `container.env`, and
    the allow-listed per-execution `ATTUNE_*` variables (`ATTUNE__*` configuration overrides,
    paths of the worker host and everything else are left out)."""
    env = dict(BASE_ENV)
    for name, value in ((spec or {}).get("env") or {}).items():
        env[name] = value
    for name, value in worker_env.items():
        if name in ALLOWED_ATTUNE_VARS or (name.startswith(ALLOWED_ATTUNE_PREFIXES)
                                           and not name.startswith("ATTUNE__")):
            env[name] = value
    return env


def render_command(spec: Mapping, entry_point: str) -> list[str]:
    """`container.command` (default python3 -u <entry point>) with `{entry_point}` (the path in
    the container), `{pack_dir}` and `{actions_dir}` substituted."""
    command = spec.get("command") or list(DEFAULT_COMMAND)
    path = f"{WORKDIR}/{entry_point}"
    return [c.replace("{entry_point}", path).replace("{pack_dir}", PACK_MOUNT)
             .replace("{actions_dir}", WORKDIR) for c in command]


def container_name(execution_id: int) -> str:
    return f"attune-exec-{execution_id}"


def engine_run_argv(binary: str, execution_id: int, spec: Mapping, pack_dir: str,
                    env: Mapping[str, str], command: list[str],
                    params_file: str | None = None) -> list[str]:
    """`docker|podman run` for one execution. `ATTUNE_*` variables are passed by name only
    (`-e NAME`), so their values (the execution token) never appear in argv: the engine client
    takes them from its own environment (`client_env`). The fixed ones go as `NAME=value`."""
    argv = [binary, "run", "--rm", "-i", "--name", container_name(execution_id),
            "--label", f"attune.execution_id={execution_id}",
            "--network", spec.get("network") or "none"]
    if spec.get("memory_mb"):
        argv += ["--memory", f"{spec['memory_mb']}m", "--memory-swap", f"{spec['memory_mb']}m"]
    if spec.get("cpus"):
        argv += ["--cpus", str(spec["cpus"])]
    argv += ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
             "--security-opt", "no-new-privileges", "--pull", "never",
             "-v", f"{pack_dir}:{PACK_MOUNT}:ro"]
    if params_file:
        argv += ["-v", f"{params_file}:{PARAMS_MOUNT}:ro"]
    argv += ["-w", WORKDIR]
    for name in sorted(env):
        argv += ["-e", name if name.startswith("ATTUNE_") else f"{name}={env[name]}"]
    return argv + [spec["image"], *command]


def engine_client_env(worker_env: Mapping[str, str], inner_env: Mapping[str, str]) -> dict:
    """The docker/podman client's own environment: what it needs to reach its engine, plus the
    `ATTUNE_*` values it forwards by name."""
    env = {k: v for k, v in worker_env.items()
           if k in ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CONTEXT",
                    "XDG_RUNTIME_DIR", "CONTAINER_HOST", "CONTAINERS_CONF")}
    env.setdefault("PATH", CONTAINER_PATH)
    env.update({k: v for k, v in inner_env.items() if k.startswith("ATTUNE_")})
    return env


def _opt_entries(opt_dir: str = "/opt") -> list[tuple[str, str | None]]:
    """(name, symlink target or None) of the host's /opt, re-created read-only in the sandbox
    (its /opt becomes a tmpfs so that the pack mount point can be made under a read-only root)."""
    try:
        names = sorted(os.listdir(opt_dir))
    except OSError:
        return []
    out = []
    for name in names:
        if name == "attune":
            continue
        path = os.path.join(opt_dir, name)
        out.append((name, os.readlink(path) if os.path.islink(path) else None))
    return out


def sandbox_argv(bwrap: str, spec: Mapping, pack_dir: str, env: Mapping[str, str],
                 command: list[str], *, params_file: str | None = None,
                 info_fd: int | None = None,
                 opt_entries: list[tuple[str, str | None]] | None = None) -> list[str]:
    """The bubblewrap command line: read-only host root, private /tmp, own namespaces (the
    network one too unless `network: bridge`), no capabilities, a cleared environment, the pack
    read-only at /opt/attune/pack."""
    argv = [bwrap, "--ro-bind", "/", "/", "--tmpfs", "/tmp", "--proc", "/proc", "--dev", "/dev",
            "--unshare-all"]
    if (spec.get("network") or "none") == "bridge":
        argv.append("--share-net")
    argv += ["--die-with-parent", "--new-session", "--hostname", SANDBOX_HOSTNAME,
             "--cap-drop", "ALL", "--clearenv"]
    for name in sorted(env):
        argv += ["--setenv", name, env[name]]
    argv += ["--tmpfs", "/opt"]
    for name, target in (_opt_entries() if opt_entries is None else opt_entries):
        if target is not None:
            argv += ["--symlink", target, f"/opt/{name}"]
        else:
            argv += ["--ro-bind", f"/opt/{name}", f"/opt/{name}"]
    argv += ["--ro-bind", pack_dir, PACK_MOUNT]
    if params_file:
        argv += ["--ro-bind", params_file, PARAMS_MOUNT]
    argv += ["--remount-ro", "/opt", "--chdir", WORKDIR]
    if info_fd is not None:
        argv += ["--info-fd", str(info_fd)]
    return argv + ["--", *command]


def memory_limit_bytes(spec: Mapping) -> int | None:
    mb = spec.get("memory_mb")
    return int(mb) * 1024 * 1024 if mb else None


# ------------------------------------------------------------------ engine probe
@dataclass
class Engine:
    kind: str          # docker | podman | sandbox
    binary: str
    version: str = ""

    def describe(self) -> str:
        return f"{self.kind}:{self.binary}"


def _run(argv: list[str], timeout: float = PROBE_TIMEOUT, **kw) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, **kw)
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("container engine probe: %s failed: %s", argv[0], exc)
        return None


def _which(name: str) -> str | None:
    if os.path.isabs(name):
        return name if os.access(name, os.X_OK) else None
    return shutil.which(name)


def _probe_docker(binary: str | None) -> Engine | None:
    if not binary:
        return None
    out = _run([binary, "info", "--format", "{{.ServerVersion}}"])
    if out is None or out.returncode != 0:
        log.info("container engine probe: docker unusable (%s)",
                 (out.stderr.strip().splitlines() or ["no output"])[-1] if out else "not runnable")
        return None
    return Engine("docker", binary, out.stdout.strip())


def _probe_podman(binary: str | None) -> Engine | None:
    if not binary:
        return None
    info = _run([binary, "info", "--format", "{{.Version.Version}}"])
    if info is None or info.returncode != 0:
        log.info("container engine probe: podman info failed")
        return None
    images = _run([binary, "images", "--format", "{{.Repository}}:{{.Tag}}"])
    local = [i for i in (images.stdout.split() if images and images.returncode == 0 else [])
             if "<none>" not in i]
    if not local:
        log.info("container engine probe: podman has no local image for a trial run")
        return None
    trial = _run([binary, "run", "--rm", "--network", "none", "--pull", "never", local[0], "true"],
                 timeout=60)
    if trial is None or trial.returncode != 0:
        log.info("container engine probe: podman trial run failed (%s)",
                 (trial.stderr.strip().splitlines() or ["no output"])[-1] if trial else "error")
        return None
    return Engine("podman", binary, info.stdout.strip())


def _probe_sandbox(binary: str | None) -> Engine | None:
    if not binary:
        return None
    with tempfile.TemporaryDirectory(prefix="attune-sandbox-probe-") as pack:
        os.mkdir(os.path.join(pack, "actions"))
        argv = sandbox_argv(binary, {"network": "none"}, pack, dict(BASE_ENV), ["true"])
        out = _run(argv)
    if out is None or out.returncode != 0:
        log.info("container engine probe: bubblewrap sandbox unusable (%s)",
                 (out.stderr.strip().splitlines() or ["no output"])[-1] if out else "not runnable")
        return None
    version = _run([binary, "--version"])
    return Engine("sandbox", binary, version.stdout.strip() if version else "")


def probe_engine(cfg) -> Engine | None:
    """The container engine this worker uses, or None (runtime `container` not advertised)."""
    setting = str(cfg.get("worker.container.engine", "auto") or "auto").strip().lower()
    if setting not in ENGINE_SETTINGS:
        log.warning("worker.container.engine %r is not one of %s; using auto", setting,
                    ", ".join(ENGINE_SETTINGS))
        setting = "auto"
    only = os.environ.get("ATTUNE_WORKER_RUNTIMES")
    if setting == "none" or (only and "container" not in
                             {x.strip().lower() for x in only.split(",")}):
        log.info("container runtime disabled on this worker")
        return None
    order = ENGINES if setting == "auto" else (setting,)
    for kind in order:
        if kind == "docker":
            engine = _probe_docker(_which(str(cfg.get("worker.container.docker_binary", "docker"))))
        elif kind == "podman":
            engine = _probe_podman(_which(str(cfg.get("worker.container.podman_binary", "podman"))))
        else:
            engine = _probe_sandbox(_which(str(cfg.get("worker.container.sandbox_binary", "bwrap"))))
        if engine is not None:
            log.info("container runtime: engine %s (%s %s)", engine.kind, engine.binary,
                     engine.version)
            return engine
    log.info("container runtime: no usable engine (tried %s); runtime not advertised",
             ", ".join(order))
    return None


def staging_root(cfg) -> Path:
    configured = cfg.get("worker.container.staging_dir")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / "attune" / "container"


# ------------------------------------------------------------------ one execution
def _image_present(engine: Engine, image: str) -> bool:
    out = _run([engine.binary, "image", "inspect", image], timeout=60)
    return bool(out is not None and out.returncode == 0)


def _ensure_image(engine: Engine, spec: Mapping) -> bool:
    """Pull per `container.pull`; True when this run pulled the image."""
    policy = spec.get("pull") or "if_not_present"
    image = spec["image"]
    if policy == "never" or (policy == "if_not_present" and _image_present(engine, image)):
        if policy == "never" and not _image_present(engine, image):
            raise ContainerError(f"Action execution failed: container image '{image}' is not "
                                 f"present and pull is 'never'")
        return False
    log.info("pulling container image %s with %s", image, engine.kind)
    out = _run([engine.binary, "pull", image], timeout=PULL_TIMEOUT)
    if out is None or out.returncode != 0:
        reason = (out.stderr.strip().splitlines() or ["unknown error"])[-1] if out else "timed out"
        raise ContainerError(f"Action execution failed: cannot pull container image '{image}': "
                             f"{reason}")
    return True


def _set_memory_limit(limit: int | None) -> Callable[[], None] | None:
    if not limit:
        return None

    def preexec() -> None:  # runs in the child between fork and exec; nothing but the syscall
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return preexec


def _pid_gone(pid: int, wait: float = 2.0) -> bool:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return True
        try:  # reap it if it is ours (it is not, normally: bwrap's child)
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    return not os.path.exists(f"/proc/{pid}")


class ContainerRun:
    """The container side of one execution: staging dir, spawn extras, result, cleanup."""

    def __init__(self, engine: Engine, execution_id: int, spec: dict, staging: Path):
        self.engine = engine
        self.execution_id = execution_id
        self.spec = spec
        self.staging = staging
        self.pulled: bool | None = None
        self.info_fd: int | None = None
        self.info_path = staging / "info.json"
        self.cleaned = False

    def info(self) -> dict:
        base = {"engine": self.engine.kind, "image": self.spec["image"],
                "image_honoured": self.engine.kind in ("docker", "podman")}
        if self.engine.kind == "sandbox":
            try:
                # bwrap writes one (pretty-printed) JSON object: {"child-pid": N, ...}
                text = self.info_path.read_text().strip()
                data = json.JSONDecoder().raw_decode(text)[0] if text else {}
                if isinstance(data.get("child-pid"), int):
                    base["host_pid"] = data["child-pid"]
            except (OSError, ValueError, IndexError):
                pass
        else:
            base["container_name"] = container_name(self.execution_id)
            if self.pulled is not None:
                base["pulled"] = self.pulled
        return base

    def finalize(self, _status: str, result: dict) -> dict:
        """Add `result.container` (after the process is gone)."""
        self._close_info_fd()
        result = dict(result)
        result["container"] = self.info()
        return result

    def _close_info_fd(self) -> None:
        if self.info_fd is not None:
            try:
                os.close(self.info_fd)
            except OSError:
                pass
            self.info_fd = None

    def cleanup(self) -> None:
        """Idempotent: the worker calls it before recording the result and again on exit."""
        if self.cleaned:
            return
        self.cleaned = True
        self._close_info_fd()
        if self.engine.kind == "sandbox":
            pid = self.info().get("host_pid")
            if isinstance(pid, int) and not _pid_gone(pid):
                log.warning("execution %s: sandbox process %s still present; killing it",
                            self.execution_id, pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        else:
            out = _run([self.engine.binary, "rm", "-f", container_name(self.execution_id)],
                       timeout=60)
            if out is not None and out.returncode == 0 and out.stdout.strip():
                log.info("execution %s: removed container %s", self.execution_id,
                         container_name(self.execution_id))
        shutil.rmtree(self.staging, ignore_errors=True)


def plan_execution(engine: Engine, *, cfg, execution_id: int, action: dict, pack_dir: Path,
                   document: Mapping, env: Mapping[str, str], delivery: str, fmt: str,
                   timeout: int, output_format: str) -> dict:
    """The run plan (same keys as the worker's process plans, plus `spawn`, `finalize` and
    `cleanup`) for a container action."""
    try:
        spec = parse_spec(action.get("container"))
    except SpecError as exc:
        raise ContainerError(f"Action execution failed: invalid container configuration: "
                             f"{exc}") from exc
    if spec is None:
        raise ContainerError(f"Action execution failed: action '{action['ref']}' uses the "
                             f"container runtime but has no container configuration")
    entry = action.get("entrypoint") or ""
    if not entry or not (pack_dir / "actions" / entry).is_file():
        raise ContainerError(
            f"Action execution failed: Invalid action: No executable content found for action "
            f"'{action['ref']}'. Expected file at: {pack_dir / 'actions' / entry}")
    staging = staging_root(cfg) / str(execution_id)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, mode=0o700)
    run = ContainerRun(engine, execution_id, spec, staging)
    try:
        inner_env = container_env(env, spec)
        stdin_data: bytes | None = None
        params_file = None
        if delivery == "file":
            params_path = staging / "params"
            params_path.write_text(P.render(document, fmt))
            params_path.chmod(0o444)
            params_file = str(params_path)
            inner_env["ATTUNE_PARAMETER_FILE"] = PARAMS_MOUNT
        else:
            stdin_data = P.stdin_payload(document, fmt)
        command = render_command(spec, entry)
        spawn: dict[str, Any] = {}
        if engine.kind == "sandbox":
            fd = os.open(run.info_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            run.info_fd = fd
            argv = sandbox_argv(engine.binary, spec, str(pack_dir), inner_env, command,
                                params_file=params_file, info_fd=fd)
            spawn = {"pass_fds": (fd,), "preexec_fn": _set_memory_limit(memory_limit_bytes(spec))}
            client_env = {"PATH": os.environ.get("PATH", CONTAINER_PATH)}
        else:
            run.pulled = _ensure_image(engine, spec)
            argv = engine_run_argv(engine.binary, execution_id, spec, str(pack_dir),
                                   inner_env, command, params_file=params_file)
            client_env = engine_client_env(os.environ, inner_env)
    except BaseException:
        run.cleanup()
        raise
    return {"argv": argv, "cwd": str(staging), "env": client_env, "stdin": stdin_data,
            "timeout": timeout, "runtime": "container", "delivery": delivery, "format": fmt,
            "output_format": output_format,
            "describe": f"{entry} in {engine.kind} ({spec['image']})",
            "spawn": spawn, "finalize": run.finalize, "cleanup": run.cleanup}


__all__ = ["Engine", "ContainerError", "ContainerRun", "SpecError", "container_env",
           "engine_run_argv", "parse_spec", "plan_execution", "probe_engine", "render_command",
           "sandbox_argv", "staging_root"]
