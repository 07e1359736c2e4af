"""Unit tests of attune_emulator/worker/envs.py hold_env: a running action's shared hold on its
environment makes a rebuild (exclusive lock) wait (T3.26)."""
import fcntl
import threading

from attune_emulator.worker import envs


def _ready_env(tmp_path, content=b"six==1.15.0\n"):
    manifest = tmp_path / "requirements.txt"
    manifest.write_bytes(content)
    env_dir = tmp_path / "envs" / "p" / "python"
    env_dir.mkdir(parents=True)
    (env_dir / envs.MARKER).write_text(envs.manifest_hash(manifest) + "\n")
    return manifest, env_dir


def _exclusive_free(env_dir) -> bool:
    with open(str(env_dir) + ".lock", "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return True


def test_hold_blocks_a_rebuild_until_released(tmp_path):
    manifest, env_dir = _ready_env(tmp_path)
    found, hold = envs.hold_env(lambda: env_dir, env_dir, manifest, lambda: True)
    assert found == env_dir
    assert not _exclusive_free(env_dir)
    entered = threading.Event()

    def rebuild():
        with envs.env_lock(env_dir):
            entered.set()

    t = threading.Thread(target=rebuild)
    t.start()
    assert not entered.wait(0.3), "the rebuild did not wait for the running action"
    hold.release()
    assert entered.wait(5)
    t.join(5)
    assert _exclusive_free(env_dir)


def test_no_manifest_means_no_hold(tmp_path):
    found, hold = envs.hold_env(lambda: None, tmp_path / "env", tmp_path / "requirements.txt",
                                lambda: True)
    assert found is None
    hold.release()


def test_stale_marker_retries_then_fails(tmp_path):
    manifest, env_dir = _ready_env(tmp_path)
    manifest.write_bytes(b"six==1.16.0\n")  # marker no longer matches and ensure() never fixes it
    calls = []
    try:
        envs.hold_env(lambda: calls.append(1) or env_dir, env_dir, manifest, lambda: True,
                      attempts=3)
    except envs.EnvError as exc:
        assert "rebuilt concurrently 3 times" in str(exc)
    else:
        raise AssertionError("expected EnvError")
    assert len(calls) == 3 and _exclusive_free(env_dir)
