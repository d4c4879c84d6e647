"""Issue 14, in one process: the torchrun context, sharding, the cross-rank loss, rank-0 writes and rank-0 downloads.

The real multi-process runs are in ``tests/test_torchrun.py``; here the other rank is played by a context whose
collectives are stubbed (:func:`dclip_cli.distributed.use`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from dclip_cli import distributed
from dclip_cli.checkpoints import cache
from dclip_cli.checkpoints.registry import CheckpointSpec
from dclip_cli.cli.app import app
from dclip_cli.distributed import Context, Launch, launch_from_env, rank_device, shard_chunks, split_rows, use
from dclip_cli.errors import (
    CheckpointError,
    CheckpointNotCachedError,
    DeviceError,
    DistributedError,
    DownloadError,
)
from dclip_cli.training import ddp
from dclip_cli.training.config import FinetuneConfig
from dclip_cli.training.loop import loss_terms
from tests.support.http_server import FileServer

TORCHRUN_ENV = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}


# -- the launch environment and the device --------------------------------------------------------------------


def test_launch_is_read_from_torchruns_variables() -> None:
    assert launch_from_env({}) is None
    assert launch_from_env({**TORCHRUN_ENV, "RANK": "1", "LOCAL_RANK": "1"}) == Launch(2, 1, 1, 2)
    with pytest.raises(DistributedError, match="not made of integers"):
        launch_from_env({**TORCHRUN_ENV, "RANK": "one"})
    with pytest.raises(DistributedError, match="inconsistent: WORLD_SIZE=2, RANK=2"):
        launch_from_env({**TORCHRUN_ENV, "RANK": "2"})


@pytest.mark.parametrize(
    ("requested", "gpus", "local_rank", "expected"),
    [
        ("auto", 0, 1, "cpu"),
        ("cpu", 4, 1, "cpu"),
        ("auto", 4, 1, "cuda:1"),
        ("cuda", 2, 1, "cuda:1"),
        ("cuda:1", 4, 1, "--device cuda:1 contradicts torchrun"),
        ("cuda:0", 4, 1, "--device cuda:0 contradicts torchrun"),
        ("mps", 0, 0, "no distributed backend for MPS"),
        ("cuda", 0, 0, "sees no CUDA GPU"),
        ("auto", 1, 1, "started 2 processes on this node but PyTorch sees 1 GPU"),
    ],
)
def test_each_rank_gets_the_gpu_of_its_local_rank(
    requested: str, gpus: int, local_rank: int, expected: str
) -> None:
    launch = Launch(world_size=2, rank=local_rank, local_rank=local_rank, local_world_size=2)
    if expected in ("cpu", "cuda:1"):
        assert rank_device(launch, requested, cuda_count=gpus) == expected
    else:
        with pytest.raises(DeviceError, match=expected):
            rank_device(launch, requested, cuda_count=gpus)


@pytest.mark.parametrize("command", ["edit", "finetune"])
def test_a_contradicting_device_flag_is_refused_before_joining(world: Any, command: str) -> None:
    """``dclip --device cuda:1 ...`` under torchrun: one clear line, exit 1, and no process group."""
    import torch.distributed as dist

    args = {
        "edit": ["edit", *world.cli_args(), str(world.image), "--to", "smiling", "--domain", "tinyface"],
        "finetune": ["finetune", "--domain", "tinyface", "--text", "tiger"],
    }[command]
    result = CliRunner().invoke(app, ["--device", "cuda:1", *args], env=TORCHRUN_ENV)
    assert result.exit_code == 1, result.output
    assert "Error: --device cuda:1 contradicts torchrun" in result.stderr
    assert "Hint: Drop --device" in result.stderr
    assert not dist.is_initialized() and not distributed.current().active


def test_errors_of_other_ranks_are_labelled(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    from dclip_cli.cli.errors import report

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert report(DeviceError("Bad device.", hint="Use another.")) == 1
    err = capsys.readouterr().err
    assert "[rank 1] Error: Bad device." in err and "[rank 1] Hint: Use another." in err
    monkeypatch.setenv("RANK", "0")
    report(DeviceError("Bad device."))
    assert "[rank" not in capsys.readouterr().err


def test_collective_failures_read_as_a_lost_rank() -> None:
    ctx = Context(world_size=2, rank=0, timeout=20)
    gloo = RuntimeError(
        "[/__w/pytorch/third_party/gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:6316. "
        "This is typically caused by a remote worker crashing. GLHF!"
    )
    assert distributed.is_collective_failure(gloo)
    assert not distributed.is_collective_failure(ValueError("Connection closed by peer"))
    error = distributed.rank_failure(gloo, ctx, "all-reduce")
    assert (
        error.message
        == "Rank 0 lost the other ranks during a all-reduce (2 ranks): Connection closed by peer [127.0.0.1]:6316."
    )
    assert "within 20 s (DCLIP_DIST_TIMEOUT)" in str(error.hint) and "--resume" in str(error.hint)


def test_one_process_is_the_identity_context() -> None:
    ctx = distributed.setup("auto", environ={})
    assert ctx == Context() and not ctx.active and ctx.is_main
    assert ctx.all_gather_object({"a": 1}) == [{"a": 1}] and ctx.broadcast_object(3) == 3
    x = torch.ones(2)
    assert ctx.all_reduce_sum(x) is x and x.tolist() == [1.0, 1.0]
    assert ctx.merge({2: "b", 0: "a"}) == {0: "a", 2: "b"}
    ctx.barrier()


# -- sharding ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "chunk", "world"), [(5, 2, 2), (9, 4, 3), (3, 4, 4), (0, 2, 2), (7, 1, 2)])
def test_ranks_share_whole_batches(n: int, chunk: int, world: int) -> None:
    """Every item goes to exactly one rank, inside the batch it has in one process (batch j to rank j mod N)."""
    shares = [shard_chunks(n, chunk, world, r) for r in range(world)]
    items = sorted(i for share in shares for rows in share for i in rows)
    assert items == list(range(n))
    one_process = [range(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    for j, rows in enumerate(one_process):
        assert rows in shares[j % world]
    assert shard_chunks(5, 2, 2, 0) == [range(0, 2), range(4, 5)] and shard_chunks(5, 2, 2, 1) == [
        range(2, 4)
    ]


def test_global_batches_split_evenly_with_a_stand_in_for_an_empty_rank() -> None:
    assert [split_rows(5, 2, r) for r in range(2)] == [(0, 3), (3, 5)]
    assert [split_rows(1, 2, r) for r in range(2)] == [(0, 1), (1, 1)]
    x = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 3, 2, 2)
    part = ddp.local_batch(
        x, x + 10, 4, 2, Context(world_size=2, rank=1)
    )  # the last batch holds image 4 only
    assert part.n_images == 0 and part.size == 1 and part.x0[:, 0, 0, 0].tolist() == [4.0]
    part = ddp.local_batch(x, x + 10, 0, 4, Context(world_size=2, rank=1))
    assert part.n_images == 2 and part.rows == (2, 4) and part.x_lat[:, 0, 0, 0].tolist() == [12.0, 13.0]
    whole = ddp.local_batch(x, x, 3, 4, Context())
    assert whole.n_images == 2 and torch.equal(whole.x0, x[3:5])


# -- the loss across ranks --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlayedRank(Context):
    """Rank ``rank`` of two, whose all-reduce adds what the other rank contributes (``other``)."""

    other: Any = None

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor += self.other
        return tensor


class ToyClipLoss:
    """L_dir of generated images against a fixed direction: mean_b(1 - cos(x_b - x0_b, d)), in [0, 2]."""

    def __init__(self) -> None:
        self.direction = torch.randn(3 * 4 * 4, generator=torch.Generator().manual_seed(1))

    def __call__(self, x0: torch.Tensor, src: str, x: torch.Tensor, trg: str) -> torch.Tensor:
        delta = (x - x0).flatten(1)
        return (1 - torch.nn.functional.cosine_similarity(delta, self.direction[None], dim=1)).mean()


def _rank_loss(theta: torch.Tensor, x0: torch.Tensor, n_images: int, ctx: Context, clip: ToyClipLoss):
    config = FinetuneConfig(l1_weight=0.7)
    x = torch.tanh(x0 + theta)  # a "generated" image depending on the weights theta
    with use(ctx):
        total, _ = loss_terms(
            x0, x, src_text="a", trg_text="b", clip_loss=clip, config=config, n_images=n_images
        )
    return total


def _local(theta: torch.Tensor, x0: torch.Tensor, n: int, clip: ToyClipLoss) -> torch.Tensor:
    """What a rank contributes to the all-reduce of its batch means: [n·L_dir, n·l1, n]."""
    with torch.no_grad():
        x = torch.tanh(x0 + theta)
        return torch.tensor([n * float(clip(x0, "a", x, "b")), n * float((x0 - x).abs().mean()), float(n)])


@pytest.mark.parametrize("split", [2, 3, 4])
def test_two_ranks_give_the_gradient_of_the_whole_batch(split: int) -> None:
    """DDP's average of the ranks' gradients equals one process's gradient of the batch objective, whose CLIP term
    is -log((2 - L_dir)/2) of the whole batch's mean (split 4: rank 1 holds a weight-0 stand-in)."""
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 4, 4, generator=gen) * 2 - 1
    theta0 = torch.randn(3, 4, 4, generator=gen) * 0.3
    clip = ToyClipLoss()
    parts = [(x0[:split], split), (x0[split:], 4 - split) if split < 4 else (x0[:1], 0)]

    theta = theta0.clone().requires_grad_(True)
    loss = _rank_loss(theta, x0, 4, Context(), clip)
    loss.backward()
    one = float(loss.detach())
    expected = theta.grad.clone()

    grads, values = [], []
    for rank, (xr, n) in enumerate(parts):
        other_x, other_n = parts[1 - rank]
        ctx = PlayedRank(world_size=2, rank=rank, other=_local(theta0, other_x, other_n, clip))
        theta = theta0.clone().requires_grad_(True)
        loss = _rank_loss(theta, xr, n, ctx, clip)
        loss.backward()
        grads.append(theta.grad.clone())
        values.append(float(loss.detach()))
    averaged = (grads[0] + grads[1]) / 2  # what DDP does with the ranks' gradients
    assert values[0] == pytest.approx(one, rel=1e-6) and values[1] == pytest.approx(float(one), rel=1e-6)
    torch.testing.assert_close(averaged, expected, rtol=1e-5, atol=1e-7)
    if split == 4:
        assert torch.equal(grads[1], torch.zeros_like(grads[1]))

    if (
        split == 3
    ):  # plain DDP (each rank's own loss, averaged) misses it: the -log sits outside the batch mean
        naive = []
        for xr, n in parts:
            theta = theta0.clone().requires_grad_(True)
            _rank_loss(theta, xr, n, Context(), clip).backward()
            naive.append(theta.grad.clone())
        assert not torch.allclose((naive[0] + naive[1]) / 2, expected, rtol=1e-3, atol=1e-6)


