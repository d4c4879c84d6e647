"""Fine-tuning beside other processes and failures.

* One fine-tune of an edit at a time: :func:`edit_locks` holds a file lock per ``(preset, edit key)`` (under
  ``<data_dir>/locks``), so a second ``dclip finetune`` or on-the-fly fine-tune of the same edit waits for the first
  instead of training the same thing again; the locks are re-entrant within one process.
* After the wait, :func:`reusable_artifact` tells whether the other process left the artifact this one was going to
  write (same texts, t0 and base): then it is reused rather than trained again (or, with ``--overwrite``, trained
  after it).
* :func:`finish_failed` records in the run folder why a run stopped (``diverged``, ``interrupted`` or ``failed``),
  so ``run.json`` never keeps saying ``training`` after the process is gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dclip_cli.errors import DclipError, OutputExistsError, TrainingDivergedError
from dclip_cli.progress import Reporter

if TYPE_CHECKING:
    import filelock

    from dclip_cli.outputs import ArtifactDest
    from dclip_cli.textedit import TextEdit

LOCKS = "locks"

_locks: dict[str, filelock.BaseFileLock] = {}
_guard = threading.Lock()


def lock_path(preset: str, key: str) -> Path:
    """``<data_dir>/locks/finetune-<preset>-<key>-<hash>.lock``: the lock of fine-tuning edit ``key``."""
    from dclip_cli.checkpoints.cache import data_dir

    digest = hashlib.sha256(f"{preset}/{key}".encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{preset}-{key}")[:60]
    return data_dir() / LOCKS / f"finetune-{safe}-{digest}.lock"


def _lock(path: Path) -> filelock.BaseFileLock:
    """One lock object per path and process, so that nested holders in one process do not wait on each other."""
    import filelock

    with _guard:
        lock = _locks.get(str(path))
        if lock is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = _locks[str(path)] = filelock.FileLock(str(path), thread_local=False)
        return lock


@contextlib.contextmanager
def edit_locks(preset: str, keys: Sequence[str], reporter: Reporter | None = None) -> Iterator[None]:
    """Hold the fine-tuning locks of ``keys`` (edit keys of ``preset``), waiting for another process that holds
    one; the wait is announced once through ``reporter``.

    Under torchrun the main rank takes the locks for the job and the other ranks wait for it at a barrier (a rank
    waiting on a lock its own job holds would hang the job).
    """
    import filelock

    from dclip_cli.distributed import current

    ctx = current()
    if ctx.active and not ctx.is_main:
        ctx.barrier()
        yield
        return
    held: list[filelock.BaseFileLock] = []
    try:
        for key in sorted(set(keys)):  # one order everywhere: no deadlock between two multi-edit runs
            lock = _lock(lock_path(preset, key))
            try:
                try:
                    lock.acquire(timeout=0)
                except filelock.Timeout:
                    if reporter is not None:
                        reporter.info(
                            f"Waiting for another dclip process that is fine-tuning {preset}/{key} "
                            f"(lock {lock.lock_file})."
                        )
                    lock.acquire()
            except (OSError, NotImplementedError) as exc:  # a file system without locks: go on unserialized
                if reporter is not None:
                    reporter.warn(
                        f"Could not lock {lock.lock_file} ({exc}); fine-tuning without waiting for others."
                    )
                continue
            held.append(lock)
        ctx.barrier()  # the other ranks of a torchrun job go on once the locks are held
        yield
    finally:
        for lock in reversed(held):
            lock.release()


def same_edit(path: Path, pair: TextEdit, *, base_sha256: str | None, t0: int) -> bool:
    """Whether ``path`` is a dclip artifact of ``pair``'s texts, fine-tuned at ``t0`` from the base ``base_sha256``
    (any base when ``None``: not known yet)."""
    from dclip_cli.artifacts import read_artifact

    try:
        info = read_artifact(path)
    except DclipError:
        return False
    return (
        info.src_text == pair.src
        and info.trg_text == pair.trg
        and info.t0 == t0
        and (base_sha256 is None or info.base_sha256 in (None, base_sha256))
    )


def reusable_artifact(
    dests: Sequence[ArtifactDest], pair: TextEdit, *, base_sha256: str | None, t0: int, overwrite: bool
) -> list[Path] | None:
    """The artifacts another process wrote while this one waited for the lock, when they are this edit's; ``None``
    when there is nothing to reuse (nothing there, or ``overwrite``).

    Raises:
        OutputExistsError: a destination appeared meanwhile holding something else (and ``overwrite`` is false).
    """
    existing = [d.path for d in dests if d.path.exists()]
    if overwrite or not existing:
        return None
    if len(existing) == len(dests) and all(
        same_edit(p, pair, base_sha256=base_sha256, t0=t0) for p in existing
    ):
        return existing
    raise OutputExistsError(
        f"{existing[0]} was written by another process while this one waited to fine-tune {pair.key!r}.",
        hint="Pass --overwrite to replace it, or choose another output with -o.",
    )


def finish_failed(doc: dict[str, Any], exc: BaseException, folder: Path) -> None:
    """Record in a run document why the run stopped, and, for a divergence, say in the error what is kept."""
    if isinstance(exc, KeyboardInterrupt):
        doc.update(status="interrupted")
    elif isinstance(exc, TrainingDivergedError):
        done = int(doc.get("epochs_done") or 0)
        doc.update(status="diverged", error=exc.message)
        kept = (
            f"the state after epoch {done} is kept in {folder}: fix the settings and continue with --resume"
            if done
            else f"no epoch had finished (run folder {folder})"
        )
        exc.hint = f"Lower the learning rate (--lr); no artifact was saved, and {kept}."
    else:
        doc.update(status="failed", error=str(exc))
