"""Tests for dclip_cli.images: loading, preparing, tensor conversion, saving, grids, the sample image."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from dclip_cli import images
from dclip_cli.errors import ImageError, NoFaceFoundError, NonFiniteError, OutputError, OutputExistsError
from dclip_cli.images import (
    ensure_rgb,
    image_grid,
    image_sha256,
    load_and_prepare,
    load_image,
    prepare,
    sample_image_path,
    save_image,
    to_pil,
    to_pils,
    to_tensor,
)
from dclip_cli.preprocess import center_crop_box

REPO = Path(__file__).resolve().parents[1]


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _px(img: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(img)[xy[1], xy[0]])


# --------------------------------------------------------------------------------------------- load_image


@pytest.mark.parametrize(
    "fmt,suffix,exact",
    [
        ("PNG", ".png", True),
        ("WEBP", ".webp", False),
        ("JPEG", ".jpg", False),
        ("BMP", ".bmp", True),
        ("TIFF", ".tif", True),
    ],
)
def test_load_formats(tmp_path: Path, fmt: str, suffix: str, exact: bool) -> None:
    src = _noise(40, 48) if exact else Image.new("RGB", (40, 48), (200, 30, 90))
    p = tmp_path / f"img{suffix}"
    src.save(p, format=fmt, **({"quality": 95} if not exact else {}))
    img = load_image(p)
    assert img.mode == "RGB" and img.size == (40, 48)
    diff = np.abs(np.asarray(img, dtype=int) - np.asarray(src, dtype=int)).max()
    assert diff == 0 if exact else diff <= 6


def test_load_applies_exif_orientation(tmp_path: Path) -> None:
    # 40 wide x 60 high: red on top, blue below; orientation 6 = display rotated 90 degrees clockwise.
    arr = np.zeros((60, 40, 3), np.uint8)
    arr[:30] = (255, 0, 0)
    arr[30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "rotated.jpg"
    Image.fromarray(arr).save(p, exif=exif, quality=95)
    img = load_image(p)
    assert img.size == (60, 40)
    right, left = _px(img, (50, 20)), _px(img, (10, 20))
    assert right[0] > 200 and right[2] < 60  # the top (red) is now on the right
    assert left[2] > 200 and left[0] < 60


def test_load_grayscale_and_16bit(tmp_path: Path) -> None:
    Image.new("L", (32, 32), 77).save(tmp_path / "g.png")
    assert _px(load_image(tmp_path / "g.png"), (3, 3)) == (77, 77, 77)

    Image.new("1", (32, 32), 1).save(tmp_path / "bw.png")
    assert _px(load_image(tmp_path / "bw.png"), (0, 0)) == (255, 255, 255)

    a16 = np.zeros((32, 32), np.uint16)
    a16[0, 0], a16[0, 1], a16[0, 2] = 65535, 25700, 0
    Image.fromarray(a16).save(tmp_path / "g16.png")
    img = load_image(tmp_path / "g16.png")
    assert img.mode == "RGB"
    assert [_px(img, (i, 0))[0] for i in range(3)] == [255, 100, 0]


def test_load_alpha_is_composited_on_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    rgba.putpixel((1, 1), (0, 0, 0, 255))
    rgba.putpixel((2, 2), (0, 0, 0, 128))
    rgba.putpixel((3, 3), (10, 200, 30, 255))
    rgba.save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert _px(img, (0, 0)) == (255, 255, 255)
    assert _px(img, (1, 1)) == (0, 0, 0)
    assert all(abs(v - 127) <= 1 for v in _px(img, (2, 2)))
    assert _px(img, (3, 3)) == (10, 200, 30)

    la = Image.new("LA", (32, 32), (0, 0))
    la.putpixel((5, 5), (40, 255))
    la.save(tmp_path / "la.png")
    img = load_image(tmp_path / "la.png")
    assert _px(img, (0, 0)) == (255, 255, 255) and _px(img, (5, 5)) == (40, 40, 40)


def test_load_palette_with_and_without_transparency(tmp_path: Path) -> None:
    pal = Image.new("P", (32, 32), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * (3 * 254))
    pal.putpixel((4, 4), 1)
    pal.save(tmp_path / "opaque.png")
    img = load_image(tmp_path / "opaque.png")
    assert _px(img, (0, 0)) == (0, 0, 0) and _px(img, (4, 4)) == (255, 0, 0)

    pal.save(tmp_path / "transparent.png", transparency=0)
    img = load_image(tmp_path / "transparent.png")
    assert _px(img, (0, 0)) == (255, 255, 255) and _px(img, (4, 4)) == (255, 0, 0)

    pal.save(tmp_path / "anim.gif")
    assert _px(load_image(tmp_path / "anim.gif"), (4, 4)) == (255, 0, 0)


def test_load_cmyk(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (32, 32), (0, 0, 0, 0))
    cmyk.putpixel((1, 1), (0, 255, 255, 0))
    cmyk.save(tmp_path / "c.tif")
    img = load_image(tmp_path / "c.tif")
    assert _px(img, (0, 0)) == (255, 255, 255) and _px(img, (1, 1)) == (255, 0, 0)
    Image.new("CMYK", (32, 32), (0, 0, 0, 0)).save(tmp_path / "c.jpg", quality=95)
    assert min(_px(load_image(tmp_path / "c.jpg"), (5, 5))) >= 250


def _assert_image_error(path: Path, *needles: str) -> ImageError:
    with pytest.raises(ImageError) as info:
        load_image(path)
    err = info.value
    for needle in needles:
        assert needle in err.message
    assert err.message.endswith(".") and err.hint
    return err


def test_load_errors(tmp_path: Path) -> None:
    err = _assert_image_error(tmp_path / "nope.png", "does not exist", "nope.png")
    assert "path" in (err.hint or "")

    (tmp_path / "folder").mkdir()
    _assert_image_error(tmp_path / "folder", "is a directory")

    (tmp_path / "notes.png").write_text("hello, not an image\n")
    _assert_image_error(tmp_path / "notes.png", "not an image file")
    (tmp_path / "empty.jpg").write_bytes(b"")
    _assert_image_error(tmp_path / "empty.jpg", "not an image file")

    _noise(31, 100).save(tmp_path / "small.png")
    _assert_image_error(tmp_path / "small.png", "31x100", "at least 32")
    _noise(32, 32).save(tmp_path / "ok.png")
    assert load_image(tmp_path / "ok.png").size == (32, 32)


@pytest.mark.parametrize("fmt,suffix", [("PNG", ".png"), ("JPEG", ".jpg")])
def test_load_truncated(tmp_path: Path, fmt: str, suffix: str) -> None:
    full = tmp_path / f"full{suffix}"
    _noise(128, 128).save(full, format=fmt)
    data = full.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    _assert_image_error(cut, "truncated or corrupt", str(cut))


def test_ensure_rgb_unconvertible_mode_message() -> None:
    class Weird:
        mode = "XYZ"
        info: dict[str, object] = {}

        def convert(self, mode: str) -> Image.Image:
            raise ValueError("conversion from XYZ to RGB not supported")

    with pytest.raises(ImageError, match="colour mode 'XYZ'"):
        ensure_rgb(Weird())  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- prepare


def _striped(w: int, h: int) -> Image.Image:
    """Red border strips, a green centre square."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:] = (255, 0, 0)
    left, top, right, bottom = center_crop_box(w, h)
    arr[top:bottom, left:right] = (0, 255, 0)
    return Image.fromarray(arr)