def test_batch_noise_is_the_rows_of_the_whole_batchs_noise() -> None:
    x = torch.zeros(5, 3, 2, 2)
    one = torch.randn((5, 3, 2, 2), generator=torch.Generator().manual_seed(3))
    for rank, rows in enumerate([(0, 3), (3, 5)]):
        part = ddp.local_batch(x, x, 0, 5, Context(world_size=2, rank=rank))
        noise = ddp.batch_generator(torch.Generator().manual_seed(3), part, Context(world_size=2, rank=rank))
        assert torch.equal(noise.draw(part.x0), one[rows[0] : rows[1]])
    gen = torch.Generator()
    assert ddp.batch_generator(gen, ddp.local_batch(x, x, 0, 5, Context()), Context()) is gen


# -- who writes ------------------------------------------------------------------------------------------------


def test_only_rank_0_writes_the_run_folder(tmp_path: Path) -> None:
    from dclip_cli.training.data import TrainingData
    from dclip_cli.training.job import _RunFolder
    from dclip_cli.training.loop import TrainingState

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters())
    state = TrainingState(1, model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 1), {"total": 1.0})
    empty = torch.zeros(0, 3, 4, 4)
    preview = TrainingData(empty, empty, empty, [])
    for rank in (1, 0):
        folder = tmp_path / f"rank{rank}"
        run = _RunFolder(folder, "fingerprint")
        run.doc = {"epoch_losses": [], "epochs_done": 0}
        with use(Context(world_size=2, rank=rank)):
            run.write_doc()
            run.end_epoch(state, preview, FinetuneConfig())
            written = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
            run.finish([])
        assert run.doc["epochs_done"] == 1 and run.doc["epoch_losses"] == [{"total": 1.0}]  # every rank knows
        assert written == ([] if rank else ["run.json", "state.pt"])


