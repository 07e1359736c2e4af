"""A deleted pack's environments are removed (attune_emulator/worker/envs.py)."""
from attune_emulator.worker import envs


def test_remove_pack_envs_deletes_only_that_pack(tmp_path):
    for pack in ("gone", "kept"):
        for runtime in ("python", "node.js"):
            (tmp_path / pack / runtime / "lib").mkdir(parents=True)
    (tmp_path / ".cache" / "pip").mkdir(parents=True)

    removed = envs.remove_pack_envs(str(tmp_path), "gone")

    assert sorted(p.rsplit("/", 1)[1] for p in removed) == ["node.js", "python"]
    assert not (tmp_path / "gone").exists()
    assert (tmp_path / "kept" / "python" / "lib").is_dir()
    assert (tmp_path / ".cache" / "pip").is_dir()


def test_remove_pack_envs_ignores_unknown_packs_and_the_cache(tmp_path):
    (tmp_path / ".cache" / "npm").mkdir(parents=True)
    assert envs.remove_pack_envs(str(tmp_path), "never-existed") == []
    assert envs.remove_pack_envs(str(tmp_path), ".cache") == []
    assert (tmp_path / ".cache" / "npm").is_dir()
