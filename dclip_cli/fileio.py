"""Small file helpers shared by every writer: atomic writes, content hashes and disk-full detection.

Every file dclip writes goes through :func:`atomic_path`, so an interrupted run never leaves a half-written
output, cache entry or checkpoint in place, every file gets the permissions a plain ``open()`` would give it under
the process umask, and a full disk is reported as such (naming the file) whichever library did the writing.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from dclip_cli.errors import DclipError, DiskFullError, OutputError, OutputExistsError

_CHUNK = 1 << 20

#: errno values that mean "no room left": the disk is full, or the user's quota is used up
_FULL_ERRNOS = frozenset(code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code is not None)
#: how the writers dclip uses say it when they do not raise an OSError (safetensors' Rust writer says "os error
#: 28"; torch's zip writer only says that a write failed, so for it the free space decides)
_FULL_TEXTS = (
    "no space left on device",
    "disk quota exceeded",
    "os error 28",
    "storagefull",
    "quota exceeded",
)
_WRITE_FAILURE_TEXTS = ("file write failed", "unexpected pos", "iostream error", "pytorchstreamwriter")
#: below this much free space, an unexplained write failure is taken to be a full disk
_NEARLY_FULL = 1 << 20


def process_umask() -> int:
    """The process umask, read without changing it where the platform allows (``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # pragma: no cover - platforms without /proc
    os.umask(mask)  # pragma: no cover
    return mask  # pragma: no cover


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666`` less the umask (``0o644`` under umask 022)."""
    return 0o666 & ~process_umask()


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Free bytes on the filesystem holding ``path`` (or its nearest existing parent); ``None`` when unknown."""
    p = Path(path)
    for candidate in (p, *p.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def format_bytes(n: int | float | None) -> str:
    """``351.0 MB``-style text (powers of 1000, as download sizes are usually given); ``size unknown`` for
    ``None``."""
    if n is None:
        return "size unknown"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"  # pragma: no cover - the loop returns at TB


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says that the disk or the quota is full."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True
        if any(text in str(e).lower() for text in _FULL_TEXTS):
            return True
    return False


def disk_full_error(
    exc: BaseException,
    dest: Path,
    *,
    written: int | None = None,
    needed: int | None = None,
    free_at_failure: int | None = None,
) -> DiskFullError | None:
    """A :class:`DiskFullError` naming ``dest`` when ``exc`` is a write failure caused by a full disk, else ``None``.

    A writer that does not say why it failed (torch's zip writer only says "file write failed") counts as "disk
    full" when less than 1 MiB was left on ``dest``'s filesystem at the time (``free_at_failure``, measured before
    the partial file was removed; default: now).

    Args:
        exc: what the writer raised.
        dest: the file that was being written (named in the message).
        written: bytes written before the failure, when known.
        needed: bytes the whole file needs, when known.
        free_at_failure: free bytes when the write failed.
    """
    if isinstance(exc, DclipError) or not isinstance(exc, Exception):
        return None
    if not is_disk_full(exc):
        if free_at_failure is None:
            free_at_failure = free_bytes(dest.parent)
        texts = " ".join(str(e).lower() for e in _chain(exc))
        write_failure = isinstance(exc, OSError) or any(t in texts for t in _WRITE_FAILURE_TEXTS)
        nearly_full = free_at_failure is not None and free_at_failure < _NEARLY_FULL
        if not (write_failure and nearly_full):
            return None
    free = free_bytes(dest.parent)
    so_far = f" after {format_bytes(written)}" if written else ""
    need = f"; the file needs {format_bytes(needed)}" if needed else ""
    left = f"{format_bytes(free)} free on that disk" if free is not None else "free space unknown"
    return DiskFullError(
        f"Could not write {dest}: the disk is full (the write failed{so_far}; {left}{need}). Nothing was saved.",
        hint="Free some disk space and run the command again, or write elsewhere (-o, DCLIP_DATA for the edit "
        "library, --cache-dir or DCLIP_CACHE for downloads).",
    )


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success it is renamed onto ``dest``.

    The temporary file is ``<dest>.<uuid8>.incomplete`` in the same directory (so the final ``os.replace`` is
    atomic) and is removed if the block raises, including on ``KeyboardInterrupt``. The finished file gets the
    mode a plain ``open()`` would give it (``0o666`` less the umask), whatever the writer used: safetensors, for
    one, creates its files ``0600``.

    Raises:
        OutputExistsError: ``dest`` exists and ``overwrite`` is false (checked before and after writing).
        DiskFullError: the writer failed because the disk (or the quota) is full.
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
        full = disk_full_error(exc, dest)
        if full is not None:
            raise full from exc
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
        try:
            yield tmp
            if not tmp.exists():
                raise OutputError(f"Nothing was written for {dest}.")
            with contextlib.suppress(OSError):  # filesystems without POSIX modes keep theirs
                if not tmp.is_symlink():
                    os.chmod(tmp, default_file_mode())
            if dest.exists() and not overwrite:
                raise OutputExistsError(
                    f"{dest} appeared while dclip was writing it.", hint="Pass --overwrite to replace it."
                )
            os.replace(tmp, dest)
        except Exception as exc:
            written = None
            with contextlib.suppress(OSError):
                written = tmp.stat().st_size
            free_at_failure = free_bytes(dest.parent)
            with contextlib.suppress(OSError):
                tmp.unlink()
            full = disk_full_error(exc, dest, written=written, free_at_failure=free_at_failure)
            if full is not None:
                raise full from exc
            raise
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