@pytest.mark.parametrize("w,h", [(100, 60), (60, 100), (64, 64), (101, 40)])
def test_prepare_center_crops_and_resizes(w: int, h: int) -> None:
    x0, info = prepare(_striped(w, h), 32)
    assert x0.shape == (1, 3, 32, 32) and x0.dtype == torch.float32
    green = torch.tensor([-1.0, 1.0, -1.0]).view(1, 3, 1, 1)
    assert torch.allclose(x0, green.expand_as(x0), atol=1e-6)
    assert info["method"] == "center_crop" and info["source_size"] == [w, h]
    side = min(w, h)
    assert info["crop_box"] == [
        (w - side) // 2,
        (h - side) // 2,
        (w - side) // 2 + side,
        (h - side) // 2 + side,
    ]
    assert info["warnings"] == [] and info["upscaled"] is False and info["aligner"] is None


def test_prepare_matches_direct_lanczos_and_original_scaling() -> None:
    img = _noise(90, 70, seed=3)
    x0, _ = prepare(img, 48)
    ref = img.crop((10, 0, 80, 70)).resize((48, 48), Image.Resampling.LANCZOS)
    # the original: np.array(img) / 255 in float64, cast to float32, then (img - 0.5) * 2
    expected = (torch.from_numpy(np.asarray(ref) / 255).float().permute(2, 0, 1)[None] - 0.5) * 2.0
    assert torch.equal(x0, expected)


