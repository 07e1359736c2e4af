"""The content-addressed environment store (attune_emulator/worker/envs.py): a requirements file
built once on a machine is copied, not installed again, for every later pack ref."""
import os
import sys
import time

import pytest

from attune_emulator.worker import envs


@pytest.fixture
def installs(monkeypatch):
    """Replace venv creation and pip with a fake that records each call and lays out a venv."""
    calls = []

    def fake_run(argv, cwd, what, env=None):
        calls.append(what)
        if "venv" in argv:
            target = argv[-1]
            os.makedirs(os.path.join(target, "bin"))
            os.symlink(sys.executable, os.path.join(target, "bin", "python"))
            with open(os.path.join(target, "pyvenv.cfg"), "w") as fh:
                fh.write("home = /usr/bin\n")
        elif "install" in argv:
            if calls.count(what) and "fail" in what:
                raise envs.EnvError(f"{what} failed (exit 1): No matching distribution")
            python = argv[argv.index("--python") + 1] if "--python" in argv else argv[0]
            site = os.path.join(os.path.dirname(os.path.dirname(python)), "lib", "site-packages")
            os.makedirs(site, exist_ok=True)
            with open(os.path.join(site, "requests.py"), "w") as fh:
                fh.write("__version__ = '2.28.0'\n")

    monkeypatch.setattr(envs, "_run", fake_run)
    monkeypatch.setattr(envs, "_base_pip_can_target", lambda _python: True)
    return calls


def _pack(tmp_path, name, requirements):
    pack = tmp_path / "packs" / name
    pack.mkdir(parents=True)
    (pack / "requirements.txt").write_text(requirements)
    return pack


def test_second_pack_with_the_same_requirements_is_copied_not_installed(tmp_path, installs):
    envs_dir = str(tmp_path / "envs")
    first = envs.ensure_python_env(envs_dir, "a_1", _pack(tmp_path, "a_1", "requests==2.28.0\n"),
                                   sys.executable)
    assert installs == ["python venv for pack 'a_1'", "pip install for pack 'a_1'"]
    installed = (tmp_path / "envs" / "a_1" / "python" / "lib" / "site-packages" / "requests.py")
    time.sleep(0.05)

    second = envs.ensure_python_env(envs_dir, "a_2", _pack(tmp_path, "a_2", "requests==2.28.0\n"),
                                    sys.executable)

    assert len(installs) == 2, f"the second pack ran the installer again: {installs}"
    assert second == tmp_path / "envs" / "a_2" / "python" / "bin" / "python" and second.exists()
    assert not os.path.islink(second.parent.parent), "the pack env must be a folder of its own"
    copied = second.parent.parent / "lib" / "site-packages" / "requests.py"
    assert copied.read_text() == installed.read_text()
    assert copied.stat().st_mtime == installed.stat().st_mtime, "install times must be kept"
    cfg_first = first.parent.parent / "pyvenv.cfg"
    cfg_second = second.parent.parent / "pyvenv.cfg"
    assert cfg_second.stat().st_mtime > cfg_first.stat().st_mtime, \
        "pyvenv.cfg must date the pack's environment, not the store entry"
    marker = (second.parent.parent / envs.MARKER).read_text().strip()
    assert marker == envs.manifest_hash(tmp_path / "packs" / "a_2" / "requirements.txt")
    assert len(list((tmp_path / "envs" / envs.STORE).glob("python-*/"))) == 1


def test_changed_requirements_build_a_new_entry_and_replace_the_pack_env(tmp_path, installs):
    envs_dir = str(tmp_path / "envs")
    pack = _pack(tmp_path, "p", "six==1.15.0\n")
    envs.ensure_python_env(envs_dir, "p", pack, sys.executable)
    (pack / "requirements.txt").write_text("six==1.16.0\n")

    python = envs.ensure_python_env(envs_dir, "p", pack, sys.executable)

    assert installs.count("pip install for pack 'p'") == 2
    marker = (python.parent.parent / envs.MARKER).read_text().strip()
    assert marker == envs.manifest_hash(pack / "requirements.txt")
    assert len(list((tmp_path / "envs" / envs.STORE).glob("python-*/"))) == 2
    assert not list((tmp_path / "envs" / "p").glob(".*tmp-*")), "a temporary copy was left behind"


def test_a_failed_install_leaves_nothing_to_reuse(tmp_path, installs):
    envs_dir = str(tmp_path / "envs")
    pack = _pack(tmp_path, "fail", "requests==999.0.0\n")
    for attempt in (1, 2):
        with pytest.raises(envs.EnvError, match="No matching distribution"):
            envs.ensure_python_env(envs_dir, "fail", pack, sys.executable)
        assert installs.count("pip install for pack 'fail'") == attempt
        assert not list((tmp_path / "envs" / envs.STORE).glob("python-*/")), \
            f"attempt {attempt}: a half-built entry stayed in the store"
        assert not (tmp_path / "envs" / "fail" / "python").exists()


def test_prune_store_removes_only_entries_unused_for_the_max_age(tmp_path, installs):
    envs_dir = str(tmp_path / "envs")
    envs.ensure_python_env(envs_dir, "old", _pack(tmp_path, "old", "six==1.15.0\n"), sys.executable)
    envs.ensure_python_env(envs_dir, "new", _pack(tmp_path, "new", "six==1.16.0\n"), sys.executable)
    entries = sorted((tmp_path / "envs" / envs.STORE).glob("python-*/"))
    old_entry = next(e for e in entries
                     if (e / envs.MARKER).read_text().strip()
                     == envs.manifest_hash(tmp_path / "packs" / "old" / "requirements.txt"))
    stale = time.time() - 30 * 86400
    os.utime(old_entry / envs.MARKER, (stale, stale))

    removed = envs.prune_store(envs_dir, 14 * 86400)

    assert removed == [str(old_entry)]
    assert [e for e in (tmp_path / "envs" / envs.STORE).glob("python-*/")] == \
        [e for e in entries if e != old_entry]
    assert (tmp_path / "envs" / "old" / "python" / "bin" / "python").exists(), \
        "pruning the store must not touch a pack's own environment"
