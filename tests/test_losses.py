"""Identity loss (reference sections 10.2 and 21.4) and the LPIPS wrapper, with small seeded networks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dclip_cli.errors import CheckpointError, CheckpointNotCachedError, ConfigError, StateDictMismatchError
from dclip_cli.losses.identity import (
    FACENET_INPUT_SIZE,
    FacenetEmbedder,
    IdentityLoss,
    build_facenet,
    identity_crop,
    identity_window,
)
from dclip_cli.losses.lpips import LPIPSLoss, trunk_weights_path
from dclip_cli.store import load_lpips

SCALE = 127.5 / 128.0


def _images(seed: int, batch: int = 2, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=g) * 2 - 1


def _tiny_embedder(seed: int = 0) -> nn.Module:
    """A small seeded embedding network: (B, 3, H, W) -> (B, 16)."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 16)
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return net


# --- identity crop ------------------------------------------------------------------------------------------------


def test_identity_window_is_the_reference_window_at_256_and_scales() -> None:
    assert identity_window(256, 256) == (35, 223, 32, 220)
    assert identity_window(512, 512) == (70, 446, 64, 440)
    assert identity_window(128, 128) == (18, 112, 16, 110)  # 17.5 -> 18, 94 wide
    assert identity_window(32, 32) == (4, 28, 4, 28)
    for size in range(16, 1025, 8):
        top, bottom, left, right = identity_window(size, size)
        assert bottom - top == right - left, size
        assert 0 <= top and bottom <= size and 0 <= left and right <= size


def test_identity_crop_takes_exactly_the_window() -> None:
    """The window of a 256 face is +1 and everything else -1: only +1 pixels may reach the crop."""
    x = -torch.ones(2, 3, 256, 256)
    x[:, :, 35:223, 32:220] = 1.0
    crop = identity_crop(x)
    assert crop.shape == (2, 3, FACENET_INPUT_SIZE, FACENET_INPUT_SIZE)
    torch.testing.assert_close(crop, torch.full_like(crop, SCALE))
    # one row/column more on any side would pull in -1 values
    for rows, cols in [
        ((34, 223), (32, 220)),
        ((35, 224), (32, 220)),
        ((35, 223), (31, 220)),
        ((35, 223), (32, 221)),
    ]:
        y = -torch.ones(1, 3, 256, 256)
        y[:, :, 35:223, 32:220] = 1.0
        y[:, :, rows[0] : rows[1], cols[0] : cols[1]] = 1.0  # no change inside the window
        assert torch.equal(identity_crop(y), identity_crop(x[:1]))
    z = x[:1].clone()
    z[:, :, 34, :] = 5.0  # just above the window
    z[:, :, :, 220] = 5.0  # just right of it
    assert torch.equal(identity_crop(z), identity_crop(x[:1]))
    for row, col in [(35, 100), (222, 100), (100, 32), (100, 219)]:  # the window's own border pixels count
        w = x[:1].clone()
        w[:, :, row, col] = -1.0
        assert not torch.equal(identity_crop(w), identity_crop(x[:1])), (row, col)


def test_identity_crop_is_bilinear_antialiased_resize_times_127_5_over_128() -> None:
    x = _images(1, batch=2, size=64)
    top, bottom, left, right = identity_window(64, 64)
    expected = F.interpolate(
        x[:, :, top:bottom, left:right], size=(160, 160), mode="bilinear", align_corners=False, antialias=True
    )
    torch.testing.assert_close(identity_crop(x), expected * SCALE, rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match=r"\(B, 3, H, W\)"):
        identity_crop(torch.zeros(3, 64, 64))


# --- identity loss ------------------------------------------------------------------------------------------------


def test_identity_loss_matches_one_minus_cosine_and_is_frozen() -> None:
    net = FacenetEmbedder(_tiny_embedder())
    loss = IdentityLoss(net)
    x_src = _images(2, size=64).requires_grad_(True)
    x_gen = _images(3, size=64).requires_grad_(True)

    with torch.no_grad():
        f_src = _tiny_embedder()(identity_crop(x_src))
        f_gen = _tiny_embedder()(identity_crop(x_gen))
    f_src, f_gen = f_src / f_src.norm(dim=-1, keepdim=True), f_gen / f_gen.norm(dim=-1, keepdim=True)
    expected = 1 - (f_src * f_gen).sum(-1)

    per = loss.per_sample(x_src, x_gen)
    assert per.shape == (2,) and per.dtype == torch.float32
    torch.testing.assert_close(per, expected, rtol=0, atol=1e-6)
    value = loss(x_src, x_gen)
    torch.testing.assert_close(value, expected.mean(), rtol=0, atol=1e-6)

    value.backward()
    assert x_gen.grad is not None and x_gen.grad.abs().sum() > 0
    assert x_src.grad is None, "the source embedding must be detached"
    assert all(p.grad is None and not p.requires_grad for p in loss.parameters())

    loss.train()
    assert not loss.net.training and not net.net.training
    same = _images(4, size=64)
    assert loss(same, same.clone()).abs().item() < 1e-6
    with pytest.raises(ConfigError, match="shape"):
        loss(_images(5, size=64), _images(5, size=32))


