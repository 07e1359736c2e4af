"""Provision PostgreSQL and RabbitMQ for the embedded stack.

`ensure_postgres(cfg, state_dir)` and `ensure_rabbitmq(cfg, state_dir)`:

* if the configured URL already answers, it is used as is (and never stopped by us);
* otherwise, when the server binaries are installed, a private instance is created (first time)
  or restarted (later: the data is reused, which takes seconds) with its data under
  `<state_dir>/postgres` and `<state_dir>/rabbitmq`, listening on 127.0.0.1 and the configured port;
* without the binaries an `InfraError` says exactly what to install.

What was started is recorded in `<state_dir>/infra.json`, so `stop_infra(state_dir)` stops only
what this module started.

`cfg` is an `attune_emulator.config.Config` (anything with `database_url` and `amqp_url`).
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

INSTALL_HINT = "apt-get install postgresql rabbitmq-server"
PG_SUPERUSER = "postgres"


class InfraError(RuntimeError):
    """PostgreSQL or RabbitMQ cannot be provided; the message says why and what to do."""


# --------------------------------------------------------------------------------------------
# small utilities


def _log(msg: str) -> None:
    print(f"[infra] {msg}", file=sys.stderr, flush=True)


def _port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int | None) -> bool:
    """Whether `pid` is a live process (a zombie counts as dead). The suite's one such check."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie still "exists"; treat it as dead
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    return True


def _is_root() -> bool:
    return os.geteuid() == 0


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:])


class _State:
    """`<state_dir>/infra.json`: what this module started (merged read-modify-write)."""

    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / "infra.json"

    def load(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def update(self, key: str, value: dict | None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_suffix(".lock")
        with open(lock, "w") as lf:
            try:
                import fcntl
                fcntl.flock(lf, fcntl.LOCK_EX)
            except ImportError:  # pragma: no cover
                pass
            data = self.load()
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
            os.replace(tmp, self.path)


def _locked(state_dir: Path, name: str):
    """An exclusive file lock so concurrent processes don't start the same server twice."""
    import fcntl

    @contextlib.contextmanager
    def cm():
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(state_dir) / f".{name}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield
    return cm()


# --------------------------------------------------------------------------------------------
# PostgreSQL


def find_postgres_bindir() -> Path | None:
    """The newest installed PostgreSQL server's bin directory, or None."""
    env = os.environ.get("ATTUNE_E2E_PG_BINDIR")
    if env and (Path(env) / "postgres").exists():
        return Path(env)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                        key=lambda p: int(Path(p).parent.parent.name)
                        if Path(p).parent.parent.name.isdigit() else 0)
    if candidates:
        return Path(candidates[-1]).parent
    for name in ("postgres", "pg_ctl"):
        found = shutil.which(name)
        if found and (Path(found).parent / "initdb").exists():
            return Path(found).parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(Exception):
            bindir = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                    timeout=10).stdout.strip()
            if bindir and (Path(bindir) / "postgres").exists():
                return Path(bindir)
    return None


def _pg_params(url: str) -> dict:
    u = urlparse(url)
    if u.scheme not in ("postgresql", "postgres"):
        raise InfraError(f"database.url must be a postgresql:// URL (got {url!r})")
    return {
        "host": u.hostname or "127.0.0.1",
        "port": u.port or 5432,
        "user": unquote(u.username or "attune"),
        "password": unquote(u.password or ""),
        "dbname": unquote((u.path or "/").lstrip("/") or "attune"),
    }


def _pg_try_connect(url: str, timeout: int = 3) -> str | None:
    """None if a connection to `url` works, else the error text."""
    import psycopg2
    try:
        conn = psycopg2.connect(url, connect_timeout=timeout)
        conn.close()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable"
        return str(exc).strip()


def _ensure_os_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
        return
    except KeyError:
        pass
    if not _is_root():
        raise InfraError(f"OS user {name!r} missing and not root")
    _log(f"creating OS user {name!r}")
    subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/var/lib/postgresql",
                    "--shell", "/bin/sh", name], check=True)


