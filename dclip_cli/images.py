"""Images in and out: loading any Pillow-readable file, preparing model inputs, saving, grids.

Images inside dclip are float32 tensors of shape (B, 3, S, S) in [-1, 1]. The conversions follow the original
DiffusionCLIP exactly (reference section 11): loading divides the uint8 pixels by 255 and maps them with
``(img - 0.5) * 2``; saving maps ``(x + 1) / 2`` to [0, 255] with round-half-up and clamping, as torchvision's
``save_image`` does. Two documented deviations (section 21.2): non-square inputs are centre-cropped instead of
squashed, and a face preset's aligner that finds no face gives a warning (or :class:`NoFaceFoundError` with
``require_face``) instead of a silent fallback.

Library code never prints: warnings for the caller travel in the ``info["warnings"]`` list of :func:`prepare`.
"""

from __future__ import annotations

import io
import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps, PngImagePlugin, UnidentifiedImageError

from dclip_cli.errors import ImageError, NoFaceFoundError, NonFiniteError, OutputError
from dclip_cli.fileio import atomic_path, sha256_file
from dclip_cli.preprocess import LANCZOS, center_crop_box

MIN_IMAGE_SIZE = 32
"""Smallest accepted side, in pixels, of an input image."""

AlignFn = Callable[[Image.Image, int], "Image.Image | None"]

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SAMPLE = Path(__file__).resolve().parent / "data" / "face.png"


# --------------------------------------------------------------------------------------------------- loading