# -- downloads -------------------------------------------------------------------------------------------------


def test_other_local_ranks_wait_for_local_rank_0s_download(tmp_path: Path) -> None:
    from dclip_cli.store.shared_cache import wait_for_download

    spec = CheckpointSpec(name="w", filename="w.ckpt", urls=("http://127.0.0.1:9/w.ckpt",))
    dest, lock_file = cache.checkpoint_path(spec, tmp_path), cache.lock_path(spec, tmp_path)
    lock_file.parent.mkdir(parents=True)
    held = threading.Event()

    def downloader() -> None:
        """Local rank 0: holds the lock for longer than the waiter's timeout, then writes the file."""
        import filelock

        with filelock.FileLock(str(lock_file)):
            held.set()
            time.sleep(1.5)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(b"weights")

    thread = threading.Thread(target=downloader)
    thread.start()
    held.wait()
    try:
        assert wait_for_download(spec, tmp_path, timeout=0.5, rank=1, poll=0.1) == dest
    finally:
        thread.join()
    assert dest.read_bytes() == b"weights"


def _register(spec: CheckpointSpec) -> None:
    from dclip_cli.presets import manager
    from dclip_cli.presets.hookspecs import hookimpl

    class Plugin:
        @hookimpl
        def register_checkpoints(self, register: Any) -> None:
            register(spec)

    manager.register_plugin("w-plugin", Plugin())