def _as_pg_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", PG_SUPERUSER, "--", *cmd] if _is_root() else cmd


def _user_can_traverse(user: str, path: Path) -> bool:
    if not _is_root():
        return True
    r = subprocess.run(["runuser", "-u", user, "--", "test", "-w", str(path)],
                       capture_output=True)
    return r.returncode == 0


def _pg_home(state_dir: Path) -> Path:
    """`<state_dir>/postgres`, or (when root and the postgres user can't reach the state dir,
    e.g. a clone under /root) a directory under /var/lib/attune-e2e linked from there."""
    home = Path(state_dir) / "postgres"
    if home.is_symlink() or home.exists():
        return home.resolve()
    home.mkdir(parents=True)
    if _is_root():
        os.chown(home, pwd.getpwnam(PG_SUPERUSER).pw_uid, pwd.getpwnam(PG_SUPERUSER).pw_gid)
        if not _user_can_traverse(PG_SUPERUSER, home):
            home.rmdir()
            digest = hashlib.sha1(str(Path(state_dir).resolve()).encode()).hexdigest()[:12]
            alt = Path("/var/lib/attune-e2e") / digest / "postgres"
            alt.mkdir(parents=True, exist_ok=True)
            pw = pwd.getpwnam(PG_SUPERUSER)
            for p in (alt.parent.parent, alt.parent, alt):
                os.chown(p, pw.pw_uid, pw.pw_gid) if p == alt else os.chmod(p, 0o755)
            home.symlink_to(alt)
            _log(f"postgres cannot reach {state_dir}; data lives in {alt}")
            return alt
    return home


def _pg_conf(port: int, sockdir: Path) -> str:
    return "\n".join([
        "# written by tests/helpers/infra.py on every start",
        "listen_addresses = '127.0.0.1'",
        f"port = {port}",
        f"unix_socket_directories = '{sockdir}'",
        "max_connections = 300",
        "shared_buffers = 128MB",
        # a throw-away test database: durability is not needed, speed is
        "fsync = off",
        "synchronous_commit = off",
        "full_page_writes = off",
        "log_min_messages = warning",
        "log_line_prefix = '%m [%p] %u@%d '",
        "",
    ])


def _pg_superuser_connect(sockdir: Path, port: int, dbname: str = "postgres"):
    import psycopg2
    conn = psycopg2.connect(host=str(sockdir), port=port, user=PG_SUPERUSER, dbname=dbname,
                            connect_timeout=5)
    conn.autocommit = True
    return conn


def _pg_provision(sockdir: Path, port: int, p: dict) -> None:
    """Role with CREATEDB, database owned by it, search_path `attune, public`."""
    from psycopg2 import sql
    conn = _pg_superuser_connect(sockdir, port)
    try:
        cur = conn.cursor()
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (p["user"],))
        if cur.fetchone():
            cur.execute(sql.SQL("ALTER ROLE {} WITH LOGIN CREATEDB PASSWORD %s")
                        .format(sql.Identifier(p["user"])), (p["password"],))
        else:
            cur.execute(sql.SQL("CREATE ROLE {} WITH LOGIN CREATEDB PASSWORD %s")
                        .format(sql.Identifier(p["user"])), (p["password"],))
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (p["dbname"],))
        if not cur.fetchone():
            cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(p["dbname"]), sql.Identifier(p["user"])))
        cur.execute(sql.SQL("ALTER DATABASE {} SET search_path = attune, public")
                    .format(sql.Identifier(p["dbname"])))
    finally:
        conn.close()


