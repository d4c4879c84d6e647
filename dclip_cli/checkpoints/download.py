"""Verified, resumable downloads into the checkpoint cache.

:func:`fetch` returns the cached path of a registry checkpoint, downloading it first when needed:

1. a cached file is returned at once (verified and recorded first if it was placed there by hand);
2. ``DCLIP_OFFLINE=1`` (or ``offline=True``) stops here with :class:`CheckpointNotCachedError`;
3. a lock per file (filelock) makes concurrent processes wait for one download instead of racing;
4. sources are tried in order: ``DCLIP_MIRROR`` (``URL/<file name>`` or a local folder), then the spec's mirrors;
5. each source streams into ``<file>.<uuid8>.incomplete`` in the cache folder, with its source URL recorded in
   ``<file>.<uuid8>.incomplete.meta.json``. A partial file left by an interrupted or killed download of the same
   source is taken over (under the lock nobody else writes it) and resumed; partials of unknown origin are removed.
   Every byte received is kept: a dropped connection resumes with an HTTP ``Range`` request at the last byte
   written (``If-Range`` guards against a changed file), and a server that answers ``200`` to it is restarted from
   zero; connection errors and 5xx are retried with exponential back-off, the retry budget starting afresh
   whenever an attempt brought new bytes; 401/403/404/410 move on to the next source at once;
6. the size and SHA-256 (MD5 where that is all that is published) are checked; a mismatch deletes the file;
7. the verified file is renamed into place with ``os.replace`` and its SHA-256 recorded beside it. A source that
   failed after sending bytes, Ctrl-C or SIGTERM keep the partial file for the next attempt (``dclip models
   list`` shows it, ``dclip models rm NAME`` removes it); nothing else is left behind.

Progress goes out as ``download`` events of :mod:`dclip_cli.progress` (``done``/``total`` bytes, labelled with the
checkpoint name), and ``info`` events say what is downloaded from where and why a retry waits; this module never
prints. It works on a :class:`CheckpointSpec`; looking a name up (core and plugin registrations) is the job of
:func:`dclip_cli.store.fetch`.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import filelock
import requests
import urllib3

from dclip_cli.checkpoints import cache
from dclip_cli.checkpoints import http as _http
from dclip_cli.checkpoints.registry import CheckpointSpec, Mirror
from dclip_cli.errors import (
    CheckpointError,
    CheckpointNotCachedError,
    ChecksumMismatchError,
    DownloadError,
)
from dclip_cli.fileio import default_file_mode, disk_full_error, format_bytes, free_bytes
from dclip_cli.progress import ProgressCallback, Reporter

ByteProgress = Callable[[int, "int | None"], None]

_TRUE = {"1", "true", "yes", "on"}
_GIVE_UP_STATUS = {401, 403, 404, 410}


@dataclass
class DownloadSettings:
    """Network behaviour of :func:`fetch` (tests shrink the back-off through :data:`SETTINGS`).

    Args:
        connect_timeout: seconds to wait for a connection.
        read_timeout: seconds to wait for the next bytes of a response.
        retries: extra attempts per source after a connection error, a short read or an HTTP 429/5xx.
        backoff: pause in seconds before the first retry, doubled each time, capped at ``backoff_max``.
        backoff_max: longest pause between retries.
        chunk_size: most bytes read at once (also the progress granularity); a read returns what has arrived, so
            no byte received before a connection drops is lost.
        lock_timeout: seconds to wait for another process's download of the same file (``None``: forever).
    """

    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retries: int = 4
    backoff: float = 1.0
    backoff_max: float = 30.0
    chunk_size: int = 1 << 20
    lock_timeout: float | None = None
    user_agent: str = field(default_factory=lambda: f"dclip/{_version()}")


def _version() -> str:
    try:
        from dclip_cli._version import __version__

        return str(__version__)
    except Exception:  # pragma: no cover - version file always present in the package
        return "0"


#: The settings :func:`fetch` uses when none are passed.
SETTINGS = DownloadSettings()


def is_offline() -> bool:
    """Whether ``DCLIP_OFFLINE`` forbids network access."""
    return os.environ.get("DCLIP_OFFLINE", "").strip().lower() in _TRUE


@dataclass(frozen=True)
class Source:
    """One place to get a file from, with the checks that apply to its bytes.

    Args:
        label: what error messages call it (the URL or the folder).
        url: http(s) URL, or ``None`` for a local folder mirror.
        local: local file to copy (``DCLIP_MIRROR`` pointing at a folder), else ``None``.
        format: format of the bytes this source serves.
        sha256: pinned SHA-256, if any.
        md5: pinned MD5, if any.
        size: expected size, if known.
    """

    label: str
    url: str | None
    local: Path | None
    format: str
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None


def mirror_env() -> str:
    """The ``DCLIP_MIRROR`` setting (empty when unset)."""
    return os.environ.get("DCLIP_MIRROR", "").strip()


def sources(spec: CheckpointSpec) -> list[Source]:
    """The sources :func:`fetch` tries for ``spec``, in order (``DCLIP_MIRROR`` first)."""
    out = []
    env = mirror_env()
    if env:
        pins: dict[str, Any] = {
            "format": spec.format,
            "sha256": spec.sha256,
            "md5": spec.md5,
            "size": spec.size,
        }
        if env.startswith(("http://", "https://")):
            url = env.rstrip("/") + "/" + quote(spec.filename)
            out.append(Source(url, url, None, **pins))
        else:
            folder = Path(env[len("file://") :] if env.startswith("file://") else env).expanduser()
            out.append(Source(str(folder / spec.filename), None, folder / spec.filename, **pins))
    for m in spec.mirrors():
        out.append(Source(m.url, m.url, None, m.format or spec.format, m.sha256, m.md5, m.size))
    return out


def fetch(
    spec: CheckpointSpec,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Reporter | ProgressCallback | None = None,
    offline: bool | None = None,
    settings: DownloadSettings | None = None,
) -> Path:
    """Return the cached path of a checkpoint, downloading and verifying it first if needed.

    Args:
        spec: what to fetch.
        cache_dir: cache root; default :func:`dclip_cli.checkpoints.cache.cache_dir`.
        progress: receives ``download`` events labelled with the file name (``done``/``total`` bytes; ``done``
            can go back to 0 when a server forces a restart) and ``info`` lines (what comes from where, retries).
        offline: forbid network access; default from ``DCLIP_OFFLINE``.
        settings: timeouts, retries and back-off; default :data:`SETTINGS`.

    Returns:
        The path of the verified file inside the cache.

    Raises:
        CheckpointNotCachedError: offline and the file is not cached, or the spec has no download URL.
        ChecksumMismatchError: the file arrived with the wrong size or hash (and was deleted), or a cached file
            no longer matches its pinned hash.
        DownloadError: every source failed; the message lists each failure.
        DiskFullError: the disk filled up while the file was written.
    """
    if not isinstance(spec, CheckpointSpec):
        raise TypeError("download.fetch takes a CheckpointSpec; use dclip_cli.store.fetch(name) for a name")
    reporter = Reporter.of(progress)
    settings = settings or SETTINGS
    dest = cache.checkpoint_path(spec, cache_dir)
    if dest.is_file():
        return _use_cached(spec, dest)
    if offline is None:
        offline = is_offline()
    if offline:
        raise CheckpointNotCachedError(
            f"The checkpoint {spec.name!r} ({spec.filename}) is not in the cache at {dest.parent}, and "
            "DCLIP_OFFLINE is set, so it cannot be downloaded.",
            hint=f"Run 'dclip models fetch {spec.name}' on a machine with network access (same --cache-dir), "
            f"or copy the file there and run 'dclip models import FILE --as {spec.name}'.",
        )
    todo = sources(spec)
    if not todo:
        raise CheckpointNotCachedError(
            f"The checkpoint {spec.name!r} ({spec.filename}) has no download URL and is not in the cache.",
            hint=manual_hint(spec),
        )
    cache.ensure_cache_dir(cache_dir)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(
            f"Cannot create the cache folder {dest.parent}: {exc.strerror or exc}.",
            hint="Point --cache-dir or DCLIP_CACHE at a writable folder.",
        ) from exc
    with _file_lock(cache.lock_path(spec, cache_dir), settings.lock_timeout, spec):
        if dest.is_file():  # another process finished it while we waited
            return _use_cached(spec, dest)
        return _download(spec, dest, todo, reporter, settings)


def manual_hint(spec: CheckpointSpec) -> str:
    """The hint telling a user how to get ``spec``'s file by hand (CLIP files: or pass ``--clip-model FILE``)."""
    env = mirror_env()
    mirror = (
        f"DCLIP_MIRROR ({env}) did not have it either"
        if env
        else "or set DCLIP_MIRROR to a server or folder that has it"
    )
    clip = (
        " Commands that need CLIP also take a file you already have: --clip-model FILE."
        if spec.format == "openai-clip"
        else ""
    )
    if spec.manual and "dclip models import" in spec.manual:
        return f"{spec.manual.rstrip('.')}; {mirror}.{clip}"
    steps = (spec.manual.rstrip(".") + ". ") if spec.manual else ""
    return (
        f"{steps}Download {spec.filename} by hand and run 'dclip models import {spec.filename} --as {spec.name}'; "
        f"{mirror}.{clip}"
    )