#: file extensions picked up when a directory is given as input
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def expand_inputs(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *, hint: str = "Check the path."
) -> list[Path]:
    """Expand directories into the image files directly inside them (sorted, not recursive); files are kept as
    given, duplicates dropped. This is how every command reads its image arguments (and ``--images``).

    Raises:
        ImageError: a path does not exist (``hint`` says what to pass), or a directory holds no images.
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    result: list[Path] = []
    for raw in items:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ImageError(
                    f"The directory {path} contains no images.",
                    hint=f"Supported extensions: {', '.join(IMAGE_SUFFIXES)}.",
                )
            result.extend(found)
        elif path.exists():
            result.append(path)
        else:
            raise ImageError(f"The input {path} does not exist.", hint=hint)
    seen: set[Path] = set()
    unique = []
    for p in result:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Read an image file as an RGB PIL image.

    Any format Pillow reads works (PNG, JPEG, WebP, TIFF, BMP, GIF: the first frame). The EXIF orientation is
    applied, and other colour modes are converted with :func:`ensure_rgb` (grayscale, CMYK, palette, 16-bit;
    transparency is composited on white).

    Args:
        path: the image file.

    Returns:
        A fully decoded RGB image of the file's (oriented) size.

    Raises:
        ImageError: the file is missing, a directory, not an image, truncated or corrupt, unreadable, or smaller
            than 32 pixels on a side.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ImageError(f"The image file {p} does not exist.", hint="Check the path and its spelling.")
    if p.is_dir():
        raise ImageError(
            f"{p} is a directory, not an image file.",
            hint="Pass the path of an image file (PNG, JPEG, WebP, ...), or the images inside the folder.",
        )
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; dclip refuses the same way above both
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(p)
    except UnidentifiedImageError:
        raise ImageError(
            f"{p} is not an image file that Pillow can read.",
            hint="Pass a PNG, JPEG, WebP or other common image file.",
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_large(p, exc) from None
    except OSError as exc:
        raise ImageError(
            f"The image file {p} cannot be read: {exc.strerror or exc}.",
            hint="Check that the file exists and that you have permission to read it.",
        ) from exc
    with im:
        try:
            im.load()
        except Image.DecompressionBombError as exc:
            raise _too_large(p, exc) from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(
                f"The image file {p} is truncated or corrupt ({exc}).",
                hint="Re-download or re-export the image, then try again.",
            ) from None
        try:
            oriented = ImageOps.exif_transpose(im)
        except Exception:  # malformed EXIF: keep the stored orientation rather than fail
            oriented = im.copy()
    rgb = ensure_rgb(oriented, name=str(p))
    width, height = rgb.size
    if min(width, height) < MIN_IMAGE_SIZE:
        raise ImageError(
            f"The image {p} is only {width}x{height} pixels; dclip needs at least {MIN_IMAGE_SIZE} pixels on "
            "each side.",
            hint="Use a larger image; the built-in models work at 256x256.",
        )
    return rgb


def _too_large(p: Path, exc: Exception) -> ImageError:
    # Pillow says "Image size (N pixels) exceeds limit of M pixels ..."
    counts = [int(n) for n in re.findall(r"(\d+) pixels", str(exc))]
    limit = Image.MAX_IMAGE_PIXELS or (counts[1] if len(counts) > 1 else None)
    what = (
        f"has {counts[0] / 1e6:.0f} megapixels, more than the {limit / 1e6:.0f} megapixels dclip opens safely"
        if counts and limit
        else "is too large to open safely"
    )
    return ImageError(
        f"The image {p} {what}.",
        hint="Downscale the image (a few megapixels are plenty; the models work at 256x256) and try again.",
    )


def ensure_rgb(img: Image.Image, *, name: str = "the image") -> Image.Image:
    """Return ``img`` as an 8-bit RGB image.

    Transparency (alpha channels, transparent palette entries, ``tRNS`` colours) is composited on white; CMYK
    uses the embedded ICC profile when there is one; 16-bit and 32-bit grayscale are scaled to 8 bits; float
    images are taken as [0, 1] when their maximum is at most 1.

    Raises:
        ImageError: Pillow cannot convert the colour mode.
    """
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in _ALPHA_MODES or (mode in ("P", "L", "1", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "CMYK":
        return _cmyk_to_rgb(img)
    if mode.startswith("I") or mode == "F":
        return _scale_to_8bit(img).convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageError(
            f"{name} uses the colour mode {mode!r}, which dclip cannot convert to RGB ({exc}).",
            hint="Convert the image to an RGB PNG or JPEG first.",
        ) from None


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    icc = img.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            out = ImageCms.profileToProfile(img, src, dst, outputMode="RGB")
            if out is not None:
                return out
        except Exception:  # no littlecms, or a broken profile: fall back to Pillow's plain formula
            pass
    return img.convert("RGB")


def _scale_to_8bit(img: Image.Image) -> Image.Image:
    arr = np.asarray(img).astype(np.float64)
    if img.mode == "F":
        if np.nanmax(arr, initial=0.0) <= 1.0:
            arr = arr * 255.0
    elif img.mode.startswith("I;16") or np.nanmax(arr, initial=0.0) > 255:
        arr = arr / 257.0
    arr = np.nan_to_num(arr, nan=0.0)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


# --------------------------------------------------------------------------------------------------- preparing


def prepare(
    img: Image.Image,
    size: int,
    *,
    aligner: Any = None,
    require_face: bool = False,
    source: str | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Turn a PIL image into a model input: aligned or centre-cropped, resized, scaled to [-1, 1].

    Without an aligner the largest centred square is cropped (aspect ratio kept) and Lanczos-resized to
    ``size``. With an aligner (a callable ``align(img, size) -> PIL.Image | None``, or an
    :class:`~dclip_cli.presets.preset.Aligner` record) its result is used; when it returns ``None`` (no face)
    or fails, a warning is added to ``info["warnings"]`` and the centre crop is used, unless ``require_face``.

    Args:
        img: the image (any mode; converted to RGB).
        size: the model resolution S.
        aligner: optional aligner callable or ``Aligner`` record.
        require_face: raise instead of falling back when the aligner finds nothing.
        source: how to name the image in messages (a path), default "the image".

    Returns:
        ``(x0, info)``: ``x0`` of shape (1, 3, S, S), float32 in [-1, 1]; ``info`` with keys ``source_size``
        ([w, h]), ``size``, ``method`` ("center_crop" or "align"), ``aligner`` (name or None), ``crop_box``
        ([l, t, r, b] for centre crops, else None), ``upscaled`` (bool) and ``warnings`` (list of sentences).

    Raises:
        NoFaceFoundError: ``require_face`` is set and the aligner found no face.
        ImageError: ``size`` is not a positive integer or the image is empty.
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ImageError(f"The model image size must be a positive integer, not {size!r}.")
    name = source or "the image"
    rgb = ensure_rgb(img, name=name)
    width, height = rgb.size
    if width < 1 or height < 1:
        raise ImageError(f"{name} is empty ({width}x{height} pixels).", hint="Pass a non-empty image.")
    info: dict[str, Any] = {
        "source_size": [width, height],
        "size": size,
        "method": "center_crop",
        "aligner": None,
        "crop_box": None,
        "upscaled": False,
        "warnings": [],
    }
    out: Image.Image | None = None
    if aligner is not None:
        align_fn: AlignFn = getattr(aligner, "align", aligner)
        info["aligner"] = getattr(aligner, "name", None) or getattr(align_fn, "__name__", "aligner")
        problem: str
        try:
            out = align_fn(rgb, size)
        except NoFaceFoundError:
            raise
        except Exception as exc:
            out = None
            problem = f"Face alignment failed on {name} ({type(exc).__name__}: {exc})"
            if require_face:
                raise NoFaceFoundError(
                    problem + ".", hint="Pass another photo, or drop --require-face to use a centre crop."
                ) from exc
        else:
            problem = f"No face was found in {name}"
            if out is None and require_face:
                raise NoFaceFoundError(
                    problem + ".",
                    hint="Pass a photo with a clearly visible, roughly frontal face, or drop --require-face "
                    "to use a centre crop.",
                )
        if out is None:
            info["warnings"].append(f"{problem}; using a centre crop instead.")
        else:
            out = ensure_rgb(out, name=name)
            if out.size != (size, size):
                out = out.crop(center_crop_box(*out.size)).resize((size, size), LANCZOS)
            info["method"] = "align"
    if out is None:
        box = center_crop_box(width, height)
        info["crop_box"] = list(box)
        side = box[2] - box[0]
        if side < size:
            info["upscaled"] = True
            info["warnings"].append(
                f"{name} is {width}x{height} pixels, smaller than the model size {size}; it was upscaled, "
                "so the result may look soft."
            )
        out = rgb.crop(box) if (side, side) != (width, height) else rgb
        if out.size != (size, size):
            out = out.resize((size, size), LANCZOS)
    return to_tensor(out), info


def load_and_prepare(
    path: str | os.PathLike[str],
    size: int,
    *,
    aligner: Any = None,
    require_face: bool = False,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """:func:`load_image` then :func:`prepare`; ``info`` also holds ``path`` and ``image_sha256`` (of the file).

    Returns:
        ``(x0, info)`` with ``x0`` of shape (1, 3, S, S), float32 in [-1, 1].
    """
    img = load_image(path)
    x0, info = prepare(img, size, aligner=aligner, require_face=require_face, source=str(path))
    info["path"] = str(path)
    info["image_sha256"] = sha256_file(path)
    return x0, info


# --------------------------------------------------------------------------------------------------- tensors


def to_tensor(img: Image.Image | Sequence[Image.Image]) -> torch.Tensor:
    """Convert one RGB image, or a list of equally sized ones, to a float32 batch in [-1, 1].

    The arithmetic is the original's: ``uint8 / 255`` in float64, cast to float32, then ``(v - 0.5) * 2``.

    Returns:
        A tensor of shape (B, 3, H, W) (B = 1 for a single image) on the CPU.
    """
    images = [img] if isinstance(img, Image.Image) else list(img)
    if not images:
        raise ImageError("to_tensor needs at least one image.")
    sizes = {im.size for im in images}
    if len(sizes) > 1:
        raise ImageError(
            f"to_tensor needs images of one size, got {sorted(sizes)}.",
            hint="Resize them with prepare() first.",
        )
    arrays = [np.asarray(ensure_rgb(im), dtype=np.uint8) for im in images]
    batch = np.stack(arrays).astype(np.float64) / 255.0
    x = torch.from_numpy(batch).to(torch.float32).permute(0, 3, 1, 2).contiguous()
    return (x - 0.5) * 2.0


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8, as torchvision's save_image rounds."""
    if not isinstance(x, torch.Tensor):
        raise ImageError(f"Expected an image tensor, got {type(x).__name__}.")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] != 3:
        raise ImageError(
            f"Expected an image tensor of shape (B, 3, H, W) or (3, H, W), got {tuple(x.shape)}.",
            hint="dclip images have three channels in [-1, 1].",
        )
    x = x.detach().to("cpu", torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteError(
            f"The image to write holds {_count_bad(x)} NaN or infinite values, so it was not written.",
            hint="The model or its settings produced invalid numbers: check the model ('dclip models verify'), "
            "or try --precision fp32.",
        )
    v = ((x + 1.0) * 0.5).clamp(0.0, 1.0).mul(255.0).add(0.5).clamp(0.0, 255.0)
    return v.to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _count_bad(x: torch.Tensor) -> str:
    bad = int((~torch.isfinite(x)).sum())
    return f"{bad} of {x.numel()}" if bad < x.numel() else "only"


def to_pils(x: torch.Tensor) -> list[Image.Image]:
    """Convert a batch (B, 3, H, W) (or one image (3, H, W)) in [-1, 1] to B RGB images."""
    return [Image.fromarray(a, mode="RGB") for a in _to_uint8(x).numpy()]


def to_pil(x: torch.Tensor) -> Image.Image:
    """Convert one image in [-1, 1], shape (3, H, W) or (1, 3, H, W), to an RGB PIL image.

    Pixels are ``round((x + 1) / 2 * 255)`` after clamping to [0, 1].

    Raises:
        ImageError: ``x`` holds several images (use :func:`to_pils`) or has the wrong shape.
        NonFiniteError: ``x`` holds NaN or infinite values (no image is made from them).
    """
    if isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[0] != 1:
        raise ImageError(
            f"to_pil takes one image but got a batch of {x.shape[0]}.", hint="Use to_pils() for batches."
        )
    return to_pils(x)[0]


# --------------------------------------------------------------------------------------------------- saving


def save_image(
    x: torch.Tensor | Image.Image,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write an image atomically (temporary file, then rename) and return its path.

    Args:
        x: a PIL image, or a tensor (3, H, W) / (B, 3, H, W) in [-1, 1]; a batch of B > 1 is tiled into a grid
            (up to 8 per row), as the original saved batches.
        path: destination; the format follows the suffix (``.png`` recommended; ``.jpg``/``.webp`` also work).
        overwrite: replace an existing file.
        metadata: optional text entries stored in a PNG (``tEXt`` chunks).

    Raises:
        OutputExistsError: the file exists and ``overwrite`` is false.
        OutputError: the directory is not writable or the suffix names no image format.
    """
    dest = Path(path)
    fmt = Image.registered_extensions().get(dest.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise OutputError(
            f"dclip cannot tell which image format to write from the name {dest}.",
            hint="End the output file name with .png.",
        )
    if isinstance(x, Image.Image):
        img = ensure_rgb(x)
    else:
        pils = to_pils(x)
        img = pils[0] if len(pils) == 1 else image_grid(pils)
    kwargs: dict[str, Any] = {}
    if fmt == "PNG" and metadata:
        png_info = PngImagePlugin.PngInfo()
        for key, value in metadata.items():
            png_info.add_text(str(key), str(value))
        kwargs["pnginfo"] = png_info
    elif fmt in ("JPEG", "WEBP"):
        kwargs["quality"] = 95
    with atomic_path(dest, overwrite=overwrite) as tmp:
        img.save(tmp, format=fmt, **kwargs)
    return dest


def image_sha256(path: str | os.PathLike[str]) -> str:
    """Return the hex SHA-256 of an image file's bytes.

    Raises:
        ImageError: the file does not exist or is a directory.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"The image file {p} does not exist.", hint="Check the path and its spelling.")
    return sha256_file(p)


def sample_image_path() -> Path:
    """Return the path of the sample face shipped with dclip (256x256 PNG, NASA photo, public domain)."""
    if not _SAMPLE.is_file():
        raise ImageError(
            f"The sample image {_SAMPLE} is missing from this installation.",
            hint="Reinstall dclip (pip install --force-reinstall dclip).",
        )
    return _SAMPLE


# --------------------------------------------------------------------------------------------------- grids


def _load_font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=px)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font only
        return ImageFont.load_default()


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: Any, width: float) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..." if text else ""


