"""build_pack_archive: placeholder substitution, layout, modes, skipped junk."""
import io
import os
import tarfile

import pytest

from tests.helpers.packs import build_pack_archive


@pytest.fixture
def pack_dir(tmp_path):
    src = tmp_path / "e2e_core"
    (src / "actions").mkdir(parents=True)
    (src / "__pycache__").mkdir()
    (src / "pack.yaml").write_text("ref: __PACK__\nversion: 1.0.0\nname: E2E __PACK__\n")
    script = src / "actions" / "echo.sh"
    script.write_text("#!/bin/sh\necho __PACK__ @HOST@\n")
    script.chmod(0o755)
    (src / "actions" / "echo.yaml").write_text("ref: __PACK__.echo\nentry_point: echo.sh\n")
    (src / "actions" / "blob.bin").write_bytes(b"\xff\xfe__PACK__\x00")
    (src / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    (src / "actions" / "stale.pyc").write_bytes(b"junk")
    return src


def _members(archive: bytes) -> dict:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return {m.name: (m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()}


def test_pack_yaml_at_root_and_ref_substituted(pack_dir):
    members = _members(build_pack_archive(pack_dir, "e2e_core_1234abcd"))
    assert set(members) == {"pack.yaml", "actions/echo.sh", "actions/echo.yaml", "actions/blob.bin"}
    assert members["pack.yaml"][1].decode() == \
        "ref: e2e_core_1234abcd\nversion: 1.0.0\nname: E2E e2e_core_1234abcd\n"
    assert b"ref: e2e_core_1234abcd.echo" in members["actions/echo.yaml"][1]


def test_extra_replacements_and_modes(pack_dir):
    members = _members(build_pack_archive(pack_dir, "p_x", {"@HOST@": "127.0.0.1"}))
    info, content = members["actions/echo.sh"]
    assert content == b"#!/bin/sh\necho p_x 127.0.0.1\n"
    assert info.mode & 0o111, "executable bit kept"


def test_binary_files_are_copied_unchanged(pack_dir):
    members = _members(build_pack_archive(pack_dir, "p_x"))
    assert members["actions/blob.bin"][1] == b"\xff\xfe__PACK__\x00"


def test_source_folder_is_not_modified(pack_dir):
    build_pack_archive(pack_dir, "p_x")
    assert "__PACK__" in (pack_dir / "pack.yaml").read_text()


def test_missing_pack_yaml_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="pack.yaml"):
        build_pack_archive(tmp_path, "p_x")


def test_real_fixture_pack_builds_if_present():
    src = os.path.join(os.path.dirname(__file__), "..", "fixtures", "packs", "e2e_core")
    if not os.path.isfile(os.path.join(src, "pack.yaml")):
        pytest.skip("tests/fixtures/packs/e2e_core not written yet")
    members = _members(build_pack_archive(src, "e2e_core_00000000"))
    assert "pack.yaml" in members
    assert not any(b"__PACK__" in body for _, body in members.values())
