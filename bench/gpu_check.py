"""One-shot GPU acceptance check (issue 14): does dclip run, fast enough and in bounded memory, on this card?

Whoever has a CUDA GPU runs one command (under 8 minutes on an H100-class card)::

    python bench/gpu_check.py                       # real-size models with random weights, on cuda
    python bench/gpu_check.py --device cpu --tiny   # the same code paths on tiny models, in seconds (CI runs it)

Checks, one JSON line each on stdout (field ``check``), then a summary table on stderr:

* ``env``: device, its name, torch and CUDA versions, the card's dense bf16 peak (TFLOP/s, from bench.py's table or
  ``--peak-tflops``).
* ``forward``: the DDPM-256 (face, church, bedroom) and ADM-256 (dog) UNets in fp32 and bf16 at batch 8: images/s,
  FLOPs per image, achieved TFLOP/s and the fraction of the bf16 peak (target on CUDA: >= 40 % in bf16).
* ``edit``: a 40 + 40-step edit (DDIM inversion with the base model, generation with an edit model) in bf16 at
  batch 1 and 8: seconds per 256x256 image (target on CUDA at batch 8: <= 0.3 s, for an H100-class card).
* ``finetune``: one fine-tuning batch (one image, the face preset's 6 training steps, CLIP ViT-B/16 loss) in the
  original mode with gradient checkpointing and in the efficient mode: seconds and peak memory (targets on CUDA:
  <= 12 GB and <= 8 GB).
* ``compile``: the bf16 DDPM forward at batch 8 eager and through ``torch.compile``: the gain.
* ``clip_fp16``: CLIP in fp16 (as on CUDA) against fp32: finite features, their cosine similarity.

Every check asserts that its outputs are finite. The exit status is 1 when a check crashed (a CUDA error, an
out-of-memory, a non-finite output); a missed speed or memory target is reported as ``meets_target: false`` but is
not a crash. With ``--tiny`` the models are shrunk (32x32 UNets, a 2-layer CLIP) and ``torch.compile`` uses its
``eager`` backend on the CPU (graph capture without code generation: inductor needs minutes to compile there).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402 - bench.py beside this file: the peak table, the test photo, the random CLIP loss
from dclip_cli import precision as P  # noqa: E402
from dclip_cli.diffusion import ddim  # noqa: E402
from dclip_cli.models import build_model  # noqa: E402
from dclip_cli.models.configs import ADM_AFHQ_CONFIG, DDPM_256_CONFIG  # noqa: E402

#: targets of issue 14 (CUDA, bf16, random weights; the edit target is for an H100-class card)
EDIT_S_PER_IMAGE = 0.3
FINETUNE_GB = {"original": 12.0, "efficient": 8.0}
PEAK_FRACTION = 0.40

REAL = {"ddpm": DDPM_256_CONFIG, "adm": ADM_AFHQ_CONFIG}
TINY = {
    "ddpm": {**DDPM_256_CONFIG, "resolution": 32, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
             "attn_resolutions": [16]},
    "adm": {**ADM_AFHQ_CONFIG, "image_size": 32, "num_channels": 32, "channel_mult": [1, 2],
            "attention_resolutions": [16], "num_head_channels": 32},
}  # fmt: skip
#: the face preset's fine-tuning schedule (t0 401 rounded, 6 training steps) and a typical edit's 40 + 40 steps
T0, TRAIN_STEPS, EDIT_STEPS, TINY_EDIT_STEPS = 400, 6, 40, 10
CHECKS = ("forward", "edit", "finetune", "compile", "clip_fp16")


def emit(record: dict[str, Any]) -> dict[str, Any]:
    print(json.dumps(record), flush=True)
    return record


def log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t.detach().float()).all()) for t in tensors)


def make_model(arch: str, config: dict[str, Any], device: torch.device, seed: int = 0) -> nn.Module:
    """The UNet with random weights (every layer re-drawn, the zero-initialised ones too, so eps depends on x)."""
    model = build_model(arch, config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            if module is not model and hasattr(module, "reset_parameters"):
                module.reset_parameters()  # type: ignore[operator]
    return model.to(device).eval()


def flops_per_image(arch: str, config: dict[str, Any]) -> float:
    """Forward FLOPs of one image (2 per multiply-add), counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build_model(arch, config)
        size = int(model.image_size)
        x, t = torch.zeros(1, 3, size, size), torch.full((1,), 500.0)
    with FlopCounterMode(display=False) as counter:
        model(x, t)
    return float(counter.get_total_flops())