def image_grid(
    images: Sequence[torch.Tensor | Image.Image],
    labels: Sequence[str] | None = None,
    *,
    cols: int | None = None,
    padding: int = 4,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Arrange images in a grid with an optional caption under each one.

    Used for side-by-side comparisons (``--compare``: input, reconstruction, edit) and contact sheets
    (``--sweep``). Captions use Pillow's built-in font, are centred and are cut with "..." when too wide; a
    caption may hold several lines separated by ``\\n``.

    Args:
        images: PIL images and/or tensors in [-1, 1] ((3, H, W) or (B, 3, H, W); a batch adds B panels). Every
            panel takes the size of the first; others are scaled to fit and centred.
        labels: one caption per panel, or None.
        cols: panels per row; default all in one row up to 8 panels, else ``ceil(sqrt(n))``.
        padding: pixels between and around panels.
        background: RGB colour of the padding and caption strip.

    Returns:
        An RGB image.

    Raises:
        ImageError: no images, or the number of labels differs from the number of panels.
    """
    panels: list[Image.Image] = []
    for item in images:
        if isinstance(item, Image.Image):
            panels.append(ensure_rgb(item))
        else:
            panels.extend(to_pils(item))
    n = len(panels)
    if n == 0:
        raise ImageError("image_grid needs at least one image.")
    if labels is not None and len(labels) != n:
        raise ImageError(
            f"image_grid got {n} images but {len(labels)} labels.", hint="Pass one label per image, or none."
        )
    if cols is None:
        cols = n if n <= 8 else math.ceil(math.sqrt(n))
    cols = max(1, min(int(cols), n))
    rows = math.ceil(n / cols)
    w, h = panels[0].size
    padding = max(0, int(padding))

    font: Any = None
    line_h = 0
    n_lines = 0
    if labels is not None:
        font = _load_font(max(10, round(w / 16)))
        bbox = font.getbbox("Ag|")
        line_h = int(bbox[3] - min(bbox[1], 0)) + 2
        n_lines = max(1, max(len(str(label).split("\n")) for label in labels))
    label_h = n_lines * line_h + (4 if labels is not None else 0)

    sheet_w = cols * w + (cols + 1) * padding
    sheet_h = rows * (h + label_h) + (rows + 1) * padding
    sheet = Image.new("RGB", (sheet_w, sheet_h), background)
    draw = ImageDraw.Draw(sheet)
    text_colour = (0, 0, 0) if sum(background) > 382 else (255, 255, 255)
    for i, panel in enumerate(panels):
        r, c = divmod(i, cols)
        x = padding + c * (w + padding)
        y = padding + r * (h + label_h + padding)
        if panel.size != (w, h):
            fitted = ImageOps.contain(panel, (w, h), LANCZOS)
            sheet.paste(fitted, (x + (w - fitted.width) // 2, y + (h - fitted.height) // 2))
        else:
            sheet.paste(panel, (x, y))
        if labels is not None:
            for j, line in enumerate(str(labels[i]).split("\n")):
                text = _fit_text(draw, line, font, w - 4)
                tw = draw.textlength(text, font=font)
                draw.text((x + (w - tw) / 2, y + h + 2 + j * line_h), text, fill=text_colour, font=font)
    return sheet