def ensure_postgres(cfg, state_dir: str | os.PathLike, timeout: float = 60) -> dict:
    """Make `cfg.database_url` answer. Returns {"url", "started", "log", "seconds"}."""
    t0 = time.monotonic()
    state_dir = Path(state_dir).resolve()
    url = cfg.database_url
    p = _pg_params(url)
    st = _State(state_dir)
    with _locked(state_dir, "postgres"):
        rec = st.load().get("postgres") or {}
        ours = bool(rec) and rec.get("port") == p["port"] and _pg_running(rec)
        if _port_open(p["host"], p["port"]):
            if ours:
                _pg_provision(Path(rec["sockdir"]), p["port"], p)
            err = _pg_try_connect(url)
            if err is None:
                return {"url": url, "started": False, "external": not ours,
                        "log": rec.get("log") if ours else None,
                        "seconds": round(time.monotonic() - t0, 2)}
            raise InfraError(f"something listens on {p['host']}:{p['port']} but "
                             f"{url} does not work: {err}")
        if p["host"] not in ("127.0.0.1", "localhost", "::1"):
            raise InfraError(f"PostgreSQL at {url} does not answer and is not local; "
                             "start it or point database.url elsewhere")
        bindir = find_postgres_bindir()
        if bindir is None:
            raise InfraError(
                f"PostgreSQL does not answer at {url} and no PostgreSQL server is installed. "
                f"Install it ({INSTALL_HINT}, as root) or start a server matching database.url.")
        if _is_root():
            _ensure_os_user(PG_SUPERUSER)
        home = _pg_home(state_dir)
        data = home / "data"
        sockdir = home / "run"
        logfile = home / "postgres.log"
        for d in (sockdir,):
            d.mkdir(parents=True, exist_ok=True)
        if _is_root():
            pw = pwd.getpwnam(PG_SUPERUSER)
            for d in (home, sockdir):
                os.chown(d, pw.pw_uid, pw.pw_gid)
            if logfile.exists():
                os.chown(logfile, pw.pw_uid, pw.pw_gid)
        fresh = not (data / "PG_VERSION").exists()
        if fresh:
            if data.exists():
                shutil.rmtree(data)
            _log(f"initdb {data} ({bindir})")
            r = subprocess.run(_as_pg_user([
                str(bindir / "initdb"), "-D", str(data), "-U", PG_SUPERUSER, "-E", "UTF8",
                "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"]),
                capture_output=True, text=True, cwd="/")
            if r.returncode != 0:
                raise InfraError(f"initdb failed ({r.returncode}): {r.stderr.strip() or r.stdout}")
            with open(data / "postgresql.conf", "a") as fh:
                fh.write("\ninclude_if_exists = 'attune_e2e.conf'\n")
        conf = data / "attune_e2e.conf"
        conf.write_text(_pg_conf(p["port"], sockdir))
        if _is_root():
            pw = pwd.getpwnam(PG_SUPERUSER)
            os.chown(conf, pw.pw_uid, pw.pw_gid)
        _log(f"starting PostgreSQL on 127.0.0.1:{p['port']} (log {logfile})")
        r = subprocess.run(_as_pg_user([
            str(bindir / "pg_ctl"), "-D", str(data), "-l", str(logfile), "-w",
            "-t", str(int(timeout)), "start"]), capture_output=True, text=True, cwd="/")
        if r.returncode != 0:
            raise InfraError(f"PostgreSQL did not start ({r.stdout.strip()} {r.stderr.strip()}); "
                             f"see {logfile}:\n{_tail(logfile)}")
        pid = _read_postmaster_pid(data)
        rec = {"bindir": str(bindir), "data": str(data), "sockdir": str(sockdir),
               "log": str(logfile), "port": p["port"], "pid": pid, "started_at": time.time()}
        st.update("postgres", rec)
        deadline = time.monotonic() + timeout
        while True:
            try:
                _pg_provision(sockdir, p["port"], p)
                break
            except Exception as exc:  # noqa: BLE001
                if time.monotonic() > deadline:
                    raise InfraError(f"PostgreSQL started but cannot be provisioned: {exc}; "
                                     f"see {logfile}") from exc
                time.sleep(0.2)
        err = _pg_try_connect(url)
        if err is not None:
            raise InfraError(f"PostgreSQL started but {url} does not work: {err}; see {logfile}")
        return {"url": url, "started": True, "fresh": fresh, "external": False, "log": str(logfile),
                "seconds": round(time.monotonic() - t0, 2)}


