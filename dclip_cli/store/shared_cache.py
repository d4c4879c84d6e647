"""The checkpoint cache under torchrun: on each node only local rank 0 downloads (issue 14).

The other ranks of the node wait until the file is in the cache: while local rank 0 holds the download lock of
:mod:`dclip_cli.checkpoints.download` they wait on that lock, and they give up only after ``timeout`` seconds in
which the file neither appeared nor was being downloaded. With the cache on a file system all nodes share, the
lock makes that one download in all.

When local rank 0's download fails (an unreachable server, a checksum mismatch), it leaves a note beside the lock
naming the job and the attempt, and the waiting ranks raise the same error at once, so that every rank takes the
same way on (an edit falls back to fine-tuning on every rank, for instance).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import filelock

from dclip_cli.checkpoints import cache
from dclip_cli.checkpoints.registry import CheckpointSpec
from dclip_cli.distributed import Context
from dclip_cli.errors import CheckpointError, CheckpointNotCachedError

#: fetches of each checkpoint by this process: the ranks run the same code, so the n-th fetch of a name is the same
#: fetch on every rank
_attempts: dict[str, int] = {}


def shared_fetch(
    spec: CheckpointSpec,
    ctx: Context,
    download: Callable[[], Path],
    cache_dir: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Path:
    """``download()`` on local rank 0; on the other ranks, wait for its file (or its failure), then ``download()``
    (which finds the file in the cache)."""
    env = os.environ if environ is None else environ
    _attempts[spec.name] = _attempts.get(spec.name, 0) + 1
    run = env.get("TORCHELASTIC_RUN_ID", "") + env.get("MASTER_PORT", "")
    tag = f"{run}:{env.get('TORCHELASTIC_RESTART_COUNT', '0')}:{_attempts[spec.name]}"
    note = failure_note(spec, cache_dir)
    if not ctx.is_local_main:
        wait_for_download(spec, cache_dir, timeout=ctx.timeout, rank=ctx.rank, tag=tag)
        return download()
    try:
        return download()
    except CheckpointError as exc:
        with contextlib.suppress(OSError):
            note.parent.mkdir(parents=True, exist_ok=True)
            tmp = note.with_name(f"{note.name}.{os.getpid()}")
            tmp.write_text(json.dumps({"tag": tag, "message": exc.message, "hint": exc.hint}))
            os.replace(tmp, note)
        raise


def failure_note(spec: CheckpointSpec, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where local rank 0 notes a failed download of ``spec`` for the ranks waiting for it."""
    lock = cache.lock_path(spec, cache_dir)
    return lock.with_name(f"{lock.name}.failed")


def wait_for_download(
    spec: CheckpointSpec,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    timeout: float,
    rank: int,
    tag: str = "",
    poll: float = 0.5,
) -> Path:
    """Wait until ``spec``'s file is in the cache (put there by another process, local rank 0) and return it.

    Raises:
        CheckpointError: local rank 0 noted that this attempt (``tag``) failed; its message.
        CheckpointNotCachedError: for ``timeout`` seconds the file was neither there nor being downloaded.
    """
    dest = cache.checkpoint_path(spec, cache_dir)
    lock_file = cache.lock_path(spec, cache_dir)
    note = failure_note(spec, cache_dir)
    quiet_since = time.monotonic()
    while not dest.is_file():
        _raise_noted_failure(note, tag, spec)
        if _download_under_way(lock_file, poll):
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > timeout:
            raise CheckpointNotCachedError(
                f"Rank {rank} waited {timeout:g} s for local rank 0 to put the checkpoint {spec.name!r} into the "
                f"cache at {dest.parent}, but it did not arrive.",
                hint=f"Give every rank of a node the same cache (--cache-dir or DCLIP_CACHE), or run "
                f"'dclip models fetch {spec.name}' on each node first.",
            )
        else:
            time.sleep(poll)
    return dest


def _raise_noted_failure(note: Path, tag: str, spec: CheckpointSpec) -> None:
    if not tag or not note.is_file():
        return
    try:
        doc = json.loads(note.read_text())
    except (OSError, ValueError):
        return
    if doc.get("tag") == tag:
        raise CheckpointError(
            f"Local rank 0 could not fetch the checkpoint {spec.name!r}: {doc.get('message')}",
            hint=doc.get("hint"),
        )


def _download_under_way(lock_file: Path, wait: float) -> bool:
    """Whether another process holds the download lock (waiting up to ``wait`` seconds for it)."""
    if not lock_file.is_file():
        return False
    lock = filelock.FileLock(str(lock_file))
    try:
        lock.acquire(timeout=wait)
    except filelock.Timeout:
        return True
    except (OSError, NotImplementedError):  # no flock here: the downloader uses a soft lock file instead
        return Path(f"{lock_file}.soft").exists()
    lock.release()
    return False