def images(size: int, batch: int, device: torch.device) -> torch.Tensor:
    return bench.test_image(size, batch, device)


def median_seconds(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls after one warm-up call, and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        P.synchronize(device)
        start = time.perf_counter()
        out = fn()
        P.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


@contextmanager
def compile_backend(backend: str) -> Iterator[None]:
    """Make ``torch.compile`` (as dclip calls it) use ``backend`` inside the block."""
    original = torch.compile
    if backend != "inductor":
        torch.compile = lambda *a, **k: original(*a, **{**k, "backend": backend})  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.compile = original


class Check:
    """Runs the checks, one record each; a crash becomes a failed record and the next check runs."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.configs = TINY if args.tiny else REAL
        self.batch = 2 if args.tiny else 8
        self.edit_steps = TINY_EDIT_STEPS if args.tiny else EDIT_STEPS
        self.records: list[dict[str, Any]] = []
        self.cuda = self.device.type == "cuda"
        name = torch.cuda.get_device_name(self.device) if self.cuda else "cpu"
        self.peak = args.peak_tflops or (bench.peak_bf16_tflops(name) if self.cuda else None)
        # the low precision of the UNets: bf16, or fp16 on GPUs without bf16 (which then train in fp32)
        self.bf16 = "bf16" if not self.cuda or P.device_supports_bf16(self.device) else "fp16"
        self.train_precision = "bf16" if self.bf16 == "bf16" else "fp32"

    def run(self, check: str, fn: Callable[[], dict[str, Any]], **labels: Any) -> None:
        log(f"{check} {' '.join(f'{k}={v}' for k, v in labels.items())}")
        started = time.perf_counter()
        try:
            record = {"check": check, **labels, **fn()}
            record.setdefault("ok", True)
        except Exception as exc:  # noqa: BLE001 - a crash is the finding; report it and go on
            record = {"check": check, **labels, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc(file=sys.stderr)
        record["seconds"] = round(time.perf_counter() - started, 2)
        self.records.append(emit(record))
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def target(
        self, record: dict[str, Any], value: float | None, limit: float, *, upper: bool
    ) -> dict[str, Any]:
        """Record a target that applies on CUDA only (the targets are GPU figures)."""
        if self.cuda and value is not None and not self.args.tiny:
            record["target"] = limit
            record["meets_target"] = value <= limit if upper else value >= limit
        return record

    # -- the checks ------------------------------------------------------------------------------------------

    def env(self) -> dict[str, Any]:
        return {
            "device": str(self.device),
            "name": torch.cuda.get_device_name(self.device) if self.cuda else "cpu",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "tiny": bool(self.args.tiny),
            "peak_bf16_tflops": self.peak,
            "bf16_precision": self.bf16,
        }

    def forward(self, arch: str, precision: str) -> dict[str, Any]:
        config = self.configs[arch]
        model = make_model(arch, config, self.device)
        fast = P.optimize_model(model, precision=precision, device=self.device)
        size = int(model.image_size)
        x = images(size, self.batch, self.device)
        t = torch.full((self.batch,), 500, device=self.device)
        with torch.no_grad():
            seconds, eps = median_seconds(lambda: fast(x, t), self.device, self.args.repeats)
        flops = flops_per_image(arch, config)
        per_s = self.batch / seconds
        tflops = flops * per_s / 1e12
        record = {
            "ok": finite(eps),
            "batch": self.batch,
            "images_per_s": round(per_s, 2),
            "gflops_per_image": round(flops / 1e9, 2),
            "tflops": round(tflops, 3),
            "fraction_of_bf16_peak": round(tflops / self.peak, 3) if self.peak else None,
        }
        if precision == "bf16":
            self.target(record, record["fraction_of_bf16_peak"], PEAK_FRACTION, upper=False)
        return record

    def edit(self, batch: int) -> dict[str, Any]:
        config = self.configs["ddpm"]
        base = make_model("ddpm", config, self.device, seed=0)
        edit = make_model("ddpm", config, self.device, seed=1)
        fast_base = P.optimize_model(base, precision=self.bf16, device=self.device)
        fast_edit = P.optimize_model(edit, precision=self.bf16, device=self.device)
        x0 = images(int(base.image_size), batch, self.device)

        steps = self.edit_steps

        def run() -> torch.Tensor:
            x_lat = ddim.invert(fast_base, x0, t0=T0, n_steps=steps)
            return ddim.generate(fast_edit, x_lat, t0=T0, n_steps=steps)

        with torch.no_grad():
            seconds, x = median_seconds(run, self.device, 1)
        per_image = seconds / batch
        record = {"ok": finite(x), "steps": f"{steps}+{steps}", "s_per_image": round(per_image, 4)}
        return self.target(record, per_image, EDIT_S_PER_IMAGE, upper=True) if batch == 8 else record

    def finetune(self, mode: str) -> dict[str, Any]:
        from dclip_cli.training import FinetuneConfig, finetune

        model = make_model("ddpm", self.configs["ddpm"], self.device)
        clip_loss = self.clip_loss()
        x0 = images(int(model.image_size), 1, self.device)
        x_lat = ddim.q_sample(x0.cpu(), T0, generator=torch.Generator().manual_seed(0)).to(self.device)
        clip_loss.text_direction("face", "angry face")  # the 79-template text pass, outside the measurement
        steps = {"n_train_steps": TRAIN_STEPS, "n_inv_steps": TRAIN_STEPS, "n_gen_steps": TRAIN_STEPS}
        config = FinetuneConfig(t0=T0, **steps, mode=mode, epochs=1, batch_size=1, lr=8e-6,
                                precision=self.train_precision, checkpointing="auto", l1_weight=0.0)  # fmt: skip
        losses: list[float] = []

        def on_step(info: dict[str, Any]) -> None:
            if info.get("losses"):
                losses.append(float(info["losses"]["total"]))

        gc.collect()
        with P.track_peak_memory(self.device) as memory:
            P.synchronize(self.device)
            start = time.perf_counter()
            tuned = finetune(model, x0, x_lat, src_text="face", trg_text="angry face", clip_loss=clip_loss,
                             config=config, callback=on_step)  # fmt: skip
            P.synchronize(self.device)
            seconds = time.perf_counter() - start
        peak = memory.get("peak_bytes")
        gb = peak / 1e9 if peak else None
        record = {
            "ok": finite(*tuned.parameters(), torch.tensor(losses)) and bool(losses),
            "checkpointing": P.resolve_checkpointing("auto", mode=mode),
            "precision": self.train_precision,
            "train_steps": TRAIN_STEPS,
            "seconds_per_batch": round(seconds, 3),
            "peak_memory_kind": "cuda_max_allocated" if self.cuda else "process_peak_rss",
            "peak_gb": round(gb, 3) if gb is not None else None,
            "final_loss": round(losses[-1], 5) if losses else None,
        }
        return self.target(record, gb, FINETUNE_GB[mode], upper=True)

    def compile(self) -> dict[str, Any]:
        config = self.configs["ddpm"]
        model = make_model("ddpm", config, self.device)
        size = int(model.image_size)
        x = images(size, self.batch, self.device)
        t = torch.full((self.batch,), 500, device=self.device)
        # the same autocast path with and without compilation (the fused CPU path does not compile)
        eager = P.optimize_model(model, precision=self.bf16, device=self.device, fuse=False)
        compiled = P.optimize_model(
            copy.deepcopy(model), precision=self.bf16, device=self.device, compile=True
        )
        backend = self.args.compile_backend
        with torch.no_grad(), compile_backend(backend):
            P.synchronize(self.device)
            start = time.perf_counter()
            out_c = compiled(x, t)  # the first call compiles
            P.synchronize(self.device)
            compile_s = time.perf_counter() - start
            eager_s, out_e = median_seconds(lambda: eager(x, t), self.device, self.args.repeats)
            compiled_s, out_c = median_seconds(lambda: compiled(x, t), self.device, self.args.repeats)
        return {
            "ok": finite(out_c, out_e),
            "backend": backend,
            "batch": self.batch,
            "compile_seconds": round(compile_s, 1),
            "eager_images_per_s": round(self.batch / eager_s, 2),
            "compiled_images_per_s": round(self.batch / compiled_s, 2),
            "gain": round(eager_s / compiled_s, 3),
            "max_abs_diff": round(float((out_c - out_e).abs().max()), 5),
        }

    def clip_fp16(self) -> dict[str, Any]:
        net32 = self.clip_network()
        from open_clip.model import convert_weights_to_lp

        from dclip_cli.losses.clip import ClipModel

        net16 = copy.deepcopy(net32)
        convert_weights_to_lp(net16, dtype=torch.float16)
        clip32 = ClipModel(net32, name="random", precision="fp32").to(self.device)
        clip16 = ClipModel(net16, name="random", precision="fp16").to(self.device)
        x = images(256, self.batch, self.device)
        with torch.no_grad():
            f32, f16 = clip32.encode_image(x), clip16.encode_image(x)
            t16 = clip16.encode_text(["a photo of a face", "an angry face"])
        cosine = torch.nn.functional.cosine_similarity(f32, f16, dim=-1)
        return {
            "ok": finite(f16, t16),
            "dtype": str(clip16.dtype),
            "min_cosine_to_fp32": round(float(cosine.min()), 5),
        }

    # -- helpers ---------------------------------------------------------------------------------------------

    def clip_network(self) -> nn.Module:
        """CLIP ViT-B/16 (QuickGELU, as OpenAI's) with random weights, or a 2-layer CLIP with ``--tiny``."""
        import open_clip

        if not self.args.tiny:
            return open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).eval()
        from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            vision = CLIPVisionCfg(layers=2, width=64, patch_size=8, image_size=32)
            text = CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=2)
            return CLIP(32, vision_cfg=vision, text_cfg=text, quick_gelu=True).eval()

    def clip_loss(self) -> Any:
        """The directional CLIP loss on the random CLIP, in fp16 on CUDA as in the original."""
        from dclip_cli.losses.clip import ClipModel, DirectionalCLIPLoss

        net = self.clip_network()
        precision = "fp32"
        if self.cuda:
            from open_clip.model import convert_weights_to_lp

            convert_weights_to_lp(net, dtype=torch.float16)
            precision = "fp16"
        return DirectionalCLIPLoss(ClipModel(net, name="random", precision=precision).to(self.device))