# -- cached files ---------------------------------------------------------------------------------------------


def _use_cached(spec: CheckpointSpec, dest: Path) -> Path:
    """Return ``dest``; a file without a sidecar (put there by hand) is verified and recorded first."""
    meta = cache.read_meta(dest)
    if meta is not None:
        return dest
    size = dest.stat().st_size
    sha256, md5 = hash_file(dest, md5=spec.md5 is not None)
    problem = _mismatch(spec.sha256, spec.md5, spec.size, sha256, md5, size)
    if problem:
        expected, actual = problem
        raise ChecksumMismatchError(
            f"The cached file {dest} does not match the registry entry {spec.name!r}: expected {expected}, "
            f"found {actual}.",
            hint=f"Run 'dclip models rm {spec.name}' and 'dclip models fetch {spec.name}' to download it again.",
        )
    pinned = spec.sha256 is not None or spec.md5 is not None
    meta = cache.FileMeta(
        sha256, size, spec.name, spec.format, "found", None, pinned, md5 if pinned else None
    )
    with contextlib.suppress(OSError):  # a read-only shared cache is still usable
        cache.write_meta(dest, meta)
    return dest


def hash_file(path: Path, *, md5: bool = False) -> tuple[str, str | None]:
    """Return ``(sha256, md5 or None)`` of a file, read once in 1 MiB chunks."""
    h256 = hashlib.sha256()
    h5 = hashlib.md5(usedforsecurity=False) if md5 else None
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h256.update(chunk)
            if h5 is not None:
                h5.update(chunk)
    return h256.hexdigest(), (h5.hexdigest() if h5 is not None else None)


