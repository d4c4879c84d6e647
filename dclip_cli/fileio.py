"""Small file helpers shared by every writer: atomic writes and content hashes.

Every file dclip writes goes through :func:`atomic_path`, so an interrupted run never leaves a half-written
output, cache entry or checkpoint in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from dclip_cli.errors import OutputError, OutputExistsError

_CHUNK = 1 << 20


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success it is renamed onto ``dest``.

    The temporary file is ``<dest>.<uuid8>.incomplete`` in the same directory (so the final ``os.replace`` is
    atomic) and is removed if the block raises, including on ``KeyboardInterrupt``.

    Raises:
        OutputExistsError: ``dest`` exists and ``overwrite`` is false (checked before and after writing).
        OutputError: the directory cannot be created or written.
    """
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise OutputExistsError(
            f"{dest} already exists.", hint="Pass --overwrite to replace it, or choose another output path."
        )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"Cannot create the output directory {dest.parent}: {exc.strerror or exc}.",
            hint="Choose a writable output location with -o.",
        ) from exc
    if not os.access(dest.parent, os.W_OK):
        raise OutputError(
            f"The output directory {dest.parent} is not writable.",
            hint="Choose a writable output location with -o.",
        )
    tmp = dest.with_name(f"{dest.name}.{uuid.uuid4().hex[:8]}.incomplete")
    try:
        yield tmp
        if not tmp.exists():
            raise OutputError(f"Nothing was written for {dest}.")
        if dest.exists() and not overwrite:
            raise OutputExistsError(
                f"{dest} appeared while dclip was writing it.", hint="Pass --overwrite to replace it."
            )
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Return the hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