def _read_postmaster_pid(data: Path) -> int | None:
    try:
        return int((Path(data) / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _pg_running(rec: dict) -> bool:
    pid = _read_postmaster_pid(Path(rec.get("data", "/nonexistent")))
    return pid_alive(pid)


def _stop_postgres(rec: dict) -> None:
    data = Path(rec["data"])
    if not _pg_running(rec):
        return
    bindir = Path(rec.get("bindir") or find_postgres_bindir() or "/usr/bin")
    _log(f"stopping PostgreSQL ({data})")
    r = subprocess.run(_as_pg_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast",
                                    "-w", "-t", "30", "stop"]),
                       capture_output=True, text=True, cwd="/")
    if r.returncode != 0 and _pg_running(rec):
        pid = _read_postmaster_pid(data)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)


# --------------------------------------------------------------------------------------------
# RabbitMQ


def find_rabbitmq_sbin() -> Path | None:
    """The directory holding the real `rabbitmq-server` script (not Debian's su wrapper)."""
    env = os.environ.get("ATTUNE_E2E_RABBITMQ_SBIN")
    if env and (Path(env) / "rabbitmq-server").exists():
        return Path(env)
    for d in ("/usr/lib/rabbitmq/bin", "/usr/local/lib/rabbitmq/bin"):
        if (Path(d) / "rabbitmq-server").exists() and (Path(d) / "rabbitmqctl").exists():
            return Path(d)
    for base in glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin"):
        if (Path(base) / "rabbitmq-server").exists():
            return Path(base)
    found = shutil.which("rabbitmq-server")
    if found:
        return Path(found).resolve().parent
    return None


def _amqp_params(url: str | None) -> dict:
    if not url:
        raise InfraError("message_queue.url is not configured")
    u = urlparse(url)
    if u.scheme not in ("amqp", "amqps"):
        raise InfraError(f"message_queue.url must be an amqp:// URL (got {url!r})")
    vhost = unquote((u.path or "/")[1:]) if u.path and u.path != "/" else "/"
    return {"host": u.hostname or "127.0.0.1", "port": u.port or 5672,
            "user": unquote(u.username or "guest"), "password": unquote(u.password or "guest"),
            "vhost": vhost or "/"}


def _amqp_try_connect(url: str, timeout: float = 3) -> str | None:
    import pika
    try:
        params = pika.URLParameters(url)
        params.socket_timeout = timeout
        params.blocked_connection_timeout = timeout
        params.connection_attempts = 1
        params.stack_timeout = timeout
        conn = pika.BlockingConnection(params)
        conn.close()
        return None
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}".strip()


def _epmd_names() -> list[str]:
    """Short node names registered with the local epmd (empty when epmd is not running)."""
    epmd = shutil.which("epmd")
    if not epmd:
        return []
    try:
        out = subprocess.run([epmd, "-names"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.split()[1] for line in out.splitlines() if line.startswith("name ")]


def _pick_nodename(port: int) -> str:
    """`attune-e2e@localhost`, or `attune-e2e-<port>@localhost` when another state dir's broker
    already holds that name on this machine."""
    return "attune-e2e@localhost" if "attune-e2e" not in _epmd_names() \
        else f"attune-e2e-{port}@localhost"


def _rabbit_env(home: Path, port: int, nodename: str = "attune-e2e@localhost") -> dict:
    # RabbitMQ's distribution port: AMQP + 1000, next to the AMQP port and, for the default ports,
    # below Linux's ephemeral range (32768-60999): a fixed port inside that range can be held at
    # random by any outgoing connection ("dist_port_already_used ... not_erlang").
    dist = port + 1000 if port + 1000 <= 65535 else port - 1000
    env = dict(os.environ)
    for key in list(env):
        if key.startswith("RABBITMQ_") or key.startswith("ERL_"):
            del env[key]
    env.update({
        "HOME": str(home / "home"),
        "RABBITMQ_CONF_ENV_FILE": str(home / "rabbitmq-env.conf"),
        "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
        "RABBITMQ_LOG_BASE": str(home / "log"),
        "RABBITMQ_PID_FILE": str(home / "rabbitmq.pid"),
        "RABBITMQ_NODENAME": nodename,
        "ERL_CRASH_DUMP": str(home / "log" / "erl_crash.dump"),
        # Erlang distribution and a freshly started epmd on loopback only
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist),
        "RABBITMQ_USE_LONGNAME": "false",
    })
    return env


