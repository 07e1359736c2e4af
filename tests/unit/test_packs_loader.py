"""attune_emulator.packs: pack.yaml dialects, archive extraction safety, small mapping helpers
(the database-backed loading is covered by the e2e pack tests)."""
import io
import tarfile

import pytest

from attune_emulator.packs import (RUNTIME_ALIASES, PackError, _label_from_ref, _qualify,
                                   pack_fields, read_pack_yaml, safe_extract_pack_archive)


def _tar(entries) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                payload = data.encode()
                info.size = len(payload)
                info.mode = 0o755
                tar.addfile(info, io.BytesIO(payload))
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = data
                tar.addfile(info)
            elif kind == "hardlink":
                info.type = tarfile.LNKTYPE
                info.linkname = data
                tar.addfile(info)
    return buf.getvalue()


def test_api_dialect():
    f = pack_fields({"ref": "p", "name": "Pack P", "label": "ignored", "version": "1.2.3",
                     "config_schema": {"a": {"type": "string"}}, "metadata": {"m": 1},
                     "keywords": ["k"], "runtime_deps": ["python3"], "dependencies": ["core"]})
    assert f["label"] == "Pack P"
    assert f["conf_schema"] == {"a": {"type": "string"}}
    assert f["meta"] == {"m": 1} and f["tags"] == ["k"]
    assert f["runtime_deps"] == ["python3"] and f["dependencies"] == ["core"]
    assert f["system"] is False and f["config"] is None


def test_core_dialect():
    f = pack_fields({"ref": "core", "label": "Core", "version": "1.0.0", "conf_schema": {},
                     "config": {"x": 1}, "meta": {"a": 1}, "tags": ["t"], "system": True})
    assert f["label"] == "Core" and f["system"] is True
    assert f["config"] == {"x": 1} and f["meta"] == {"a": 1} and f["tags"] == ["t"]


def test_label_falls_back_to_ref_and_version_is_text():
    f = pack_fields({"ref": "p", "version": 1.0})
    assert f["label"] == "p" and f["version"] == "1.0"


def test_read_pack_yaml_errors(tmp_path):
    with pytest.raises(PackError) as exc:
        read_pack_yaml(tmp_path / "missing")
    assert exc.value.status == 400
    with pytest.raises(PackError, match="pack.yaml not found"):
        read_pack_yaml(tmp_path)
    (tmp_path / "pack.yaml").write_text("name: x\nversion: 1.0.0\n")
    with pytest.raises(PackError, match="'ref'"):
        read_pack_yaml(tmp_path)
    (tmp_path / "pack.yaml").write_text("ref: x\n")
    with pytest.raises(PackError, match="'version'"):
        read_pack_yaml(tmp_path)
    (tmp_path / "pack.yaml").write_text("ref: xy\nversion: 1.0.0\n")
    assert read_pack_yaml(tmp_path)["ref"] == "xy"


def test_helpers():
    assert _qualify("p", "thing") == "p.thing"
    assert _qualify("p", "core.echo") == "core.echo"
    assert _qualify("p", None) is None
    assert _label_from_ref("p.echo_params") == "Echo Params"
    for alias in ("shell", "bash", "sh"):
        assert RUNTIME_ALIASES[alias] == "core.shell"
    assert RUNTIME_ALIASES["node.js"] == "core.nodejs"
    assert RUNTIME_ALIASES["standalone"] == "core.native"
    assert RUNTIME_ALIASES["python3"] == "core.python"


def test_extract_in_one_top_level_folder(tmp_path):
    data = _tar([("pk", "dir", None), ("pk/pack.yaml", "file", "ref: pk\nversion: 1.0.0\n"),
                 ("pk/actions/a.sh", "file", "echo hi\n")])
    root = safe_extract_pack_archive(data, tmp_path / "out")
    assert root.name == "pk"
    assert (root / "actions" / "a.sh").read_text() == "echo hi\n"
    assert (root / "actions" / "a.sh").stat().st_mode & 0o111


def test_extract_at_root(tmp_path):
    data = _tar([("./pack.yaml", "file", "ref: pk\nversion: 1.0.0\n")])
    root = safe_extract_pack_archive(data, tmp_path / "out")
    assert (root / "pack.yaml").is_file()


@pytest.mark.parametrize("entries,needle", [
    ([("pack.yaml", "file", "x"), ("evil", "symlink", "/etc/passwd")], "link"),
    ([("pack.yaml", "file", "x"), ("hard", "hardlink", "pack.yaml")], "link"),
    ([("/abs/pack.yaml", "file", "x")], "absolute"),
    ([("pk/../../escape.txt", "file", "x"), ("pk/pack.yaml", "file", "x")], "traversal"),
    ([("a/x.txt", "file", "x")], "pack.yaml not found"),
    ([("a/pack.yaml", "file", "x"), ("b/pack.yaml", "file", "x")], "pack.yaml not found"),
])
def test_extract_rejects(tmp_path, entries, needle):
    with pytest.raises(PackError) as exc:
        safe_extract_pack_archive(_tar(entries), tmp_path / "out")
    assert exc.value.status == 400
    assert needle in str(exc.value)
    assert not (tmp_path / "escape.txt").exists()


def test_extract_rejects_garbage_and_too_many_entries(tmp_path, monkeypatch):
    with pytest.raises(PackError, match="Invalid pack archive"):
        safe_extract_pack_archive(b"not a tarball", tmp_path / "g")
    import attune_emulator.packs as packs
    monkeypatch.setattr(packs, "MAX_ARCHIVE_ENTRIES", 3)
    data = _tar([(f"f{i}", "file", "x") for i in range(5)])
    with pytest.raises(PackError, match="more than 3 entries"):
        safe_extract_pack_archive(data, tmp_path / "many")
