"""Face alignment for the face preset: MTCNN landmarks feeding the FFHQ crop recipe.

The original DiffusionCLIP aligned faces with dlib's 68 landmarks and the FFHQ dataset recipe (reference section
12). dclip takes the five landmarks of facenet-pytorch's MTCNN, whose weights ship inside that package, and uses
the eye centres and mouth corners in the same geometry (section 12.3): a square quad oriented by the eyes and mouth
is cut out of the image, padded by reflection with a blurred, median-blended border where it leaves the image, and
mapped straight to ``size x size``.

facenet-pytorch is imported only when a face is first detected, so importing this module stays cheap; the MTCNN
networks are built once and cached.

Functions:
    align_face(img, size): the aligner registered by the face preset (``None`` when no face is found).
    detect_landmarks(img): five MTCNN landmarks of the largest face.
    ffhq_quad(...): the recipe's crop quad (pure geometry).
    align_to_quad(img, quad, qsize, size): shrink, crop, pad and transform (pure image function).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from PIL import Image

DETECT_MAX_SIDE = 1024
"""Images larger than this (longest side, pixels) are downscaled for detection only; the crop uses full size."""

_LANCZOS = Image.Resampling.LANCZOS
_BILINEAR = Image.Resampling.BILINEAR


def ffhq_quad(eye_left: Any, eye_right: Any, mouth_left: Any, mouth_right: Any) -> tuple[np.ndarray, float]:
    """Return the FFHQ crop quad for four landmarks (reference section 12.2, steps 1-3).

    Points are (x, y) with x to the right and y down; "left" and "right" are in image coordinates.

    Args:
        eye_left, eye_right: eye centres.
        mouth_left, mouth_right: mouth corners.

    Returns:
        ``(quad, qsize)``: ``quad`` of shape (4, 2) float64 holding the corners in the order top-left,
        bottom-left, bottom-right, top-right of the aligned face (PIL's QUAD order), and ``qsize`` its side.

    Raises:
        ValueError: the landmarks are degenerate (coincident points or not finite).
    """
    e_l, e_r, m_l, m_r = (
        np.asarray(p, dtype=np.float64).reshape(2) for p in (eye_left, eye_right, mouth_left, mouth_right)
    )
    eye_avg = (e_l + e_r) * 0.5
    eye_to_eye = e_r - e_l
    mouth_avg = (m_l + m_r) * 0.5
    eye_to_mouth = mouth_avg - eye_avg

    # x: the face's horizontal axis, from the eye line and the eye-to-mouth line turned by 90 degrees.
    x = eye_to_eye - np.flipud(eye_to_mouth) * np.array([-1.0, 1.0])
    norm = float(np.hypot(*x))
    if not np.isfinite(norm) or norm < 1e-6:
        raise ValueError("The face landmarks are degenerate: the eyes and mouth do not span a face.")
    x = x / norm * max(float(np.hypot(*eye_to_eye)) * 2.0, float(np.hypot(*eye_to_mouth)) * 1.8)
    y = np.flipud(x) * np.array([-1.0, 1.0])
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    qsize = float(np.hypot(*x)) * 2.0
    return quad, qsize


def gaussian_blur(arr: np.ndarray, sigma: float) -> np.ndarray:
    """Blur an (H, W, C) float array over H and W with a Gaussian of standard deviation ``sigma`` pixels.

    The kernel is truncated at 4 sigma and edges are mirrored including the edge pixel (the conventions of
    ``scipy.ndimage.gaussian_filter``'s default ``reflect`` mode).

    Returns:
        A float32 array of the same shape.
    """
    arr = np.asarray(arr, dtype=np.float32)
    if sigma <= 0:
        return arr.copy()
    radius = int(4.0 * sigma + 0.5)
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).astype(np.float32)
    out = arr
    for axis in (0, 1):
        n = out.shape[axis]
        pad_width = [(0, 0)] * out.ndim
        pad_width[axis] = (radius, radius)
        padded = np.pad(out, pad_width, mode="symmetric")
        acc = np.zeros_like(out)
        for k, weight in enumerate(kernel):
            acc += weight * np.take(padded, np.arange(k, k + n), axis=axis)
        out = acc
    return out


def align_to_quad(img: Image.Image, quad: np.ndarray, qsize: float, size: int) -> Image.Image:
    """Cut ``quad`` out of ``img`` and map it to ``size x size`` (reference section 12.2, steps 4-8).

    Large faces are first shrunk by an integer factor (Lanczos); the image is cropped to the quad plus a border;
    where the quad leaves the image, the image is reflect-padded and the padding is blurred and blended towards
    the median colour; finally a bilinear quad transform renders the output.

    Args:
        img: an RGB image.
        quad: (4, 2) corners from :func:`ffhq_quad`.
        qsize: side of the quad in pixels.
        size: output side S.

    Returns:
        An RGB image of ``size x size``.

    Raises:
        ValueError: the quad does not overlap the image.
    """
    img = img if img.mode == "RGB" else img.convert("RGB")
    quad = np.array(quad, dtype=np.float64).reshape(4, 2)
    qsize = float(qsize)

    # 4. Shrink very large faces by an integer factor first.
    shrink = int(np.floor(qsize / size * 0.5))
    if shrink > 1:
        rsize = (max(1, int(np.rint(img.size[0] / shrink))), max(1, int(np.rint(img.size[1] / shrink))))
        img = img.resize(rsize, _LANCZOS)
        quad /= shrink
        qsize /= shrink

    # 5. Crop to the quad's bounding box plus a border.
    border = max(int(np.rint(qsize * 0.1)), 3)
    lo = np.floor(quad.min(axis=0)).astype(int)
    hi = np.ceil(quad.max(axis=0)).astype(int)
    crop = (
        max(int(lo[0]) - border, 0),
        max(int(lo[1]) - border, 0),
        min(int(hi[0]) + border, img.size[0]),
        min(int(hi[1]) + border, img.size[1]),
    )
    if crop[2] <= crop[0] or crop[3] <= crop[1]:
        raise ValueError("The face quad lies outside the image.")
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad -= np.array(crop[:2], dtype=np.float64)

    # 6. Pad where the quad leaves the image: reflect, then blur and fade the padding towards the median colour.
    lo = np.floor(quad.min(axis=0)).astype(int)
    hi = np.ceil(quad.max(axis=0)).astype(int)
    pad = np.array(
        [
            max(-int(lo[0]) + border, 0),
            max(-int(lo[1]) + border, 0),
            max(int(hi[0]) - img.size[0] + border, 0),
            max(int(hi[1]) - img.size[1] + border, 0),
        ]
    )
    if pad.max() > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        arr = np.pad(
            np.asarray(img, dtype=np.float32), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), mode="reflect"
        )
        h, w, _ = arr.shape
        yy, xx, _ = np.ogrid[:h, :w, :1]
        d = np.maximum(pad, 1).astype(np.float32)  # only zero for degenerate, sub-pixel quads
        mask = np.maximum(
            1.0 - np.minimum(xx.astype(np.float32) / d[0], (w - 1 - xx).astype(np.float32) / d[2]),
            1.0 - np.minimum(yy.astype(np.float32) / d[1], (h - 1 - yy).astype(np.float32) / d[3]),
        )
        arr += (gaussian_blur(arr, qsize * 0.02) - arr) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
        arr += (np.median(arr, axis=(0, 1)) - arr) * np.clip(mask, 0.0, 1.0)
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")
        quad += pad[:2]

    # 7. Render the quad directly at the output size.
    return img.transform((size, size), Image.Transform.QUAD, tuple((quad + 0.5).flatten()), _BILINEAR)


@functools.lru_cache(maxsize=1)
def _mtcnn() -> Any:
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=True, select_largest=True, device="cpu")


def detect_landmarks(img: Image.Image) -> np.ndarray | None:
    """Detect faces with MTCNN and return the five landmarks of the largest one.

    Images larger than :data:`DETECT_MAX_SIDE` are downscaled for detection and the landmarks scaled back.

    Returns:
        (5, 2) float64 (x, y) points in MTCNN's order: left eye, right eye, nose, left mouth corner, right mouth
        corner (left/right in image coordinates); ``None`` when no face is found.
    """
    img = img if img.mode == "RGB" else img.convert("RGB")
    width, height = img.size
    if min(width, height) < 12:  # below MTCNN's smallest window: nothing can be found
        return None
    det = img
    longest = max(width, height)
    if longest > DETECT_MAX_SIDE:
        scale = DETECT_MAX_SIDE / longest
        det = img.resize((max(1, round(width * scale)), max(1, round(height * scale))), _BILINEAR)
    boxes, _probs, points = _mtcnn().detect(det, landmarks=True)
    if boxes is None or points is None or len(boxes) == 0:
        return None
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    landmarks = np.asarray(points[int(np.argmax(areas))], dtype=np.float64).reshape(5, 2)
    landmarks *= np.array([width / det.size[0], height / det.size[1]])
    return landmarks


def align_face(img: Image.Image, size: int) -> Image.Image | None:
    """Align the largest face in ``img`` the FFHQ way and return it at ``size x size``.

    Args:
        img: a PIL image (converted to RGB).
        size: output side S (the model resolution).

    Returns:
        An RGB image of ``size x size``, or ``None`` when MTCNN finds no face.
    """
    img = img if img.mode == "RGB" else img.convert("RGB")
    landmarks = detect_landmarks(img)
    if landmarks is None:
        return None
    try:
        quad, qsize = ffhq_quad(landmarks[0], landmarks[1], landmarks[3], landmarks[4])
        return align_to_quad(img, quad, qsize, size)
    except ValueError:
        return None
