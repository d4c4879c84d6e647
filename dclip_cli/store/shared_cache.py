"""The checkpoint cache under torchrun: on each node only local rank 0 downloads (issue 14).

The other ranks of the node wait until the file is in the cache: while local rank 0 holds the download lock of
:mod:`dclip_cli.checkpoints.download` they wait on that lock, and they give up only after ``timeout`` seconds in
which the file neither appeared nor was being downloaded. With the cache on a file system all nodes share, the
lock makes that one download in all.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import filelock

from dclip_cli.checkpoints import cache
from dclip_cli.checkpoints.registry import CheckpointSpec
from dclip_cli.errors import CheckpointNotCachedError


def wait_for_download(
    spec: CheckpointSpec,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    timeout: float,
    rank: int,
    poll: float = 0.5,
) -> Path:
    """Wait until ``spec``'s file is in the cache (put there by another process, local rank 0) and return it.

    Raises:
        CheckpointNotCachedError: for ``timeout`` seconds the file was neither there nor being downloaded.
    """
    dest = cache.checkpoint_path(spec, cache_dir)
    lock_file = cache.lock_path(spec, cache_dir)
    quiet_since = time.monotonic()
    while not dest.is_file():
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
