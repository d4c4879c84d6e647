"""Pure PIL geometry used before an image enters a model: centre crop to a square and Lanczos resize.

dclip keeps the aspect ratio of non-square inputs by cropping the centred square (reference section 21.2, item 13);
the original DiffusionCLIP squashed the whole image to S x S. Face alignment, when a preset asks for it, lives in the
preset's aligner (``dclip_face.align``) and replaces these steps.
"""

from __future__ import annotations

from PIL import Image

LANCZOS = Image.Resampling.LANCZOS


def center_crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """Return the ``(left, top, right, bottom)`` box of the largest centred square in a ``width x height`` image.

    When the difference of the sides is odd, the extra pixel is left on the right (or bottom) side.
    """
    side = min(width, height)
    left = (width - side) // 2
    top = (height - side) // 2
    return left, top, left + side, top + side


def center_crop(img: Image.Image) -> Image.Image:
    """Crop the largest centred square out of ``img`` (a copy; a square image is returned unchanged)."""
    box = center_crop_box(*img.size)
    if box == (0, 0, *img.size):
        return img
    return img.crop(box)


def resize_square(img: Image.Image, size: int) -> Image.Image:
    """Resize a square image to ``size x size`` with Lanczos filtering (no-op when it already has that size)."""
    if img.size == (size, size):
        return img
    return img.resize((size, size), LANCZOS)


def center_crop_resize(img: Image.Image, size: int) -> Image.Image:
    """Centre-crop ``img`` to a square (aspect ratio kept) and Lanczos-resize it to ``size x size``."""
    return resize_square(center_crop(img), size)