def _rabbit_log(home: Path, nodename: str = "attune-e2e@localhost") -> Path:
    return home / "log" / f"{nodename}.log"


def _rabbitmqctl(rec_or_home: dict | Path, args: list[str], timeout: float = 30):
    if isinstance(rec_or_home, dict):
        home, port, sbin = Path(rec_or_home["home"]), rec_or_home["port"], Path(rec_or_home["sbin"])
    else:
        raise TypeError
    nodename = rec_or_home.get("nodename", "attune-e2e@localhost")
    env = _rabbit_env(home, port, nodename)
    return subprocess.run([str(sbin / "rabbitmqctl"), "-n", nodename, *args],
                          env=env, capture_output=True, text=True, timeout=timeout, cwd=str(home))


def ensure_rabbitmq(cfg, state_dir: str | os.PathLike, timeout: float = 90) -> dict:
    """Make `cfg.amqp_url` answer. Returns {"url", "started", "log", "seconds"}."""
    t0 = time.monotonic()
    state_dir = Path(state_dir).resolve()
    url = cfg.amqp_url
    p = _amqp_params(url)
    st = _State(state_dir)
    with _locked(state_dir, "rabbitmq"):
        rec = st.load().get("rabbitmq") or {}
        ours = bool(rec) and rec.get("port") == p["port"] and pid_alive(rec.get("pid"))
        if _port_open(p["host"], p["port"]):
            err = _amqp_try_connect(url)
            if err is None:
                return {"url": url, "started": False, "external": not ours,
                        "log": rec.get("log") if ours else None,
                        "seconds": round(time.monotonic() - t0, 2)}
            if not ours:
                raise InfraError(f"something listens on {p['host']}:{p['port']} but "
                                 f"{url} does not work: {err}")
            # ours: maybe a new user or vhost in the URL, or still booting
            with contextlib.suppress(Exception):
                _rabbit_provision(rec, p)
                if _amqp_try_connect(url) is None:
                    return {"url": url, "started": False, "external": False,
                            "log": rec.get("log"), "seconds": round(time.monotonic() - t0, 2)}
        elif p["host"] not in ("127.0.0.1", "localhost", "::1"):
            raise InfraError(f"RabbitMQ at {url} does not answer and is not local; "
                             "start it or point message_queue.url elsewhere")
        sbin = find_rabbitmq_sbin()
        if sbin is None or not shutil.which("erl"):
            raise InfraError(
                f"RabbitMQ does not answer at {url} and no RabbitMQ server is installed. "
                f"Install it ({INSTALL_HINT}, as root) or start a broker matching "
                "message_queue.url.")
        home = state_dir / "rabbitmq"
        prev = rec.get("nodename") if rec.get("port") == p["port"] else None
        if ours:
            nodename = rec.get("nodename", "attune-e2e@localhost")
        elif prev and prev.split("@")[0] not in _epmd_names():
            nodename = prev  # a restart: same node name, so its mnesia (durable queues) is reused
        else:
            nodename = _pick_nodename(p["port"])
        logfile = _rabbit_log(home, nodename)
        if not ours:
            for d in ("home", "mnesia", "log"):
                (home / d).mkdir(parents=True, exist_ok=True)
            (home / "rabbitmq-env.conf").write_text("# private: keeps /etc/rabbitmq out\n")
            (home / "enabled_plugins").write_text("[].\n")
            (home / "rabbitmq.conf").write_text("\n".join([
                "# written by tests/helpers/infra.py on every start",
                "loopback_users = none",
                f"listeners.tcp.default = 127.0.0.1:{p['port']}",
                "disk_free_limit.absolute = 50MB",
                "vm_memory_high_watermark.relative = 0.6",
                "log.console = false",
                "log.file.level = info",
                "",
            ]))
            cookie = home / "home" / ".erlang.cookie"
            if not cookie.exists():
                cookie.write_text(hashlib.sha256(os.urandom(32)).hexdigest()[:20].upper())
            os.chmod(cookie, 0o400)
            env = _rabbit_env(home, p["port"], nodename)
            _log(f"starting RabbitMQ as {nodename} on 127.0.0.1:{p['port']} (log {logfile})")
            startup = open(home / "log" / "startup.log", "ab")
            proc = subprocess.Popen([str(sbin / "rabbitmq-server")], env=env, cwd=str(home),
                                    stdin=subprocess.DEVNULL, stdout=startup, stderr=startup,
                                    start_new_session=True)
            startup.close()
            rec = {"sbin": str(sbin), "home": str(home), "log": str(logfile), "port": p["port"],
                   "pid": proc.pid, "nodename": nodename, "started_at": time.time()}
            st.update("rabbitmq", rec)
        deadline = time.monotonic() + timeout
        err = "not started"
        while time.monotonic() < deadline:
            if not pid_alive(rec["pid"]):
                raise InfraError(
                    f"RabbitMQ exited during start-up; see {logfile} and "
                    f"{home / 'log' / 'startup.log'}:\n{_tail(home / 'log' / 'startup.log')}\n"
                    f"{_tail(logfile)}")
            if _port_open("127.0.0.1", p["port"], 0.5):
                err = _amqp_try_connect(url)
                if err is None:
                    break
            time.sleep(0.3)
        else:
            raise InfraError(f"RabbitMQ did not accept AMQP connections on {url} within "
                             f"{timeout:.0f} s ({err}); see {logfile}:\n{_tail(logfile)}")
        if p["user"] != "guest" or p["vhost"] != "/":
            _rabbit_provision(rec, p)
        return {"url": url, "started": True, "external": False, "log": str(logfile),
                "seconds": round(time.monotonic() - t0, 2)}