def test_prepare_warns_when_upscaling() -> None:
    x0, info = prepare(_noise(40, 50), 64, source="tiny.png")
    assert x0.shape == (1, 3, 64, 64) and info["upscaled"] is True
    assert len(info["warnings"]) == 1 and "tiny.png is 40x50 pixels" in info["warnings"][0]


def test_prepare_rejects_bad_size() -> None:
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ImageError, match="positive integer"):
            prepare(_noise(40, 40), bad)  # type: ignore[arg-type]


def test_prepare_with_aligner_result() -> None:
    aligned = _noise(24, 24, seed=9)
    calls: list[tuple[tuple[int, int], int]] = []

    def fake_align(img: Image.Image, size: int) -> Image.Image:
        calls.append((img.size, size))
        return aligned

    x0, info = prepare(_noise(50, 40), 24, aligner=fake_align)
    assert calls == [((50, 40), 24)]
    assert torch.equal(x0, to_tensor(aligned))
    assert info["method"] == "align" and info["aligner"] == "fake_align" and info["crop_box"] is None


def test_prepare_accepts_aligner_record_and_fixes_size() -> None:
    from dclip_cli.presets.preset import Aligner

    rec = Aligner(name="rect", align=lambda img, size: Image.new("RGB", (size * 2, size), (0, 0, 255)))
    x0, info = prepare(_noise(40, 40), 32, aligner=rec)
    assert x0.shape == (1, 3, 32, 32) and info["aligner"] == "rect" and info["method"] == "align"
    assert torch.allclose(x0[0, :, 5, 5], torch.tensor([-1.0, -1.0, 1.0]))


def test_prepare_no_face_warns_and_center_crops() -> None:
    img = _striped(80, 40)
    x0, info = prepare(img, 32, aligner=lambda im, s: None, source="crowd.jpg")
    assert info["method"] == "center_crop"
    assert info["warnings"] == ["No face was found in crowd.jpg; using a centre crop instead."]
    assert torch.equal(x0, prepare(img, 32)[0])


def test_prepare_require_face_raises() -> None:
    with pytest.raises(NoFaceFoundError) as info:
        prepare(_noise(40, 40), 32, aligner=lambda im, s: None, require_face=True, source="cat.png")
    assert info.value.message == "No face was found in cat.png."
    assert "--require-face" in (info.value.hint or "")


def test_prepare_aligner_failure_is_a_warning_or_an_error() -> None:
    def broken(img: Image.Image, size: int) -> Image.Image:
        raise RuntimeError("detector exploded")

    _, info = prepare(_noise(40, 40), 32, aligner=broken)
    assert len(info["warnings"]) == 1 and "detector exploded" in info["warnings"][0]
    assert info["method"] == "center_crop"
    with pytest.raises(NoFaceFoundError, match="Face alignment failed on the image"):
        prepare(_noise(40, 40), 32, aligner=broken, require_face=True)


