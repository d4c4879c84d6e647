"""What the web page accepts and manages on disk: uploads copied into per-session folders (checked for size and
dimensions), and the library of checkpoints and fine-tuned edits (through the model store, with validated names)."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dclip_cli.ui.records import LibraryRow, Settings, UserError, user_errors

# -- uploads ------------------------------------------------------------------------------------------------------

_SESSION_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SUFFIX_RE = re.compile(r"^\.[A-Za-z0-9]{1,12}$")
_counter = itertools.count(1)


def safe_stem(name: str) -> str:
    """A file-name stem made of letters, digits, ``-`` and ``_`` (at most 48 characters)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(name).stem).strip("-_")[:48]
    return stem or "image"


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    resolved = path.resolve()
    for root in roots:
        r = root.resolve()
        if resolved == r or r in resolved.parents:
            return True
    return False


def session_folder(settings: Settings, session_id: str) -> Path:
    """The upload folder of one browser session (created)."""
    if not _SESSION_RE.match(session_id or ""):
        raise UserError("This browser session has no valid id.", "Reload the page.")
    folder = settings.uploads / session_id
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def drop_session(settings: Settings, session_id: str) -> None:
    """Delete a browser session's uploads (the tab was closed)."""
    if _SESSION_RE.match(session_id or ""):
        shutil.rmtree(settings.uploads / session_id, ignore_errors=True)


def stage_uploads(
    settings: Settings,
    session_id: str,
    paths: Sequence[str | os.PathLike[str]],
    *,
    allowed_roots: Sequence[Path],
    what: str = "image",
) -> list[Path]:
    """Copy uploaded files into a new folder of the session, after checking where they are and how big.

    Args:
        paths: the files the page received (its own upload folder, or the sample image).
        allowed_roots: where those files may be (anything else is refused).
        what: ``image`` (size and pixel dimensions checked) or ``checkpoint`` (size checked).

    Raises:
        UserError: no file, too many, a file outside ``allowed_roots``, too large, not an image, too many pixels.
    """
    files = [Path(p) for p in paths if p]
    if not files:
        raise UserError(f"No {what} was given.", f"Upload an {what} first." if what == "image" else None)
    if what == "image" and len(files) > settings.max_images:
        raise UserError(
            f"{len(files)} images were given; the page takes at most {settings.max_images} per job.",
            "Edit a folder of many images with the CLI: dclip edit photos/ --to ... -o edited/.",
        )
    limit_mb = settings.max_upload_mb if what == "image" else settings.max_checkpoint_mb
    folder = session_folder(settings, session_id) / f"{time.strftime('%H%M%S')}-{next(_counter)}"
    folder.mkdir(parents=True)
    staged: list[Path] = []
    used: set[str] = set()
    for src in files:
        if not _inside(src, allowed_roots) or not src.is_file():
            raise UserError(f"{src.name} is not a file uploaded to this page.", "Upload the file again.")
        size = src.stat().st_size
        if size > limit_mb * 1_000_000:
            raise UserError(
                f"{src.name} is {size / 1e6:.1f} MB; the page accepts {what}s up to {limit_mb} MB.",
                "Downscale or compress it, or start 'dclip ui' with a larger --max-upload-mb."
                if what == "image"
                else "Import it with 'dclip models import FILE --as NAME' instead.",
            )
        if what == "image":
            _check_image(src, settings.max_image_side)
        stem = safe_stem(src.name)
        name = stem
        n = 2
        while name in used:
            name = f"{stem}-{n}"
            n += 1
        used.add(name)
        suffix = src.suffix.lower() if _SUFFIX_RE.match(src.suffix) else ""
        dest = folder / f"{name}{suffix}"
        shutil.copyfile(src, dest)
        staged.append(dest)
    return staged


def _check_image(path: Path, max_side: int) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:  # reads the header only
            width, height = im.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise UserError(
            f"{path.name} is not an image file that Pillow can read.", "Upload a PNG, JPEG or WebP image."
        ) from None
    if max(width, height) > max_side:
        raise UserError(
            f"{path.name} is {width}x{height} pixels; the page accepts images up to {max_side} pixels on a side.",
            "Downscale it first (the models work at 256x256), or start 'dclip ui' with a larger --max-image-side.",
        )


# -- the library ------------------------------------------------------------------------------------------------------


def library_rows() -> list[LibraryRow]:
    """The fine-tuned edits of the library, then the cached checkpoints (``dclip models list``)."""
    with user_errors():
        from dclip_cli.artifacts import read_artifact
        from dclip_cli.errors import DclipError
        from dclip_cli.presets.manager import get_registry
        from dclip_cli.store import find_spec, list_edits, list_models

        registry = get_registry()
        texts: dict[str, tuple[str, str]] = {}
        for p in registry.presets.values():
            for named in p.edits.values():
                if named.checkpoint:
                    texts[named.checkpoint] = (named.src, named.trg)
        rows: list[LibraryRow] = []
        for e in list_edits():
            meta: dict[str, Any] = {}
            with contextlib.suppress(DclipError, OSError):
                meta = read_artifact(e.path).metadata
            t0 = meta.get("t0")
            rows.append(
                LibraryRow(
                    name=e.name,
                    kind="edit",
                    size=e.size,
                    src_text=str(meta.get("src_text") or ""),
                    trg_text=str(meta.get("trg_text") or ""),
                    t0=int(t0) if t0 is not None else None,
                    base=str(meta.get("base_checkpoint") or ""),
                    description="fine-tuned edit",
                )
            )
        for m in list_models():
            if not m.cached:
                continue
            spec = find_spec(m.name) if m.registered else None
            src, trg = texts.get(m.name, ("", ""))
            rows.append(
                LibraryRow(
                    name=m.name,
                    kind="checkpoint",
                    size=int(m.size or 0),
                    src_text=src,
                    trg_text=trg,
                    t0=spec.t0 if spec is not None else None,
                    base=(spec.base or "") if spec is not None else "",
                    description=m.description,
                )
            )
        return rows


def delete_entry(name: str) -> list[str]:
    """Delete a library edit or cached checkpoint listed by :func:`library_rows` (``dclip models rm NAME``).

    Returns the names of the removed files.

    Raises:
        UserError: ``name`` is not one of the listed entries.
    """
    with user_errors():
        from dclip_cli.checkpoints import cache
        from dclip_cli.store import remove

        cache.validate_name(name)
        if name not in {r.name for r in library_rows()}:
            raise UserError(
                f"{name!r} is not in the library.", "Refresh the list and choose an entry from it."
            )
        return [p.name for p in remove(name)]


def import_file(path: Path, name: str, *, overwrite: bool = False, remove_source: bool = False) -> Path:
    """Add a checkpoint file to the cache (registered name) or the library (``preset/edit``), after the store's
    format and hash checks (``dclip models import FILE --as NAME``). ``path`` is a staged upload, deleted
    afterwards with ``remove_source``."""
    with user_errors():
        from dclip_cli.checkpoints import cache
        from dclip_cli.store import import_file as _import

        try:
            name = name.strip()
            cache.validate_name(name)
            return _import(path, name, overwrite=overwrite)
        finally:
            if remove_source:
                path.unlink(missing_ok=True)