def summary(records: list[dict[str, Any]]) -> str:
    """A plain-text table of the records (one line each)."""
    keys = ("images_per_s", "fraction_of_bf16_peak", "s_per_image", "seconds_per_batch", "peak_gb", "gain",
            "min_cosine_to_fp32")  # fmt: skip
    lines = [f"{'check':<10} {'setting':<22} {'result':<44} {'target':>8}  status"]
    for r in records:
        if r["check"] == "env":
            continue
        setting = " ".join(str(r[k]) for k in ("arch", "precision", "mode", "batch") if k in r)
        result = ", ".join(f"{k} {r[k]}" for k in keys if r.get(k) is not None)
        status = "CRASH" if not r["ok"] else {True: "ok", False: "MISSED", None: "ok"}[r.get("meets_target")]
        lines.append(f"{r['check']:<10} {setting:<22} {result or r.get('error', '')[:44]:<44} "
                     f"{r.get('target', '-')!s:>8}  {status}")  # fmt: skip
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny models: the same code paths in seconds")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed calls per measurement (default 5; 2 tiny)"
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="the card's dense bf16 peak (TFLOP/s)"
    )
    parser.add_argument(
        "--only", default=",".join(CHECKS), help=f"comma list of checks (default: {','.join(CHECKS)})"
    )
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend (default inductor; eager with --tiny on the CPU)")  # fmt: skip
    args = parser.parse_args(argv)
    args.only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = sorted(set(args.only) - set(CHECKS))
    if unknown:
        parser.error(f"unknown check(s) {', '.join(unknown)}; choose from {', '.join(CHECKS)}")
    if args.repeats is None:
        args.repeats = 2 if args.tiny else 5
    if args.compile_backend is None:
        args.compile_backend = "eager" if args.tiny and args.device == "cpu" else "inductor"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        log("PyTorch sees no CUDA GPU; run with --device cpu --tiny to try the code paths.")
        return 2
    check = Check(args)
    check.run("env", check.env)
    only = set(args.only)
    for arch in ("ddpm", "adm") if "forward" in only else ():
        for precision in ("fp32", check.bf16):
            check.run(
                "forward", lambda a=arch, p=precision: check.forward(a, p), arch=arch, precision=precision
            )
    for batch in (1, 8) if "edit" in only else ():
        check.run("edit", lambda b=batch: check.edit(b), arch="ddpm", precision=check.bf16, batch=batch)
    for mode in ("original", "efficient") if "finetune" in only else ():
        check.run("finetune", lambda m=mode: check.finetune(m), arch="ddpm", mode=mode)
    if "compile" in only:
        check.run("compile", check.compile, arch="ddpm", precision=check.bf16)
    if "clip_fp16" in only:
        check.run("clip_fp16", check.clip_fp16)
    crashed = [r for r in check.records if not r["ok"]]
    print(summary(check.records), file=sys.stderr, flush=True)
    emit({"check": "summary", "ok": not crashed, "crashed": [r["check"] for r in crashed],
          "missed_targets": [r["check"] for r in check.records if r.get("meets_target") is False]})  # fmt: skip
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
