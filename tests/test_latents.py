"""Latent files and the content-keyed latent cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dclip_cli.errors import LatentError, OutputExistsError
from dclip_cli.latents import (
    LatentCache,
    check_latent,
    load_latent,
    load_latent_and_reconstruction,
    save_latent,
    tensor_sha256,
)


def _x(seed: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_save_load_round_trip(tmp_path: Path) -> None:
    x_lat, x_rec = _x(0), _x(1)
    meta = {
        "model_sha256": "ab" * 32,
        "t0": 400,
        "steps": 40,
        "image_sha256": "cd" * 32,
        "dclip_version": "0.1.0",
    }
    path = save_latent(tmp_path / "a.safetensors", x_lat, meta, x_rec=x_rec)
    loaded, got = load_latent(path)
    assert torch.equal(loaded, x_lat)
    assert got["t0"] == 400 and got["steps"] == 40 and got["model_sha256"] == "ab" * 32
    assert got["format"] == "dclip.latent/1"
    lat2, rec2, _ = load_latent_and_reconstruction(path)
    assert torch.equal(lat2, x_lat) and torch.equal(rec2, x_rec)
    with pytest.raises(OutputExistsError):
        save_latent(path, x_lat, meta)
    save_latent(path, x_rec, meta, overwrite=True)
    assert torch.equal(load_latent(path)[0], x_rec)
    assert not list(tmp_path.glob("*.incomplete"))


def test_bad_latent_files(tmp_path: Path) -> None:
    with pytest.raises(LatentError, match="does not exist"):
        load_latent(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(LatentError, match="not a readable latent file"):
        load_latent(junk)
    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2)}, str(other))
    with pytest.raises(LatentError, match="no 'x_lat' tensor"):
        load_latent(other)


def test_check_latent() -> None:
    meta = {"model_sha256": "aa", "t0": 400, "steps": 40}
    check_latent(meta, model_sha256="aa", t0=400, steps=40)
    check_latent(meta)  # nothing to compare
    with pytest.raises(LatentError, match="another model"):
        check_latent(meta, model_sha256="bb")
    with pytest.raises(LatentError, match=r"another t0 \(t0 400, this run uses 500\)"):
        check_latent(meta, t0=500, path="x.safetensors")


def test_cache_keys_on_image_model_t0_and_steps(tmp_path: Path) -> None:
    cache = LatentCache(tmp_path / "latents")
    img = _x(3, batch=1)
    x_lat, x_rec = _x(4, batch=1), _x(5, batch=1)
    assert cache.get(img, "m1", 400, 40) is None
    cache.put(img, "m1", 400, 40, x_lat, x_rec)
    lat, rec = cache.get(img, "m1", 400, 40)
    assert torch.equal(lat, x_lat) and torch.equal(rec, x_rec)
    # the same content under a tensor copy or its hash key hits; any changed part misses
    assert cache.get(img.clone(), "m1", 400, 40) is not None
    assert cache.get(tensor_sha256(img), "m1", 400, 40) is not None
    assert cache.get(img + 1e-3, "m1", 400, 40) is None
    assert cache.get(img, "m2", 400, 40) is None
    assert cache.get(img, "m1", 401, 40) is None
    assert cache.get(img, "m1", 400, 12) is None
    # string image keys (e.g. file hashes) work too
    cache.put("file-sha", "m1", 400, 40, x_lat, x_rec)
    assert cache.get("file-sha", "m1", 400, 40) is not None
    # a corrupt entry is a miss, not a crash
    cache.path("file-sha", "m1", 400, 40).write_bytes(b"garbage")
    assert cache.get("file-sha", "m1", 400, 40) is None
    assert cache.clear() == 2
    assert cache.get(img, "m1", 400, 40) is None


def test_tensor_sha256_depends_on_shape_and_values() -> None:
    a = torch.zeros(1, 3, 4, 4)
    assert tensor_sha256(a) == tensor_sha256(a.clone().double())
    assert tensor_sha256(a) != tensor_sha256(a.reshape(1, 3, 2, 8))
    assert tensor_sha256(a) != tensor_sha256(a + 1)