def _rabbit_provision(rec: dict, p: dict) -> None:
    users = _rabbitmqctl(rec, ["list_users", "-q"]).stdout
    if p["user"] not in [line.split("\t")[0] for line in users.splitlines()]:
        _rabbitmqctl(rec, ["add_user", p["user"], p["password"]])
    _rabbitmqctl(rec, ["add_vhost", p["vhost"]])
    _rabbitmqctl(rec, ["set_permissions", "-p", p["vhost"], p["user"], ".*", ".*", ".*"])


def _stop_rabbitmq(rec: dict) -> None:
    pid = rec.get("pid")
    if not pid_alive(pid):
        return
    _log("stopping RabbitMQ")
    with contextlib.suppress(Exception):
        _rabbitmqctl(rec, ["shutdown"], timeout=60)
    deadline = time.monotonic() + 20
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        time.sleep(2)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------


def stop_postgres(state_dir: str | os.PathLike) -> bool:
    """Stop the PostgreSQL this module started for `state_dir`, keeping its record, so that
    `ensure_postgres` starts it again on the same data (a restart). False if none was ours."""
    rec = _State(Path(state_dir).resolve()).load().get("postgres")
    if not rec:
        return False
    _stop_postgres(rec)
    return True


def stop_rabbitmq(state_dir: str | os.PathLike) -> bool:
    """Stop the RabbitMQ this module started for `state_dir`, keeping its record, so that
    `ensure_rabbitmq` starts it again under the same node name and data (a restart)."""
    rec = _State(Path(state_dir).resolve()).load().get("rabbitmq")
    if not rec:
        return False
    _stop_rabbitmq(rec)
    return True


