"""Unit tests of attune_emulator/pack_store.py: versioned pack directories (T3.26)."""
import os

from attune_emulator import pack_store


def _pack(tmp_path, name: str, version: str):
    src = tmp_path / "src" / name
    (src / "actions").mkdir(parents=True)
    (src / "pack.yaml").write_text(f"ref: p\nversion: {version}\n")
    (src / "actions" / "a.py").write_text(f"CODE = '{version}'\n")
    return src


def _install(base, tmp_path, version):
    v = pack_store.install_version(base, "p", _pack(tmp_path, version, version))
    pack_store.activate(base, "p", v)
    return v


def test_activate_points_the_stable_path_at_the_new_version(tmp_path):
    base = tmp_path / "packs"
    base.mkdir()
    v1 = _install(base, tmp_path, "1.0.0")
    assert (base / "p").is_symlink() and pack_store.current_version(base, "p") == v1
    assert (base / "p" / "actions" / "a.py").read_text() == "CODE = '1.0.0'\n"
    v2 = _install(base, tmp_path, "1.1.0")
    assert pack_store.current_version(base, "p") == v2
    assert (base / "p" / "pack.yaml").read_text().endswith("1.1.0\n")
    assert not list(base.glob(".link-*")), "temporary symlink left behind"


def test_unused_superseded_version_is_collected(tmp_path):
    base = tmp_path / "packs"
    base.mkdir()
    v1 = _install(base, tmp_path, "1.0.0")
    v2 = _install(base, tmp_path, "1.1.0")
    assert pack_store.collect(base, "p") == [v1]
    assert not v1.exists() and v2.is_dir()


def test_pinned_version_survives_an_update_until_released(tmp_path):
    base = tmp_path / "packs"
    base.mkdir()
    v1 = _install(base, tmp_path, "1.0.0")
    pin = pack_store.pin(base / "p", base)
    assert pin.directory == v1
    v2 = _install(base, tmp_path, "1.1.0")
    assert pack_store.collect(base, "p") == [], "a held version was removed"
    assert (pin.directory / "actions" / "a.py").read_text() == "CODE = '1.0.0'\n"
    assert pack_store.pin(base / "p", base).directory == v2  # new runs get the new version
    pin.release()  # the last holder collects
    assert not v1.exists() and v2.is_dir()


def test_plain_directory_becomes_a_version_on_update(tmp_path):
    base = tmp_path / "packs"
    base.mkdir()
    legacy = base / "p"
    (legacy / "actions").mkdir(parents=True)
    (legacy / "pack.yaml").write_text("ref: p\nversion: 0.9.0\n")
    pin = pack_store.pin(legacy, base)  # not versioned: no hold, path unchanged
    assert pin.directory == legacy
    v2 = _install(base, tmp_path, "1.1.0")
    assert pack_store.current_version(base, "p") == v2
    old = [d for d in pack_store.versions_root(base, "p").iterdir() if d.name.startswith("legacy-")]
    assert len(old) == 1 and (old[0] / "pack.yaml").read_text().endswith("0.9.0\n")


def test_remove_pack_keeps_a_held_version_until_its_release(tmp_path):
    base = tmp_path / "packs"
    base.mkdir()
    v1 = _install(base, tmp_path, "1.0.0")
    pin = pack_store.pin(base / "p", base)
    pack_store.remove_pack(base, "p")
    assert not os.path.lexists(base / "p") and v1.is_dir()
    pin.release()
    assert not v1.exists()
    assert not pack_store.versions_root(base, "p").exists()


def test_pin_outside_packs_base_is_a_no_op(tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    pin = pack_store.pin(other, tmp_path / "packs")
    assert pin.directory == other
    pin.release()
    assert other.is_dir()