def test_load_and_prepare(tmp_path: Path) -> None:
    p = tmp_path / "in.png"
    _striped(70, 50).save(p)
    x0, info = load_and_prepare(p, 16)
    assert x0.shape == (1, 3, 16, 16)
    assert info["path"] == str(p)
    assert info["image_sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    with pytest.raises(ImageError, match="does not exist"):
        load_and_prepare(tmp_path / "missing.png", 16)


# --------------------------------------------------------------------------------------------- tensors


def test_to_tensor_values_and_batches() -> None:
    arr = np.zeros((2, 3, 3), np.uint8)
    arr[0, 0] = (0, 128, 255)
    x = to_tensor(Image.fromarray(arr))
    assert x.shape == (1, 3, 2, 3) and x.dtype == torch.float32
    assert x[0, 0, 0, 0].item() == -1.0 and x[0, 2, 0, 0].item() == 1.0
    assert x[0, 1, 0, 0].item() == pytest.approx((128 / 255 - 0.5) * 2, abs=1e-7)
    b = to_tensor([_noise(8, 8, 1), _noise(8, 8, 2)])
    assert b.shape == (2, 3, 8, 8)
    with pytest.raises(ImageError, match="one size"):
        to_tensor([_noise(8, 8), _noise(9, 8)])


def test_uint8_round_trip_is_exact() -> None:
    img = _noise(17, 11, seed=5)
    assert np.array_equal(np.asarray(to_pil(to_tensor(img))), np.asarray(img))


def test_to_pil_matches_torchvision_save_image(tmp_path: Path) -> None:
    tvu = pytest.importorskip("torchvision.utils")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 16, 16, generator=g) * 2.6 - 1.3  # includes out-of-range values
    ref_path = tmp_path / "tv.png"
    tvu.save_image((x + 1) * 0.5, ref_path)
    assert np.array_equal(np.asarray(to_pil(x)), np.asarray(Image.open(ref_path).convert("RGB")))


def test_to_pil_rounding_clamping_nan(tmp_path: Path) -> None:
    x = torch.tensor([-1.0, 1.0, -5.0, 5.0, 0.004, 0.0]).view(1, 1, 6).expand(3, 1, 6).clone()
    row = np.asarray(to_pil(x))[0, :, 0]
    assert row.tolist() == [0, 255, 0, 255, 128, 128]
    # issue 11.3: no image is made (or written) from NaN or infinite values; they used to become flat grey
    for bad in (float("nan"), float("inf")):
        x[0, 0, 4] = bad
        with pytest.raises(NonFiniteError, match="holds 1 of 18 NaN or infinite values"):
            to_pil(x)
        with pytest.raises(NonFiniteError):
            save_image(x, tmp_path / "nan.png")
        assert not list(tmp_path.iterdir())


def test_to_pil_shapes() -> None:
    assert to_pil(torch.zeros(3, 4, 5)).size == (5, 4)
    assert len(to_pils(torch.zeros(3, 3, 4, 4))) == 3
    with pytest.raises(ImageError, match="batch of 2"):
        to_pil(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ImageError, match=r"\(B, 3, H, W\)"):
        to_pil(torch.zeros(1, 4, 4, 4))


# --------------------------------------------------------------------------------------------- saving


def test_save_image_atomic_and_overwrite(tmp_path: Path) -> None:
    x = to_tensor(_noise(16, 16, seed=2))
    dest = tmp_path / "out" / "sub" / "edit.png"
    assert save_image(x, dest) == dest
    assert np.array_equal(np.asarray(Image.open(dest)), np.asarray(to_pil(x)))
    before = dest.read_bytes()
    with pytest.raises(OutputExistsError, match="already exists"):
        save_image(-x, dest)
    assert dest.read_bytes() == before
    save_image(-x, dest, overwrite=True)
    assert dest.read_bytes() != before
    assert sorted(p.name for p in dest.parent.iterdir()) == ["edit.png"]  # no .incomplete left behind


