"""The checkpoint store (issue 3): cache resolution, registry lookup, listing, verify, rm and import."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import platformdirs
import pytest
import torch

from dclip_cli import store
from dclip_cli.checkpoints import builtin, cache
from dclip_cli.checkpoints.registry import CheckpointSpec, Mirror
from dclip_cli.errors import (
    CheckpointError,
    ChecksumMismatchError,
    ConfigError,
    OutputExistsError,
    UnknownCheckpointError,
    UnknownPresetError,
    UnsafeCheckpointError,
)
from dclip_cli.presets import manager
from dclip_cli.presets.hookspecs import hookimpl
from tests.support.http_server import FileServer


class SpecPlugin:
    """A throw-away plugin registering checkpoint specs."""

    def __init__(self, *specs: CheckpointSpec) -> None:
        self.specs = specs

    @hookimpl
    def register_checkpoints(self, register):  # noqa: ANN001, ANN201
        for spec in self.specs:
            register(spec)


def ddpm_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "temb.dense.0.weight": torch.randn(8, 4, generator=g),
        "conv_in.weight": torch.randn(4, 3, 3, 3, generator=g),
        "conv_out.bias": torch.randn(3, generator=g),
    }


def save(sd: dict[str, torch.Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cache_dir_resolution_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert cache.cache_dir() == Path(os.environ["DCLIP_CACHE"])
    monkeypatch.delenv("DCLIP_CACHE")
    assert cache.cache_dir() == Path(platformdirs.user_cache_dir("dclip", appauthor=False))
    monkeypatch.setenv("DCLIP_CACHE", str(tmp_path / "env"))
    cache.set_cache_dir_override(tmp_path / "flag")
    assert cache.cache_dir() == tmp_path / "flag"
    assert cache.cache_dir(tmp_path / "explicit") == tmp_path / "explicit"
    cache.set_cache_dir_override(None)
    assert cache.cache_dir() == tmp_path / "env"
    assert cache.library_dir() == Path(os.environ["DCLIP_DATA"]) / "edits"
    monkeypatch.delenv("DCLIP_DATA")
    assert cache.library_dir() == Path(platformdirs.user_data_dir("dclip", appauthor=False)) / "edits"


def test_core_specs_and_aliases() -> None:
    b16 = store.get_spec("ViT-B/16")
    assert b16 is builtin.CLIP_VIT_B_16 and store.get_spec("clip-vit-b-16") is b16
    assert (
        str(b16.sha256) in str(b16.urls[0]) and b16.filename == "ViT-B-16.pt"
    )  # OpenAI URLs carry the SHA-256
    b32 = store.get_spec("ViT-B/32")
    assert b32.sha256 == "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"
    assert b32.sha256 in str(b32.urls[0])
    assert store.get_spec("facenet-vggface2").filename == "20180402-114759-vggface2.pt"
    assert isinstance(b16.urls[1], Mirror) and b16.mirrors()[1].sha256 is None  # other bytes, no pin


def test_plugin_specs_and_unknown_names() -> None:
    assert store.get_spec("celeba_hq").filename == "celeba_hq.ckpt"  # from the face plugin
    with pytest.raises(UnknownCheckpointError) as info:
        store.get_spec("celeba-hq")
    assert "celeba_hq" in (info.value.hint or "") and "dclip models list" in (info.value.hint or "")
    manager.register_plugin("shadow", SpecPlugin(CheckpointSpec("clip-vit-b-16", "evil.pt")))
    assert store.get_spec("clip-vit-b-16") is builtin.CLIP_VIT_B_16  # plugins cannot replace core names


def test_spec_paths_stay_inside_the_cache() -> None:
    spec = CheckpointSpec("face/pixar", "human_pixar_t601.pth")
    root = cache.checkpoints_dir()
    assert cache.checkpoint_path(spec) == root / "face" / "human_pixar_t601.pth"
    assert cache.lock_path(spec) == root / ".locks" / "face" / "human_pixar_t601.pth.lock"
    for bad in ("..", "a/..", "face/../x", "x/y/z", "/root"):
        with pytest.raises(ConfigError):
            cache.validate_name(bad)
    with pytest.raises(ConfigError):
        cache.library_path("noslash")


def test_list_verify_rm_round_trip(tmp_path: Path) -> None:
    with FileServer() as server:
        data = b"weights" * 1000
        spec = CheckpointSpec("tiny", "tiny.ckpt", urls=(server.add("/tiny.ckpt", data),))
        manager.register_plugin("t", SpecPlugin(spec))
        rows = {r.name: r for r in store.list_models()}
        assert rows["tiny"].cached is False and rows["tiny"].verified is None
        path = store.fetch("tiny")
    rows = {r.name: r for r in store.list_models()}
    assert rows["tiny"].cached and rows["tiny"].verified is True and rows["tiny"].size == len(data)
    assert rows["tiny"].sha256 == hashlib.sha256(data).hexdigest() and rows["tiny"].path == path
    assert store.model_path("tiny") == path

    result = store.verify("tiny")
    assert result.ok and result.checked == "recorded sha256"  # no pinned hash: the first download's is used
    path.write_bytes(data[:-1] + b"X")  # same size, different bytes
    result = store.verify("tiny")
    assert result.status == "mismatch" and result.expected == f"sha256 {hashlib.sha256(data).hexdigest()}"
    assert [r.name for r in store.verify_cached()] == ["tiny"]

    stray = cache.checkpoints_dir() / "stray.bin"
    stray.write_bytes(b"?")
    rows = {r.name: r for r in store.list_models()}
    assert rows["stray.bin"].registered is False and rows["stray.bin"].verified is None
    assert store.verify_path(stray, "stray.bin").status == "unchecked"

    removed = store.remove("tiny")
    assert sorted(p.name for p in removed) == ["tiny.ckpt", "tiny.ckpt.meta.json"]
    assert not path.exists() and store.remove("tiny") == []
    assert store.verify("tiny").status == "missing"


def test_import_registered_checkpoint_checks_format_and_hash(tmp_path: Path) -> None:
    good = save(ddpm_state_dict(), tmp_path / "dl" / "base.ckpt")
    other = save(ddpm_state_dict(seed=1), tmp_path / "dl" / "other.ckpt")
    spec = CheckpointSpec("base", "base.ckpt", sha256=sha(good), format="ddpm", arch="ddpm")
    manager.register_plugin("t", SpecPlugin(spec))

    with pytest.raises(ChecksumMismatchError, match="Nothing was imported"):
        store.import_file(other, "base")
    assert not cache.checkpoint_path(spec).exists()

    dest = store.import_file(good, "base")
    assert dest == cache.checkpoint_path(spec) and dest.read_bytes() == good.read_bytes()
    meta = cache.read_meta(dest)
    assert meta is not None and meta.source == "import" and meta.pinned and meta.sha256 == sha(good)
    assert store.fetch("base", offline=True) == dest  # usable offline right away
    assert store.verify("base").checked == "pinned sha256, recorded sha256"

    with pytest.raises(OutputExistsError, match="already stored"):
        store.import_file(good, "base")
    assert store.import_file(good, "base", overwrite=True) == dest


def test_import_refuses_wrong_format_and_unsafe_pickles(tmp_path: Path) -> None:
    manager.register_plugin("t", SpecPlugin(CheckpointSpec("base", "base.ckpt", format="ddpm")))
    facenet = save(
        {"conv2d_1a.conv.weight": torch.zeros(1), "last_linear.weight": torch.zeros(1)}, tmp_path / "f.pt"
    )
    with pytest.raises(CheckpointError, match="holds a facenet checkpoint .* not 'base' \\(ddpm\\)"):
        store.import_file(facenet, "base")

    evil = tmp_path / "evil.ckpt"
    with open(evil, "wb") as f:
        pickle.dump({"conv_in.weight": os.system}, f, protocol=2)  # would need arbitrary code to load
    with pytest.raises(UnsafeCheckpointError):
        store.import_file(evil, "base")
    assert not cache.checkpoint_path(store.get_spec("base")).exists()


def test_import_diffusers_copy_is_recorded_as_such(tmp_path: Path) -> None:
    diffusers = save(
        {"time_embedding.linear_1.weight": torch.zeros(2), "conv_in.weight": torch.zeros(2)},
        tmp_path / "d.bin",
    )
    spec = CheckpointSpec(
        "church",
        "church.ckpt",
        urls=(
            "https://example.org/church.ckpt",
            Mirror("https://example.org/d.bin", format="diffusers-ddpm"),
        ),
        md5="0" * 32,
        format="ddpm",
    )
    manager.register_plugin("t", SpecPlugin(spec))
    dest = store.import_file(diffusers, "church")  # the md5 pins the ddpm file, not the diffusers copy
    meta = cache.read_meta(dest)
    assert meta is not None and meta.format == "diffusers-ddpm" and not meta.pinned
    assert store.verify("church").ok


def test_import_edit_into_the_library(tmp_path: Path) -> None:
    from tests.support.editing import TinyPlugin, checkpoint_bytes, tiny_preset

    manager.register_plugin("tiny", TinyPlugin([tiny_preset("tinyface", "a face")], []))
    src = tmp_path / "my-edit.pth"
    src.write_bytes(checkpoint_bytes(0))
    dest = store.import_file(src, "tinyface/my-edit")
    assert dest == cache.library_dir() / "tinyface" / "my-edit.pth"
    assert [(e.name, e.path) for e in store.list_edits()] == [("tinyface/my-edit", dest)]
    assert store.model_path("tinyface/my-edit") == dest
    assert store.verify("tinyface/my-edit").ok
    with pytest.raises(UnknownPresetError):
        store.import_file(src, "nosuchpreset/x")
    with pytest.raises(UnknownCheckpointError, match="No checkpoint named 'loose'"):
        store.import_file(src, "loose")
    assert [p.name for p in store.remove("tinyface/my-edit")] == ["my-edit.pth", "my-edit.pth.meta.json"]
    assert store.list_edits() == []


def test_import_checks_keys_against_the_architecture(tmp_path: Path) -> None:
    tiny = pytest.importorskip("tests.support.tiny")
    models = pytest.importorskip("dclip_cli.models")
    if not hasattr(models, "build_model"):
        pytest.skip("dclip_cli.models.build_model is not available yet")
    config = tiny.tiny_ddpm_config()
    good = tiny.save_tiny_checkpoint(tmp_path / "good.ckpt", "ddpm", seed=0)
    manager.register_plugin(
        "t", SpecPlugin(CheckpointSpec("tiny", "tiny.ckpt", format="ddpm", arch="ddpm", arch_config=config))
    )
    assert store.import_file(good, "tiny").is_file()
    sd = torch.load(good, weights_only=True)
    sd.pop(sorted(k for k in sd if k != "conv_in.weight" and not k.startswith("temb"))[0])
    bad = save(sd, tmp_path / "bad.ckpt")
    from dclip_cli.errors import StateDictMismatchError

    with pytest.raises(StateDictMismatchError, match="1 missing"):
        store.import_file(bad, "tiny", overwrite=True)