def _mismatch(
    sha256: str | None, md5: str | None, size: int | None, got_sha256: str, got_md5: str | None, got_size: int
) -> tuple[str, str] | None:
    """``(expected, actual)`` descriptions of the first failed check, or ``None`` when all pass."""
    if size is not None and got_size != size:
        return f"{size} bytes", f"{got_size} bytes"
    if sha256 is not None and got_sha256 != sha256:
        return f"sha256 {sha256}", f"sha256 {got_sha256}"
    if md5 is not None and got_md5 is not None and got_md5 != md5:
        return f"md5 {md5}", f"md5 {got_md5}"
    return None


# -- locking --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float | None, spec: CheckpointSpec) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    lock: filelock.BaseFileLock = filelock.FileLock(str(path))
    try:
        lock.acquire(timeout=-1 if timeout is None else timeout)
    except filelock.Timeout as exc:
        raise CheckpointError(
            f"Another process has been downloading {spec.filename} for more than {timeout:g} s.",
            hint=f"Wait for it to finish, or remove the stale lock {path} if no dclip process is running.",
        ) from exc
    except (OSError, NotImplementedError):  # filesystems without flock: fall back to a lock file
        lock = filelock.SoftFileLock(str(path) + ".soft")
        lock.acquire(timeout=-1 if timeout is None else timeout)
    try:
        yield
    finally:
        lock.release()


# -- downloading ----------------------------------------------------------------------------------------------


class _SourceFailed(Exception):
    """One source failed; the message says how (it goes into the final DownloadError)."""


def _new_tmp(dest: Path) -> Path:
    return dest.with_name(f"{dest.name}.{uuid.uuid4().hex[:8]}{cache.INCOMPLETE_SUFFIX}")