def test_save_image_formats_metadata_batches(tmp_path: Path) -> None:
    save_image(_noise(16, 16), tmp_path / "a.png", metadata={"dclip": "1", "edit": "angry"})
    with Image.open(tmp_path / "a.png") as im:
        assert isinstance(im, PngImagePlugin.PngImageFile)
        assert im.text == {"dclip": "1", "edit": "angry"}
    save_image(torch.zeros(1, 3, 8, 8), tmp_path / "b.jpg")
    with Image.open(tmp_path / "b.jpg") as im:
        assert im.format == "JPEG"
    save_image(torch.zeros(3, 3, 8, 8), tmp_path / "grid.png")
    assert Image.open(tmp_path / "grid.png").size == (3 * 8 + 4 * 4, 8 + 2 * 4)
    with pytest.raises(OutputError, match="which image format"):
        save_image(torch.zeros(3, 8, 8), tmp_path / "out.latent")
    assert not (tmp_path / "out.latent").exists()


def test_image_sha256(tmp_path: Path) -> None:
    p = tmp_path / "x.png"
    _noise(32, 32).save(p)
    assert image_sha256(p) == hashlib.sha256(p.read_bytes()).hexdigest()
    with pytest.raises(ImageError, match="does not exist"):
        image_sha256(tmp_path / "y.png")


# --------------------------------------------------------------------------------------------- grids


def test_image_grid_layout_without_labels() -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    panels = [Image.new("RGB", (32, 32), c) for c in colours]
    grid = image_grid(panels, padding=4)
    assert grid.size == (3 * 32 + 4 * 4, 32 + 2 * 4)
    for i, c in enumerate(colours):
        assert _px(grid, (4 + i * 36 + 16, 20)) == c
    assert _px(grid, (2, 2)) == (255, 255, 255)

    two_rows = image_grid(panels, cols=2, padding=0)
    assert two_rows.size == (64, 64)
    assert _px(two_rows, (10, 40)) == colours[2] and _px(two_rows, (40, 40)) == (255, 255, 255)


def test_image_grid_labels_and_tensors() -> None:
    batch = torch.full((2, 3, 64, 64), -1.0)  # two black panels from one batch tensor
    grid = image_grid([batch, Image.new("RGB", (32, 16), (255, 0, 0))], ["input", "edit: angry", "a" * 200])
    w, h = grid.size
    assert w == 3 * 64 + 4 * 4 and h > 64 + 2 * 4  # a caption strip was added
    strip = np.asarray(grid)[4 + 64 : h - 4, 4 : 4 + 64]
    assert (strip < 100).any() and (strip > 200).any()  # dark text on white
    long_strip = np.asarray(grid)[4 + 64 : h - 4, 4 + 2 * 68 : 4 + 2 * 68 + 64]
    assert (long_strip < 100).any()  # the over-long label was shortened, not dropped
    # the smaller panel is scaled to fit and centred (64x32 inside the 64x64 cell)
    assert _px(grid, (4 + 2 * 68 + 32, 4 + 32)) == (255, 0, 0)
    assert _px(grid, (4 + 2 * 68 + 32, 4 + 5)) == (255, 255, 255)


def test_image_grid_multiline_labels_are_taller() -> None:
    panels = [Image.new("RGB", (64, 64))]
    one = image_grid(panels, ["a"])
    two = image_grid(panels, ["a\nb"])
    assert two.size[1] > one.size[1]


def test_image_grid_errors() -> None:
    with pytest.raises(ImageError, match="at least one image"):
        image_grid([])
    with pytest.raises(ImageError, match="2 images but 1 labels"):
        image_grid([_noise(8, 8), _noise(8, 8)], ["x"])


# --------------------------------------------------------------------------------------------- sample image


def test_sample_image_is_shipped() -> None:
    p = sample_image_path()
    assert p.is_file() and p.parent.name == "data" and p.parent.parent.name == "dclip_cli"
    img = load_image(p)
    assert img.size == (256, 256)
    assert (REPO / "examples" / "face.png").read_bytes() == p.read_bytes()
    x0, info = load_and_prepare(p, 256)
    assert x0.shape == (1, 3, 256, 256) and info["crop_box"] == [0, 0, 256, 256]
    assert images.MIN_IMAGE_SIZE == 32
