"""Fixture-pack loader: turn a folder of tests/fixtures/packs into an upload archive.

Fixture pack YAML and scripts use the placeholder `__PACK__` for the pack ref; each session uploads
its own copy under a unique ref (`e2e_core_<8hex>`), so runs never collide.
"""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

PLACEHOLDER = "__PACK__"
_SKIP_DIRS = {"__pycache__", ".pytest_cache", "node_modules", ".git", ".venv"}
_SKIP_SUFFIXES = (".pyc", ".pyo")


def _substitute(text: str, ref: str, replacements: dict[str, str] | None) -> str:
    text = text.replace(PLACEHOLDER, ref)
    for old, new in (replacements or {}).items():
        text = text.replace(old, str(new))
    return text


def build_pack_archive(src_dir: str | os.PathLike, ref: str,
                       replacements: dict[str, str] | None = None) -> bytes:
    """A .tar.gz of `src_dir` with `pack.yaml` at the archive root.

    In every text (UTF-8) file, `__PACK__` becomes `ref` and each key of `replacements` its value;
    binary files are copied as is. File modes (the executable bit) are kept.
    """
    src = Path(src_dir)
    if not (src / "pack.yaml").is_file():
        raise FileNotFoundError(f"{src}/pack.yaml not found: not a pack folder")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for root, dirs, files in os.walk(src):
            dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
            for name in sorted(files):
                if name.endswith(_SKIP_SUFFIXES):
                    continue
                path = Path(root) / name
                if path.is_symlink():
                    continue
                rel = path.relative_to(src).as_posix()
                arcname = _substitute(rel, ref, replacements)
                content = path.read_bytes()
                try:
                    content = _substitute(content.decode("utf-8"), ref,
                                          replacements).encode("utf-8")
                except UnicodeDecodeError:
                    pass
                info = tarfile.TarInfo(arcname)
                info.size = len(content)
                info.mode = path.stat().st_mode & 0o777
                info.mtime = int(path.stat().st_mtime)
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


__all__ = ["build_pack_archive", "PLACEHOLDER"]