def _facenet_file(path: Path, *, with_logits: bool = True, broken: bool = False) -> nn.Module:
    from facenet_pytorch import InceptionResnetV1

    torch.manual_seed(0)
    net = InceptionResnetV1(pretrained=None, classify=False).eval()
    state = dict(net.state_dict())
    if with_logits:  # the VGGFace2 release carries its 8631-class head; a tiny stand-in keeps the file small
        state["logits.weight"] = torch.zeros(7, 512)
        state["logits.bias"] = torch.zeros(7)
    if broken:
        state.pop("last_linear.weight")
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, path)
    return net


def test_build_facenet_loads_state_dict_safely_and_embeds(tmp_path: Path) -> None:
    path = tmp_path / "20180402-114759-vggface2.pt"
    reference = _facenet_file(path)
    embedder = build_facenet(path, "cpu")
    assert isinstance(embedder, FacenetEmbedder)
    assert all(not p.requires_grad for p in embedder.parameters())
    assert not embedder.net.training and not hasattr(embedder.net, "logits")
    x = _images(6, batch=2, size=256)
    out = embedder(x)
    assert out.shape == (2, 512)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(p.half().float())
        for b in reference.buffers():
            if b.is_floating_point():
                b.copy_(b.half().float())
        expected = F.normalize(reference(identity_crop(x)), dim=-1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_build_facenet_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="do not exist") as info:
        build_facenet(tmp_path / "missing.pt", "cpu")
    assert "dclip models fetch facenet-vggface2" in (info.value.hint or "")
    broken = tmp_path / "broken.pt"
    torch.save({"conv.weight": torch.zeros(1)}, broken)
    with pytest.raises(StateDictMismatchError, match="does not fit InceptionResnetV1"):
        build_facenet(broken, "cpu")


# --- LPIPS --------------------------------------------------------------------------------------------------------


def test_lpips_with_random_trunk_is_a_frozen_distance() -> None:
    import lpips as lpips_pkg

    torch.manual_seed(0)
    loss = LPIPSLoss("alex", pretrained=True, pnet_rand=True)
    x, y = _images(7, batch=2, size=64), _images(8, batch=2, size=64)
    per = loss.per_sample(x, y)
    assert per.shape == (2,) and (per > 0).all()
    torch.testing.assert_close(loss(x, y), per.mean())
    torch.testing.assert_close(loss.per_sample(y, x), per)
    assert loss(x, x).abs().item() < 1e-7
    # the calibrated linear layers are the ones shipped inside the lpips package
    shipped = torch.load(
        Path(lpips_pkg.__file__).parent / "weights" / "v0.1" / "alex.pth",
        map_location="cpu",
        weights_only=True,
    )
    assert torch.equal(loss.lpips.lin0.model[1].weight, shipped["lin0.model.1.weight"])
    assert all(not p.requires_grad for p in loss.parameters())
    loss.train()
    assert not loss.lpips.training
    x_gen = y.clone().requires_grad_(True)
    loss(x, x_gen).backward()
    assert x_gen.grad is not None and x_gen.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="Unknown LPIPS network"):
        LPIPSLoss("resnet", pnet_rand=True)


def test_lpips_trunk_offline_without_cache_names_the_fetch_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DCLIP_OFFLINE", "1")
    path = trunk_weights_path("alex")
    assert not path.exists() and path.name == "alexnet-owt-7be5be79.pth"
    with pytest.raises(CheckpointNotCachedError) as info:
        load_lpips("alex")
    text = str(info.value) + " " + (info.value.hint or "")
    assert "alexnet-owt-7be5be79.pth" in text and "dclip models fetch lpips-alex" in text


def _alexnet_features(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {
        0: (64, 3, 11, 11),
        3: (192, 64, 5, 5),
        6: (384, 192, 3, 3),
        8: (256, 384, 3, 3),
        10: (256, 256, 3, 3),
    }
    state = {}
    for i, shape in shapes.items():
        state[f"features.{i}.weight"] = torch.randn(shape, generator=g) * 0.05
        state[f"features.{i}.bias"] = torch.randn(shape[0], generator=g) * 0.05
    return state


def test_lpips_trunk_comes_through_the_checkpoint_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without torch hub's copy, the trunk is fetched by dclip's store (here from a DCLIP_MIRROR folder) into the
    dclip cache, not printed about on stdout by torch hub."""
    from dclip_cli.checkpoints.cache import checkpoint_path
    from dclip_cli.store import get_spec

    state = _alexnet_features(3)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    torch.save(state, mirror / "alexnet-owt-7be5be79.pth")
    monkeypatch.setenv("DCLIP_MIRROR", str(mirror))
    loss = load_lpips("alex")
    assert torch.equal(loss.lpips.net.slice1[0].weight, state["features.0.weight"])
    assert checkpoint_path(get_spec("lpips-alex")).is_file()
    assert not trunk_weights_path("alex").exists()


def test_lpips_trunk_loads_from_torch_hub_cache() -> None:
    """A cached torchvision AlexNet file (its ``features.*`` part; the classifier is ignored) fills the trunk."""
    state = _alexnet_features(1)
    state["classifier.6.bias"] = torch.zeros(1000)
    path = trunk_weights_path("alex")
    path.parent.mkdir(parents=True)
    torch.save(state, path)

    loss = load_lpips("alex", offline=True)
    net = loss.lpips.net
    assert torch.equal(net.slice1[0].weight, state["features.0.weight"])
    assert torch.equal(net.slice2[1].weight, state["features.3.weight"])  # child "3" of slice2
    assert torch.equal(net.slice5[0].bias, state["features.10.bias"])
    assert loss(_images(9, size=64), _images(10, size=64)).item() > 0

    del state["features.8.weight"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_lpips("alex", offline=True)
