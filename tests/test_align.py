"""Tests for the face preset's aligner (dclip_face.align): FFHQ geometry, padding, MTCNN on a real face."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from dclip_cli.images import load_image, prepare, sample_image_path
from dclip_face.align import align_face, align_to_quad, detect_landmarks, ffhq_quad, gaussian_blur

# Frontal synthetic face: eyes 40 px apart, mouth 40 px below the eyes.
E_L, E_R, M_L, M_R = (100.0, 100.0), (140.0, 100.0), (105.0, 140.0), (135.0, 140.0)
MARK_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def test_ffhq_quad_known_points() -> None:
    quad, qsize = ffhq_quad(E_L, E_R, M_L, M_R)
    # x = eye_to_eye + (|eye_to_mouth|, 0) = (80, 0), scaled to max(2*40, 1.8*40) = 80; c = eye_avg + 0.1*(0, 40)
    assert qsize == pytest.approx(160.0)
    np.testing.assert_allclose(quad, [[40, 24], [40, 184], [200, 184], [200, 24]], atol=1e-9)
    np.testing.assert_allclose(quad.mean(axis=0), [120, 104])


def test_ffhq_quad_mouth_dominated_scale() -> None:
    # eyes 20 apart, mouth 50 below: the scale is 1.8 * 50 = 90 rather than 2 * 20 = 40
    quad, qsize = ffhq_quad((0, 0), (20, 0), (0, 50), (20, 50))
    assert qsize == pytest.approx(180.0)
    np.testing.assert_allclose(quad.mean(axis=0), [10, 5])


@pytest.mark.parametrize("angle", [-40.0, 15.0, 90.0])
def test_ffhq_quad_rotates_with_the_face(angle: float) -> None:
    quad, qsize = ffhq_quad(E_L, E_R, M_L, M_R)
    a = math.radians(angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    centre = np.array([300.0, 200.0])

    def turn(p: object) -> np.ndarray:
        return (np.asarray(p, dtype=float) - centre) @ rot.T + centre

    quad_r, qsize_r = ffhq_quad(turn(E_L), turn(E_R), turn(M_L), turn(M_R))
    assert qsize_r == pytest.approx(qsize)
    np.testing.assert_allclose(quad_r, turn(quad), atol=1e-9)


def test_ffhq_quad_degenerate() -> None:
    with pytest.raises(ValueError, match="degenerate"):
        ffhq_quad((5, 5), (5, 5), (5, 5), (5, 5))


def test_gaussian_blur_matches_scipy() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    arr = rng.uniform(0, 255, (37, 29, 3)).astype(np.float32)
    ours = gaussian_blur(arr, 2.3)
    ref = ndimage.gaussian_filter(arr, [2.3, 2.3, 0])
    np.testing.assert_allclose(ours, ref, atol=1e-3)
    np.testing.assert_array_equal(gaussian_blur(arr, 0.0), arr)


def _marked_face(canvas: tuple[int, int], points: list[np.ndarray], radius: int) -> Image.Image:
    img = Image.new("RGB", canvas, (128, 128, 128))
    draw = ImageDraw.Draw(img)
    for (x, y), colour in zip(points, MARK_COLOURS, strict=True):
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
    return img


def _centroid(img: Image.Image, colour: tuple[int, int, int]) -> np.ndarray:
    arr = np.asarray(img).astype(int)
    hit = np.all(np.abs(arr - np.array(colour)) < 60, axis=-1)
    assert hit.sum() > 3, f"mark {colour} not found"
    ys, xs = np.nonzero(hit)
    return np.array([xs.mean(), ys.mean()])


# Where the four marks land in a 160 px output for the frontal face: landmark - quad's top-left corner (40, 24),
# minus half a pixel (the recipe samples the quad offset by +0.5).
EXPECTED_160 = [(59.5, 75.5), (99.5, 75.5), (64.5, 115.5), (94.5, 115.5)]


@pytest.mark.parametrize(
    "case,canvas,scale,shift,angle",
    [
        ("inside", (320, 320), 1.0, (0, 0), 0.0),
        ("rotated", (320, 320), 1.0, (40, 60), 25.0),
        ("padded", (200, 200), 1.0, (-70, -40), 0.0),  # the quad leaves the image at the top and left
        ("shrunk", (1400, 1400), 5.0, (0, 0), 0.0),  # qsize 800 >= 4 * 160: integer shrink first
    ],
)
def test_align_to_quad_puts_landmarks_at_canonical_positions(
    case: str, canvas: tuple[int, int], scale: float, shift: tuple[int, int], angle: float
) -> None:
    a = math.radians(angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    centre = np.array([120.0, 120.0])
    points = [
        ((np.array(p) - centre) @ rot.T + centre) * scale + np.array(shift) for p in (E_L, E_R, M_L, M_R)
    ]
    img = _marked_face(canvas, points, radius=round(3 * scale))
    quad, qsize = ffhq_quad(*points)
    if case == "padded":
        assert quad.min() < 0
    out = align_to_quad(img, quad, qsize, 160)
    assert out.size == (160, 160) and out.mode == "RGB"
    # The drawn marks sit up to a pixel off the intended points (rasterisation), so map their measured centres
    # through the quad: output = R^T (p - quad[0]) * S / qsize - 1/2, with R's columns the quad's unit axes.
    axes = np.stack([quad[3] - quad[0], quad[1] - quad[0]], axis=1) / qsize
    for colour, canonical in zip(MARK_COLOURS, EXPECTED_160, strict=True):
        expected = (_centroid(img, colour) - quad[0]) @ axes * 160 / qsize - 0.5
        got = _centroid(out, colour)
        np.testing.assert_allclose(got, expected, atol=0.6)
        np.testing.assert_allclose(got, canonical, atol=1.5)


def test_align_to_quad_padding_keeps_a_flat_image_flat() -> None:
    img = Image.new("RGB", (200, 200), (90, 140, 200))
    quad, qsize = ffhq_quad((30, 60), (70, 60), (35, 100), (65, 100))  # quad from (-30, -16) to (130, 144)
    out = np.asarray(align_to_quad(img, quad, qsize, 64)).astype(int)
    assert out.shape == (64, 64, 3)
    assert np.abs(out - np.array([90, 140, 200])).max() <= 1


def test_align_to_quad_padding_blurs_towards_the_median() -> None:
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8))
    quad, qsize = ffhq_quad((30, 60), (70, 60), (35, 100), (65, 100))
    out = np.asarray(align_to_quad(img, quad, qsize, 160)).astype(float)
    # the outer edge of the padding is the median colour and smooth; the face region keeps its noise
    corner = out[:4, :4]
    assert np.abs(corner - 127.5).max() < 12 and corner.std() < 4
    assert out[100:140, 100:140].std() > 25  # uniform noise has std 74; bilinear sampling halves it


def test_align_to_quad_outside_image() -> None:
    quad, qsize = ffhq_quad((1000, 1000), (1040, 1000), (1005, 1040), (1035, 1040))
    with pytest.raises(ValueError, match="outside the image"):
        align_to_quad(Image.new("RGB", (100, 100)), quad, qsize, 64)


# --------------------------------------------------------------------------------------------- MTCNN on a real face


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    data = pytest.importorskip("skimage.data")
    return Image.fromarray(data.astronaut())


def _assert_ffhq_like(out: Image.Image, size: int) -> None:
    lm = detect_landmarks(out)
    assert lm is not None, "no face in the aligned output"
    lm = lm / size
    # FFHQ-style positions: eyes at about (0.375, 0.47) and (0.625, 0.47), nose near the centre line
    np.testing.assert_allclose(lm[0], [0.375, 0.47], atol=0.04)
    np.testing.assert_allclose(lm[1], [0.625, 0.47], atol=0.04)
    assert abs(lm[2, 0] - 0.5) < 0.04


def test_align_face_on_the_astronaut(astronaut: Image.Image) -> None:
    out = align_face(astronaut, 256)
    assert out is not None and out.size == (256, 256) and out.mode == "RGB"
    _assert_ffhq_like(out, 256)


def test_align_face_on_rotated_and_grey_inputs(astronaut: Image.Image) -> None:
    out = align_face(astronaut.rotate(20, resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0)), 128)
    assert out is not None and out.size == (128, 128)
    _assert_ffhq_like(out.resize((256, 256), Image.Resampling.LANCZOS), 256)
    grey = align_face(astronaut.convert("L"), 64)
    assert grey is not None and grey.size == (64, 64) and grey.mode == "RGB"


def test_align_face_on_the_sample_image() -> None:
    out = align_face(load_image(sample_image_path()), 256)
    assert out is not None
    _assert_ffhq_like(out, 256)


def test_no_face_returns_none() -> None:
    assert align_face(Image.new("RGB", (256, 256), (255, 255, 255)), 256) is None
    assert align_face(Image.new("RGB", (8, 8)), 256) is None
    x0, info = prepare(Image.new("RGB", (300, 200), (10, 20, 30)), 64, aligner=align_face, source="wall.png")
    assert x0.shape == (1, 3, 64, 64) and info["method"] == "center_crop"
    assert info["warnings"] == ["No face was found in wall.png; using a centre crop instead."]


@pytest.fixture(scope="module")
def astronaut_landmarks(astronaut: Image.Image) -> np.ndarray:
    lm = detect_landmarks(astronaut)
    assert lm is not None
    return lm


def test_largest_face_wins(astronaut: Image.Image, astronaut_landmarks: np.ndarray) -> None:
    canvas = Image.new("RGB", (768, 512), (128, 128, 128))
    canvas.paste(astronaut.crop((96, 0, 352, 256)).resize((128, 128), Image.Resampling.LANCZOS), (20, 192))
    canvas.paste(astronaut, (256, 0))  # the large face on the right; a small one on the left
    small = detect_landmarks(canvas.crop((0, 0, 256, 512)))
    assert small is not None  # the small face alone is detectable, so the choice below is real
    lm = detect_landmarks(canvas)
    assert lm is not None
    np.testing.assert_allclose(lm, astronaut_landmarks + np.array([256, 0]), atol=3.0)


def test_large_images_are_detected_downscaled(
    astronaut: Image.Image, astronaut_landmarks: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dclip_face import align

    monkeypatch.setattr(align, "DETECT_MAX_SIDE", 320)  # the 512 px image is detected at 320 px
    lm = detect_landmarks(astronaut)
    assert lm is not None
    np.testing.assert_allclose(lm, astronaut_landmarks, atol=4.0)


def test_prepare_with_the_aligner(astronaut: Image.Image) -> None:
    x0, info = prepare(astronaut, 256, aligner=align_face, require_face=True)
    assert x0.shape == (1, 3, 256, 256) and info["method"] == "align" and info["warnings"] == []
    assert -1.0 <= x0.min().item() and x0.max().item() <= 1.0


def test_module_import_does_not_import_facenet() -> None:
    code = "import sys, dclip_face.align; assert 'facenet_pytorch' not in sys.modules, 'facenet imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
