"""Runs under ``torchrun``: the torch.distributed context every floor shares (issue 14).

``torchrun --nproc-per-node N -m dclip_cli ...`` starts N processes ("ranks") with ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK`` in their environment. :func:`setup` reads them, picks the rank's device (``cuda:LOCAL_RANK``, or the
CPU with gloo) and joins the process group (NCCL on GPUs, gloo on CPUs) with a timeout on every collective;
:func:`current` then tells any floor which rank it is. Without torchrun (or with one process) the context is the
single-process one, whose collectives return their input: library code calls them unconditionally.

Who does what:

* fine-tuning (:mod:`dclip_cli.training.ddp`): training images are split by global batch, gradients averaged by
  DistributedDataParallel; rank 0 alone writes run state, previews and the artifact;
* editing (``edit``, ``mix``, ``translate``, ``invert``): whole batches of inputs are dealt round robin
  (:func:`shard_chunks`), each rank writes its own outputs, every rank learns all results in input order;
* downloads: on each node only local rank 0 downloads; the others wait on the cache's file lock
  (:mod:`dclip_cli.store.ranks`).

This module imports torch only inside functions, so importing it costs nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import re
import signal
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from dclip_cli.errors import DeviceError, DistributedError

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

#: seconds a collective may wait for the other ranks before the run is stopped (``DCLIP_DIST_TIMEOUT``)
DEFAULT_TIMEOUT_S = 1800.0
TIMEOUT_ENV = "DCLIP_DIST_TIMEOUT"


@dataclass(frozen=True)
class Launch:
    """What torchrun put in the environment of this process.

    Args:
        world_size: processes in the job (``WORLD_SIZE``).
        rank: this process's index in the job (``RANK``), 0 to ``world_size - 1``.
        local_rank: its index on this node (``LOCAL_RANK``): the GPU it uses.
        local_world_size: processes on this node (``LOCAL_WORLD_SIZE``).
    """

    world_size: int
    rank: int
    local_rank: int
    local_world_size: int


def launch_from_env(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The torchrun launch described by ``environ`` (default ``os.environ``), or ``None`` outside torchrun.

    Raises:
        DistributedError: the variables are not integers or contradict each other.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    names = ("WORLD_SIZE", "RANK", "LOCAL_RANK")
    try:
        world, rank, local = (int(env.get(name, "0")) for name in names)
        local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    except ValueError:
        shown = ", ".join(f"{n}={env.get(n)!r}" for n in (*names, "LOCAL_WORLD_SIZE") if n in env)
        raise DistributedError(
            f"The torchrun environment is not made of integers ({shown}).",
            hint="Start dclip with torchrun, or unset WORLD_SIZE, RANK and LOCAL_RANK.",
        ) from None
    if world < 1 or not 0 <= rank < world or not 0 <= local < max(local_world, 1):
        raise DistributedError(
            f"The torchrun environment is inconsistent: WORLD_SIZE={world}, RANK={rank}, LOCAL_RANK={local}, "
            f"LOCAL_WORLD_SIZE={local_world}.",
            hint="Start dclip with torchrun, or unset WORLD_SIZE, RANK and LOCAL_RANK.",
        )
    return Launch(world, rank, local, local_world)


def timeout_from_env(environ: Mapping[str, str] | None = None) -> float:
    """Seconds a collective may wait (``DCLIP_DIST_TIMEOUT``, default 1800)."""
    env = os.environ if environ is None else environ
    text = env.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise DistributedError(
            f"{TIMEOUT_ENV}={text!r} is not a positive number of seconds.", hint=f"Use {TIMEOUT_ENV}=1800."
        )
    return value


def rank_device(launch: Launch, requested: str | None, *, cuda_count: int) -> str:
    """The device of a rank: ``cuda:LOCAL_RANK`` when GPUs are visible (``auto`` or ``cuda``), else ``cpu``.

    Raises:
        DeviceError: a flag contradicts torchrun (``--device cuda:1``, ``--device mps``), ``--device cuda`` without
            a GPU, or more processes on this node than visible GPUs.
    """
    spec = (requested or "auto").strip().lower()
    kind, _, index = spec.partition(":")
    if kind == "mps":
        raise DeviceError(
            "--device mps cannot be used under torchrun: PyTorch has no distributed backend for MPS.",
            hint="Use --device cpu (gloo), or run dclip without torchrun.",
        )
    if index:
        raise DeviceError(
            f"--device {spec} contradicts torchrun: each of its processes uses the GPU of its local rank "
            f"(this one, local rank {launch.local_rank}, uses cuda:{launch.local_rank}).",
            hint="Drop --device (or pass --device cuda); choose the GPUs with CUDA_VISIBLE_DEVICES=... torchrun ...",
        )
    if kind == "cpu" or (kind == "auto" and cuda_count == 0):
        return "cpu"
    if cuda_count == 0:
        raise DeviceError(
            "--device cuda was requested but PyTorch sees no CUDA GPU.",
            hint="Use --device cpu (gloo), or install a CUDA build of PyTorch.",
        )
    if launch.local_rank >= cuda_count:
        raise DeviceError(
            f"torchrun started {launch.local_world_size} processes on this node but PyTorch sees {cuda_count} "
            "GPU(s).",
            hint=f"Pass --nproc-per-node {cuda_count} (or fewer), or --device cpu.",
        )
    return f"cuda:{launch.local_rank}"


# ------------------------------------------------------------------------------------------------ the context


@dataclass(frozen=True)
class Context:
    """Which rank this process is and how to reach the others.

    The default, ``Context()``, is a single process: every collective returns its input unchanged.

    Args:
        world_size: processes in the job.
        rank: this process's rank (0 is the main rank: it writes shared files and prints results).
        local_rank: its rank on this node (0 downloads into this node's cache).
        device: the rank's device (``cuda:LOCAL_RANK`` or ``cpu``); ``None`` for a single process.
        backend: ``nccl`` or ``gloo`` (``None`` for a single process).
        timeout: seconds a collective waits for the others.
    """

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    device: str | None = None
    backend: str | None = None
    timeout: float = DEFAULT_TIMEOUT_S

    @property
    def active(self) -> bool:
        """Whether there are other ranks (collectives do something)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0

    @property
    def prefix(self) -> str:
        """``"[rank R] "`` on the other ranks of a job, for their warnings and errors; ``""`` on rank 0."""
        return f"[rank {self.rank}] " if self.active and not self.is_main else ""

    def resolve_device(self, spec: str | None) -> torch.device:
        """The rank's device for a ``--device`` value (``auto``, ``cpu`` and ``cuda`` all mean it).

        Raises:
            DeviceError: ``spec`` names another device than the one torchrun gave this rank.
        """
        import torch

        value = (spec or "auto").strip().lower()
        if self.device is None or value in ("auto", self.device) or value == self.device.split(":")[0]:
            return torch.device(self.device or "cpu")
        raise DeviceError(
            f"--device {value} contradicts torchrun, which gave rank {self.rank} the device {self.device}.",
            hint="Drop --device: each rank uses cuda:LOCAL_RANK, or the CPU with --device cpu.",
        )

    # -- collectives (identity for a single process) ----------------------------------------------------------

    def barrier(self) -> None:
        """Wait until every rank has arrived here."""
        if self.active:
            import torch.distributed as dist

            ids = [int(self.local_rank)] if self.backend == "nccl" else None
            self._collective("barrier", lambda: dist.barrier(device_ids=ids))

    def all_gather_object(self, obj: T) -> list[T]:
        """Every rank's ``obj`` (picklable), indexed by rank."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        self._collective("all-gather", lambda: dist.all_gather_object(out, obj))
        return out

    def broadcast_object(self, obj: T, src: int = 0) -> T:
        """Rank ``src``'s ``obj`` on every rank."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box: list[Any] = [obj]
        self._collective("broadcast", lambda: dist.broadcast_object_list(box, src=src))
        return box[0]  # type: ignore[no-any-return]

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place (on the rank's device); returns it."""
        if self.active:
            import torch.distributed as dist

            self._collective("all-reduce", lambda: dist.all_reduce(tensor, op=dist.ReduceOp.SUM))
        return tensor

    def merge(self, pieces: Mapping[int, T]) -> dict[int, T]:
        """Every rank's ``{index: value}`` pieces merged into one dict (indices are disjoint across ranks)."""
        merged: dict[int, T] = {}
        for part in self.all_gather_object(dict(pieces)):
            merged.update(part)
        return merged

    def _collective(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except RuntimeError as exc:
            raise rank_failure(exc, self, what) from exc


def rank_failure(exc: BaseException, ctx: Context, what: str = "collective") -> DistributedError:
    """The error to show for a collective that failed (a rank stopped, or the others did not come in time)."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    first = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0].rstrip(".")  # no "[.../pair.cc:561] " source
    return DistributedError(
        f"Rank {ctx.rank} lost the other ranks during a {what} ({ctx.world_size} ranks): {first}.",
        hint=f"Another rank stopped (see its message), or did not arrive within {ctx.timeout:g} s ({TIMEOUT_ENV}). "
        "Fine-tuning keeps its finished epochs: run the same command with --resume.",
    )


def is_collective_failure(exc: BaseException) -> bool:
    """Whether ``exc`` comes from torch.distributed (a peer that closed its connection, a timeout, NCCL)."""
    if isinstance(exc, DistributedError):
        return False
    kind = type(exc)
    if any(
        k.__module__.startswith("torch.distributed") or k.__name__.startswith("Dist") for k in kind.__mro__
    ):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        word in text for word in ("gloo", "Gloo", "NCCL", "Connection closed by peer", "Connection reset")
    )


_SINGLE = Context()
_current: Context = _SINGLE


def current() -> Context:
    """The context of this process (the single-process one until :func:`setup` joined a torchrun job)."""
    return _current


@contextlib.contextmanager
def use(ctx: Context) -> Iterator[Context]:
    """Make ``ctx`` the current context inside the block (tests use it to play a rank)."""
    global _current
    previous, _current = _current, ctx
    try:
        yield ctx
    finally:
        _current = previous


def log_prefix(environ: Mapping[str, str] | None = None) -> str:
    """``"[rank R] "`` for the ranks other than 0 of a torchrun job (from the context once joined, else from the
    environment, so that errors before joining are labelled too); ``""`` otherwise."""
    if _current.active:
        return _current.prefix
    env = os.environ if environ is None else environ
    rank, world = env.get("RANK", "0").strip(), env.get("WORLD_SIZE", "1").strip()
    return f"[rank {rank}] " if rank not in ("", "0") and world not in ("", "1") else ""


def main_only(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``method`` on the main rank only (it returns ``None`` on the others): for writers of shared files."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return method(*args, **kwargs) if _current.is_main else None

    return wrapper


def decide_on_main(decide: Callable[[], T]) -> T:
    """Run ``decide`` on the main rank and give every rank its result (or raise its error on every rank), so that
    decisions read from files (which may differ between nodes) are taken alike. Outside torchrun: ``decide()``."""
    ctx = _current
    if not ctx.active:
        return decide()
    outcome: tuple[bool, Any] = (True, None)
    if ctx.is_main:
        try:
            outcome = (True, decide())
        except Exception as exc:  # noqa: BLE001 - raised again on every rank below
            outcome = (False, exc)
    ok, value = ctx.broadcast_object(outcome)
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def setup(device: str | None = "auto", environ: Mapping[str, str] | None = None) -> Context:
    """Join the torchrun job this process belongs to (once) and return its context.

    Outside torchrun, or with one process, nothing happens and the single-process context is returned (torch is
    not even imported). Under torchrun the rank's device is chosen (:func:`rank_device`), ``torch.cuda`` set to it,
    and the default process group joined: NCCL on GPUs, gloo on CPUs, with :func:`timeout_from_env` on every
    collective.

    Raises:
        DeviceError: ``device`` contradicts torchrun (see :func:`rank_device`).
        DistributedError: the environment is inconsistent, or the other ranks could not be reached.
    """
    global _current
    launch = launch_from_env(environ)
    if launch is None or launch.world_size == 1:
        return _current
    if _current.active:
        _current.resolve_device(device)  # a later command of the same process may not contradict it
        return _current
    import torch
    import torch.distributed as dist

    cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    dev = rank_device(launch, device, cuda_count=cuda_count)
    backend = "nccl" if dev.startswith("cuda") else "gloo"
    timeout = timeout_from_env(environ)
    if not dist.is_initialized():
        from datetime import timedelta

        kwargs: dict[str, Any] = {}
        if backend == "nccl":
            torch.cuda.set_device(dev)
            kwargs["device_id"] = torch.device(dev)
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout), **kwargs)
        except (RuntimeError, ValueError) as exc:
            raise DistributedError(
                f"Rank {launch.rank} could not join the other {launch.world_size - 1} rank(s): {exc}",
                hint="Start every rank with the same torchrun command (--rdzv-endpoint reachable from all nodes).",
            ) from exc
        atexit.register(_leave)
    _current = Context(launch.world_size, launch.rank, launch.local_rank, dev, backend, timeout)
    return _current


def _leave() -> None:
    import torch.distributed as dist

    with contextlib.suppress(Exception):
        if dist.is_initialized():
            dist.destroy_process_group()


def stop_on_sigterm() -> None:
    """Turn SIGTERM (what torchrun sends every rank when one fails or on Ctrl-C) into ``KeyboardInterrupt``, so a
    rank stops the way an interrupted single process does: temporary files removed, finished epochs kept."""

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: torchrun follows up with SIGKILL if need be
        raise KeyboardInterrupt("stopped by torchrun")

    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGTERM, handler)
        # a SIGTERM that arrives while the interpreter shuts down (after an error) must not raise in finalizers
        atexit.register(signal.signal, signal.SIGTERM, signal.SIG_IGN)


# ------------------------------------------------------------------------------------------------ sharding


def shard_chunks(n_items: int, chunk: int, world_size: int, rank: int) -> list[range]:
    """Rank ``rank``'s share of ``n_items``: consecutive chunks of ``chunk`` items, chunk j going to rank
    ``j % world_size``. Each item keeps the chunk (batch) it would have in one process."""
    starts = range(0, n_items, max(chunk, 1))
    return [range(s, min(s + chunk, n_items)) for j, s in enumerate(starts) if j % world_size == rank]


def split_rows(n_rows: int, world_size: int, rank: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous part ``[start, stop)`` of ``n_rows`` rows, as even as possible (the first
    ``n_rows % world_size`` ranks get one row more; a rank may get none)."""
    base, extra = divmod(n_rows, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)