def test_a_rank_other_than_local_rank_0_never_downloads() -> None:
    """With nobody downloading for it, local rank 1 gives up after the timeout instead of fetching itself."""
    import hashlib

    from dclip_cli import store

    with FileServer() as server:
        data = b"0123456789"
        url = server.add("/w.ckpt", data)
        _register(
            CheckpointSpec(name="w", filename="w.ckpt", urls=(url,), sha256=hashlib.sha256(data).hexdigest())
        )
        with use(Context(world_size=2, rank=1, local_rank=1, timeout=0.3)):
            with pytest.raises(
                CheckpointNotCachedError, match="Rank 1 waited 0.3 s for local rank 0"
            ) as info:
                store.fetch("w")
        assert "same cache" in str(info.value.hint)
        assert server.count("/w.ckpt") == 0
        with use(Context(world_size=2, rank=1, local_rank=0, timeout=0.3)):  # a node's local rank 0 downloads
            assert store.fetch("w").read_bytes() == data
        assert server.count("/w.ckpt") == 1


def test_a_failed_download_stops_the_waiting_ranks_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Local rank 0 notes its failure for this job's attempt; the other ranks raise it instead of waiting (so an
    edit falls back to fine-tuning on every rank), and another job does not take the note for its own."""
    from dclip_cli import store
    from dclip_cli.store import shared_cache

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")
    with FileServer() as server:
        _register(CheckpointSpec(name="w", filename="w.ckpt", urls=(server.url("/gone.ckpt"),)))
        monkeypatch.setattr(shared_cache, "_attempts", {})
        with use(Context(world_size=2, rank=0, local_rank=0, timeout=30)):
            with pytest.raises(DownloadError):
                store.fetch("w")
        monkeypatch.setattr(shared_cache, "_attempts", {})  # rank 1's own count of its fetches of "w"
        started = time.monotonic()
        with use(Context(world_size=2, rank=1, local_rank=1, timeout=30)):
            with pytest.raises(
                CheckpointError, match="Local rank 0 could not fetch the checkpoint 'w': "
            ) as info:
                store.fetch("w")
        assert time.monotonic() - started < 10 and not isinstance(info.value, CheckpointNotCachedError)
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-2")
        monkeypatch.setattr(shared_cache, "_attempts", {})
        with use(Context(world_size=2, rank=1, local_rank=1, timeout=0.3)):
            with pytest.raises(CheckpointNotCachedError, match="waited 0.3 s"):
                store.fetch("w")