def stop_infra(state_dir: str | os.PathLike) -> list[str]:
    """Stop the servers this module started (per infra.json). Returns the names stopped."""
    state_dir = Path(state_dir).resolve()
    st = _State(state_dir)
    data = st.load()
    stopped = []
    if data.get("rabbitmq"):
        _stop_rabbitmq(data["rabbitmq"])
        st.update("rabbitmq", None)
        stopped.append("rabbitmq")
    if data.get("postgres"):
        _stop_postgres(data["postgres"])
        st.update("postgres", None)
        stopped.append("postgres")
    return stopped


def drop_schema(url: str, schema: str) -> None:
    """`DROP SCHEMA <schema> CASCADE` as the configured (owning) role: every table and row of
    the stack goes; the services' migration creates the schema again on their next start."""
    import psycopg2
    from psycopg2 import sql
    conn = psycopg2.connect(url, connect_timeout=5)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    finally:
        conn.close()


def delete_queues(state_dir: str | os.PathLike, url: str) -> int:
    """Delete every queue of `url`'s vhost on the RabbitMQ this module started for `state_dir`
    (names from rabbitmqctl, deletion over AMQP). Returns how many were deleted."""
    import pika
    rec = _State(Path(state_dir).resolve()).load().get("rabbitmq")
    if not rec:
        raise InfraError(f"no RabbitMQ was started for {state_dir}")
    vhost = _amqp_params(url)["vhost"]
    out = _rabbitmqctl(rec, ["list_queues", "-q", "--no-table-headers", "-p", vhost, "name"])
    if out.returncode != 0:
        raise InfraError(f"rabbitmqctl list_queues failed: {(out.stderr or out.stdout)[-500:]}")
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    if names:
        conn = pika.BlockingConnection(pika.URLParameters(url))
        try:
            channel = conn.channel()
            for name in names:
                channel.queue_delete(queue=name)
        finally:
            conn.close()
    return len(names)


def infra_status(state_dir: str | os.PathLike) -> dict[str, Any]:
    data = _State(Path(state_dir).resolve()).load()
    out = {}
    if data.get("postgres"):
        out["postgres"] = dict(data["postgres"], running=_pg_running(data["postgres"]))
    if data.get("rabbitmq"):
        out["rabbitmq"] = dict(data["rabbitmq"], running=pid_alive(data["rabbitmq"].get("pid")))
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m tests.helpers.infra up|down|status [--config FILE] [--state-dir DIR]`."""
    import argparse
    repo = Path(__file__).resolve().parents[2]
    ap = argparse.ArgumentParser(prog="python -m tests.helpers.infra")
    ap.add_argument("command", choices=["up", "down", "status"])
    env = os.environ.get  # the suite's defaults: ATTUNE_E2E_CONFIG / ATTUNE_E2E_STATE_DIR
    ap.add_argument("--config", default=str(repo / env("ATTUNE_E2E_CONFIG", "config.e2e.yaml")),
                    help="configuration file (default: $ATTUNE_E2E_CONFIG or config.e2e.yaml)")
    ap.add_argument("--state-dir", default=str(repo / env("ATTUNE_E2E_STATE_DIR", ".state")),
                    help="state folder (default: $ATTUNE_E2E_STATE_DIR or .state)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(repo))
    from attune_emulator.config import load_config
    cfg = load_config(args.config)
    try:
        if args.command == "up":
            pg = ensure_postgres(cfg, args.state_dir)
            print(f"postgres ready ({pg['seconds']} s): {pg['url']}")
            mq = ensure_rabbitmq(cfg, args.state_dir)
            print(f"rabbitmq ready ({mq['seconds']} s): {mq['url']}")
        elif args.command == "down":
            print("stopped:", ", ".join(stop_infra(args.state_dir)) or "nothing")
        else:
            print(json.dumps(infra_status(args.state_dir), indent=2))
    except InfraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
