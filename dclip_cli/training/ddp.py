"""Fine-tuning under torchrun: data sharding, DistributedDataParallel and the cross-rank loss (issue 14).

With N ranks, ``config.batch_size`` is the global batch B (the CLI's ``--batch-size`` b is per rank: B = N·b) and
N ranks give the same update as one process with batch B, up to floating-point rounding:

* **Data.** Global batch k holds images [kB, (k+1)B) as in one process; each rank takes its contiguous part
  (:func:`~dclip_cli.distributed.split_rows`). A rank left without an image in a short last batch runs the batch's
  first image with weight 0, so that every rank joins DDP's gradient reduction.
* **Loss.** Each term of the objective (section 8.1) is a batch mean of a per-image value, but the CLIP term puts
  ``-log((2 - L_dir) / 2)`` around its mean, so averaging per-rank losses (plain DDP) is not the one-process loss.
  :func:`reduce_terms` therefore reduces each term's batch mean across the ranks *before* that map:
  M = Σ_r n_r·m_r / n. Each rank's loss carries M as its value and N·n_r/n·∂m_r as its gradient, so DDP's average
  of the ranks' gradients, (1/N)·Σ_r, is exactly ∂L/∂θ of the whole batch; the reported losses are the whole
  batch's.
* **Noise.** With η > 0 each rank draws the noise of the whole global batch from the epoch's generator and keeps
  its rows (:class:`BatchNoise`), as one process draws it.
* **Inversions and samples** are computed once, each rank its chunks (:func:`map_chunks`), and gathered.

Why results still differ in the last bits: the ranks' gradients are summed in another order than one process's
batch sum. Adam divides by √v, so a weight whose true gradient is zero moves by about the learning rate on that
rounding noise; compare models by the share of weights within tolerance and by their edits (docs/distributed.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dclip_cli.distributed import Context, shard_chunks, split_rows


@dataclass(frozen=True)
class LocalBatch:
    """A rank's part of one global batch.

    Args:
        x0: (b, 3, S, S) its images (a stand-in image when it has none: ``n_images`` is then 0).
        x_lat: (b, 3, S, S) their inversions.
        n_images: how many real images the rank holds (the weight of its loss terms).
        rows: ``(start, stop)`` of its rows within the global batch.
        size: images in the global batch.
    """

    x0: torch.Tensor
    x_lat: torch.Tensor
    n_images: int
    rows: tuple[int, int]
    size: int


def local_batch(
    x0: torch.Tensor, x_lat: torch.Tensor, start: int, batch_size: int, ctx: Context
) -> LocalBatch:
    """This rank's part of the global batch ``[start, start + batch_size)`` of ``x0`` and ``x_lat``."""
    size = min(start + batch_size, x0.shape[0]) - start
    a, b = split_rows(size, ctx.world_size, ctx.rank)
    if a == b:  # nothing left for this rank: the first image, with weight 0
        return LocalBatch(x0[start : start + 1], x_lat[start : start + 1], 0, (0, 1), size)
    return LocalBatch(x0[start + a : start + b], x_lat[start + a : start + b], b - a, (a, b), size)


def reduce_terms(terms: Mapping[str, torch.Tensor], n_images: int, ctx: Context) -> dict[str, torch.Tensor]:
    """Each term's mean over the whole global batch, differentiable with respect to this rank's part.

    Args:
        terms: batch means m_r of the loss terms on this rank's images (0-d float32 tensors with gradient).
        n_images: this rank's number of real images n_r (0 for a stand-in).

    Returns:
        The same keys with M + (N·n_r/n)·(m_r - m_r.detach()): its value is M = Σ_r n_r·m_r / n exactly, its
        gradient N·n_r/n·∂m_r. Unchanged terms for a single process.
    """
    if not ctx.active:
        return dict(terms)
    names = list(terms)
    ref = terms[names[0]]
    local = torch.zeros(len(names) + 1, dtype=torch.float32, device=ref.device)
    if n_images:
        local[:-1] = torch.stack([terms[k].detach().float() for k in names]) * n_images
        local[-1] = n_images
    total = ctx.all_reduce_sum(local)
    n = total[-1]
    scale = ctx.world_size * n_images / float(n)
    return {k: total[i] / n + scale * (terms[k] - terms[k].detach()) for i, k in enumerate(names)}


class BatchNoise:
    """The η-noise of one global batch: drawn whole from the epoch's generator, this rank's rows kept.

    Passed where the loop passes a generator; the DDIM step asks it for noise the shape of the rank's part.
    """

    def __init__(self, generator: torch.Generator, batch: LocalBatch) -> None:
        self.generator = generator
        self.batch = batch

    def draw(self, like: torch.Tensor) -> torch.Tensor:
        shape = (self.batch.size, *like.shape[1:])
        z = torch.randn(shape, generator=self.generator, dtype=like.dtype, device=self.generator.device)
        a, b = self.batch.rows
        return z[a:b].to(like.device) if self.batch.n_images else z[:1].to(like.device)


def batch_generator(generator: torch.Generator | None, batch: LocalBatch, ctx: Context) -> Any:
    """What the loop hands the DDIM steps as the generator of ``batch``: itself for one process, else a
    :class:`BatchNoise`."""
    if generator is None or not ctx.active:
        return generator
    return BatchNoise(generator, batch)


def wrap_model(model: nn.Module, ctx: Context) -> nn.Module:
    """``model`` in DistributedDataParallel under torchrun (gradients averaged across the ranks during backward);
    ``model`` itself for one process. The replicas start from rank 0's weights."""
    if not ctx.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [torch.device(str(ctx.device)).index] if ctx.backend == "nccl" else None
    try:
        return DistributedDataParallel(model, device_ids=device_ids)
    except RuntimeError as exc:
        from dclip_cli.distributed import rank_failure

        raise rank_failure(exc, ctx, "model broadcast") from exc


def map_chunks(fn: Callable[[range], Any], n: int, chunk: int, ctx: Context) -> list[Any]:
    """``[fn(rows) for rows in chunks of range(n)]``, each rank computing its own chunks
    (:func:`~dclip_cli.distributed.shard_chunks`) and every rank receiving all results, in chunk order.

    ``fn`` must return CPU tensors (or tuples of them): they travel between the ranks.
    """
    mine = shard_chunks(n, chunk, ctx.world_size, ctx.rank)
    if not ctx.active:
        return [fn(rows) for rows in mine]
    merged = ctx.merge({rows.start: fn(rows) for rows in mine})
    return [merged[start] for start in sorted(merged)]


def agree_on_start(epochs_done: int, ctx: Context, run_dir: object) -> None:
    """Refuse a resume where the ranks found different saved states (a run folder not shared by every node).

    Raises:
        DistributedError: the ranks disagree.
    """
    seen = ctx.all_gather_object(int(epochs_done))
    if len(set(seen)) > 1:
        from dclip_cli.errors import DistributedError

        raise DistributedError(
            f"The ranks found different saved states in the run folder {run_dir} (finished epochs by rank: "
            f"{seen}).",
            hint="Put the run folder on a file system every node shares (--run-dir or DCLIP_DATA).",
        )