def _resumable(dest: Path, todo: list[Source]) -> dict[str, cache.Partial]:
    """The partial downloads of ``dest`` that one of ``todo`` can continue, by URL (the biggest per URL).

    Called under the file's lock, so no other process writes them. Partials of unknown origin, of another source
    and smaller duplicates are removed.
    """
    urls = {s.url for s in todo if s.url}
    keep: dict[str, cache.Partial] = {}
    for path in cache.partial_paths(dest):
        try:
            info = cache.read_partial(path)
        except FileNotFoundError:
            continue
        if info.url not in urls or info.size == 0:
            cache.remove_file(path)
            continue
        assert info.url is not None
        other = keep.get(info.url)
        if other is not None and other.size >= info.size:
            cache.remove_file(path)
            continue
        if other is not None:
            cache.remove_file(other.path)
        keep[info.url] = info
    return keep


def _claim(partial: cache.Partial, tmp: Path) -> None:
    """Take over another (dead) process's partial file under this process's own temporary name."""
    os.replace(partial.path, tmp)
    with contextlib.suppress(FileNotFoundError):
        os.replace(cache.meta_path(partial.path), cache.meta_path(tmp))


def _keep_or_drop(tmp: Path, source: Source) -> None:
    """Keep a partial file that holds bytes of an HTTP source (for the next attempt), else remove it."""
    try:
        held = tmp.stat().st_size
    except FileNotFoundError:
        held = 0
    if held and source.url is not None:
        with contextlib.suppress(OSError):
            os.chmod(tmp, default_file_mode())
        return
    cache.remove_file(tmp)


def _download(
    spec: CheckpointSpec, dest: Path, todo: list[Source], reporter: Reporter, settings: DownloadSettings
) -> Path:
    failures: list[str] = []
    mismatches: list[ChecksumMismatchError] = []
    on_progress = reporter.download(spec.filename)
    resumable = _resumable(dest, todo)
    session = requests.Session()
    session.headers["User-Agent"] = settings.user_agent
    session.headers["Accept-Encoding"] = "identity"  # byte ranges must count the file's own bytes
    try:
        for source in todo:
            tmp = _new_tmp(dest)
            partial = resumable.pop(source.url, None) if source.url else None
            if partial is not None:
                _claim(partial, tmp)
            held = partial.size if partial is not None else 0
            _check_disk_space(dest.parent, source.size, spec, held=held)
            try:
                if source.local is not None:
                    final_url = _copy_local(source, tmp, on_progress)
                else:
                    final_url = _download_source(session, spec, source, tmp, partial, reporter, settings)
            except _SourceFailed as exc:
                failures.append(f"{source.label}: {exc}")
                _keep_or_drop(tmp, source)
                continue
            except OSError as exc:
                full = disk_full_error(exc, dest, written=_size(tmp), needed=source.size)
                _keep_or_drop(tmp, source)
                if full is not None:
                    raise full from exc
                raise
            except BaseException:  # Ctrl-C, SIGTERM (as SystemExit) or a bug: keep the bytes for the next run
                _keep_or_drop(tmp, source)
                raise
            size = tmp.stat().st_size
            sha256, md5 = hash_file(tmp, md5=source.md5 is not None)
            problem = _mismatch(source.sha256, source.md5, source.size, sha256, md5, size)
            if problem:
                cache.remove_file(tmp)
                mismatches.append(_mismatch_error(spec, source, *problem))
                failures.append(f"{source.label}: expected {problem[0]}, got {problem[1]}")
                continue
            with contextlib.suppress(OSError):
                os.chmod(tmp, default_file_mode())
            os.replace(tmp, dest)
            cache.remove_file(tmp)  # its sidecar
            for path in cache.partial_paths(dest):  # what failed sources left: the file is here now
                cache.remove_file(path)
            pinned = source.sha256 is not None or source.md5 is not None
            meta = cache.FileMeta(sha256, size, spec.name, source.format, "download", final_url, pinned, md5)
            cache.write_meta(dest, meta)
            return dest
    finally:
        session.close()
    if len(mismatches) == len(failures) == 1:
        raise mismatches[0]
    what = "source" if len(failures) == 1 else f"{len(failures)} sources"
    error_cls = ChecksumMismatchError if len(mismatches) == len(failures) else DownloadError
    kept = [p for p in cache.partial_paths(dest) if _size(p)]
    keep_note = (
        f" The {format_bytes(sum(_size(p) or 0 for p in kept))} received so far are kept; the next attempt "
        "resumes from there."
        if kept
        else ""
    )
    raise error_cls(
        f"Could not download {spec.filename} ({spec.name}) from any of its {what}:\n"
        + "\n".join(f"  - {line}" for line in failures)
        + keep_note,
        hint="Check the network connection and try again. " + manual_hint(spec),
    )


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _mismatch_error(
    spec: CheckpointSpec, source: Source, expected: str, actual: str
) -> ChecksumMismatchError:
    return ChecksumMismatchError(
        f"The file {spec.filename} downloaded from {source.label} does not match its registry entry "
        f"{spec.name!r}: expected {expected}, got {actual}. The download was deleted for safety.",
        hint="This usually means the download was corrupted or altered on the way (a proxy, a full disk), the "
        "server now serves a different version of the file, or the registry entry is out of date. Run "
        f"'dclip models fetch {spec.name}' to try again, and report it if it keeps failing.",
    )


def _check_disk_space(folder: Path, size: int | None, spec: CheckpointSpec, *, held: int = 0) -> None:
    if size is None:
        return
    free = free_bytes(folder)
    if free is not None and free < size - held:
        raise CheckpointError(
            f"Not enough disk space for {spec.filename}: it needs {format_bytes(size - held)} more and {folder} "
            f"has {format_bytes(free)} free.",
            hint="Free some space or point --cache-dir / DCLIP_CACHE at a larger disk.",
        )


def _copy_local(source: Source, tmp: Path, on_progress: ByteProgress | None) -> str:
    assert source.local is not None
    if not source.local.is_file():
        raise _SourceFailed("no such file")
    total = source.local.stat().st_size
    done = 0
    with open(source.local, "rb") as src, open(tmp, "wb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
            done += len(chunk)
            if on_progress is not None:
                on_progress(done, total)
    return source.local.as_uri()


def _download_source(
    session: requests.Session,
    spec: CheckpointSpec,
    source: Source,
    tmp: Path,
    partial: cache.Partial | None,
    reporter: Reporter,
    settings: DownloadSettings,
) -> str:
    """Stream one source into ``tmp`` (resuming across attempts); return the URL that finally served it."""
    assert source.url is not None
    url = source.url
    valid = partial.validator if partial is not None else None
    total = source.size or (partial.total if partial is not None else None)
    if partial is None:
        tmp.write_bytes(b"")  # each source starts from zero: another source may serve other bytes
    cache.write_partial_meta(tmp, name=spec.name, url=url, total=total, validator=valid)
    held = tmp.stat().st_size
    where = _http.host_of(url)
    size = format_bytes(total)
    other_bytes = {m.url for m in spec.urls if isinstance(m, Mirror)}  # mirrors serving another file
    if total is None and spec.approx_size is not None and source.url not in other_bytes:
        size = f"about {format_bytes(spec.approx_size)}"
    if held:
        reporter.info(f"Resuming {spec.filename} at {format_bytes(held)} of {size} from {where}.")
    else:
        reporter.info(f"Downloading {spec.filename} ({size}) from {where}.")
    attempt = 0
    confirm_hops = 0
    best = held  # most bytes held so far; progress beyond it resets the retry budget
    while True:
        offset = tmp.stat().st_size
        error: str | None = None
        try:
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            if offset and valid:
                headers["If-Range"] = valid
            resp = session.get(
                url,
                headers=headers,
                stream=True,
                timeout=(settings.connect_timeout, settings.read_timeout),
                allow_redirects=True,
            )
        except requests.exceptions.RequestException as exc:
            error = _describe(exc, url, settings)
        else:
            with resp:
                status = resp.status_code
                if status in _GIVE_UP_STATUS:
                    raise _SourceFailed(f"HTTP {status} {resp.reason or ''}".strip())
                if status == 429 or status >= 500:
                    error = f"HTTP {status} {resp.reason or ''}".strip()
                elif status == 416 and offset and _http.unsatisfiable_size(resp) == offset:
                    return url  # every byte had arrived before the last attempt was cut off
                elif status == 416:
                    tmp.write_bytes(b"")
                    error = "the server refused to resume (HTTP 416)"
                elif status not in (200, 206):
                    raise _SourceFailed(f"unexpected HTTP {status} {resp.reason or ''}".strip())
                elif _http.is_html(resp):
                    next_url = _http.confirmation_url(resp)
                    if next_url is None or confirm_hops >= 3:
                        raise _SourceFailed(
                            "the server sent a web page instead of the file (for Google Drive: the daily "
                            "download quota is exceeded or the file is not shared)"
                        )
                    url, confirm_hops = next_url, confirm_hops + 1
                    tmp.write_bytes(b"")
                    continue
                else:
                    now_valid, now_total = _http.validator(resp), total or _http.full_size(resp)
                    if (now_valid, now_total) != (valid, total):
                        valid, total = now_valid, now_total
                        cache.write_partial_meta(
                            tmp, name=spec.name, url=source.url, total=total, validator=valid
                        )
                    error = _stream(
                        resp, tmp, offset, source.size, reporter.download(spec.filename), settings
                    )
                    if error is None:
                        return url
        held = tmp.stat().st_size
        if held > best:
            best, attempt = held, 0
        attempt += 1
        if attempt > settings.retries:
            raise _SourceFailed(f"{error} (gave up after {attempt} attempts)")
        pause = min(settings.backoff * 2 ** (attempt - 1), settings.backoff_max)
        reporter.info(
            f"{spec.filename}: {error}; retrying in {pause:.3g} s (retry {attempt} of {settings.retries}, "
            f"{format_bytes(held)} kept)."
        )
        time.sleep(pause)


def _describe(exc: BaseException, url: str, settings: DownloadSettings) -> str:
    return _http.describe_request_error(
        exc, url, connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout
    )


def _stream(
    resp: requests.Response,
    tmp: Path,
    offset: int,
    size_hint: int | None,
    on_progress: ByteProgress | None,
    settings: DownloadSettings,
) -> str | None:
    """Write a 200/206 response body into ``tmp``; return ``None`` when complete, else what went wrong."""
    total: int | None
    if resp.status_code == 206:
        start, total = _http.content_range(resp.headers.get("Content-Range", ""))
        if start != offset:
            tmp.write_bytes(b"")
            return f"the server resumed at byte {start} instead of {offset}"
        mode = "ab"
    else:
        offset = 0  # a 200 answer to a ranged request: the server ignored Range (or the file changed)
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        mode = "wb"
    if total is None:
        total = size_hint
    done = offset
    if on_progress is not None:
        on_progress(done, total)
    with open(tmp, mode) as out:
        error = _copy_body(resp, out, done, total, on_progress, settings)
    if error is not None:
        return error
    got = tmp.stat().st_size
    if total is not None and got < total:
        return f"the connection closed after {got} of {total} bytes"
    return None


def _copy_body(
    resp: requests.Response,
    out: IO[bytes],
    done: int,
    total: int | None,
    on_progress: ByteProgress | None,
    settings: DownloadSettings,
) -> str | None:
    """Copy the body into ``out`` read by read: ``read1`` returns whatever has arrived, so the bytes before a drop
    are written, not lost with a half-filled chunk (``iter_content`` dropped up to ``chunk_size`` of them)."""
    raw = resp.raw
    read1 = getattr(raw, "read1", None)  # urllib3 >= 2
    while True:
        try:
            if read1 is not None:
                chunk = read1(settings.chunk_size, decode_content=True)
            else:  # pragma: no cover - urllib3 1.x: small reads lose little
                chunk = raw.read(min(settings.chunk_size, 64 * 1024), decode_content=True)
        except (
            requests.exceptions.RequestException,
            urllib3.exceptions.HTTPError,
            http.client.HTTPException,
            ConnectionError,
            TimeoutError,
        ) as exc:
            out.flush()
            return f"the connection was lost after {done} bytes ({_describe(exc, resp.url, settings)})"
        if not chunk:
            return None
        out.write(chunk)
        done += len(chunk)
        if on_progress is not None:
            on_progress(done, total)


__all__ = [
    "DownloadSettings",
    "SETTINGS",
    "Source",
    "fetch",
    "hash_file",
    "is_offline",
    "manual_hint",
    "mirror_env",
    "sources",
]
