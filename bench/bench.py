"""dclip benchmark suite (issue 6): UNet forward, edit pipeline and fine-tuning, baseline vs optimized.

Every figure is measured side by side in one run on one machine, with the device name recorded; the results are
JSON lines on stdout (progress goes to stderr). Real-size architectures (the CelebA-HQ DDPM 256 and the AFHQ ADM
256 of the face and dog presets) with random weights, unless real checkpoints are passed.

    python bench/bench.py --quick                 # < ~3 min on a 2-core CPU
    python bench/bench.py                          # the full suite (40 + 40 edit steps on a GPU)
    python bench/bench.py --sections forward --batches 1,4,8 --compile
    ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 python bench/bench.py --sections forward   # an AMX CPU without AMX

Records (field ``record``):

* ``env``: device, device name, torch and oneDNN versions, threads, the CPU's features (AMX, AVX512-BF16, ...),
  whether the fused CPU path applies, ``ONEDNN_MAX_CPU_ISA``, the resolved ``--precision``, load average.
* ``forward``: per architecture and batch size, images/s of the fp32 eager baseline and of the optimized path
  (``optimize_model``: on CPUs with oneDNN bf16 kernels the fused path of ``dclip_cli.models.fused``, elsewhere
  autocast in the resolved precision + channels_last; + ``torch.compile`` with ``--compile``), their ratio, FLOPs
  per image and achieved TFLOP/s; on a GPU the fraction of its peak bf16 FLOP/s. Where the fused path applies, the
  plain autocast path (the optimized path before issue 13) is timed in the same interleaved loop
  (``optimized_autocast``), and each record gives the relative RMS error of eps against fp32 for both.
* ``forward_profile``: where the time of one optimized forward goes (torch profiler, self CPU time per kind of
  operation: convolutions, GroupNorm, SiLU, adds, cat, copies, attention, ...), for the optimized path and, where
  the fused path applies, for the autocast path; first batch size only.
* ``edit``: inversion (N-1 calls) + generation (N calls) seconds, baseline vs optimized, and the image difference
  (max abs and PSNR) between fp32 and the optimized precision, on the same latent and end to end.
* ``finetune``: seconds per fine-tuning step (one image through all ``--ft-steps`` training timesteps, backward
  and optimizer step(s) included) and peak memory (CUDA max allocated, or peak RSS of a fresh process on CPU)
  for original vs efficient vs original with gradient checkpointing, through ``dclip_cli.training.finetune``.
* ``summary``: the headline ratios.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dclip_cli import precision as P
from dclip_cli.device import resolve_device
from dclip_cli.diffusion import ddim
from dclip_cli.models import build_model, load_diffusion_model

ROOT = Path(__file__).resolve().parent.parent
FACE_IMAGE = ROOT / "dclip_cli" / "data" / "face.png"

#: dense bf16 tensor-core peaks (TFLOP/s, fp32 accumulate, no sparsity), matched by substring of the device name
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 6000 Ada", 364.0),
    ("A6000", 155.0),
    ("RTX 4090", 165.0),
    ("RTX 3090", 71.0),
)


def cpu_features() -> dict[str, bool]:
    """The CPU features that decide the bf16 kernels: AMX, AVX512-BF16, AVX512, AVX2 (from /proc/cpuinfo)."""
    from dclip_cli.speed_profile import cpu_signature

    have = set(cpu_signature()["cpu_features"])
    return {name: name in have for name in ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")}


def onednn_version() -> str | None:
    """oneDNN's version from torch's build configuration (``MKL-DNN v3.x``), or ``None``."""
    import re

    match = re.search(r"(?:MKL-DNN|oneDNN) v([0-9][0-9.]*)", torch.__config__.show())
    return match.group(1) if match else None


def fused_available(device: torch.device, dtype: torch.dtype | None) -> bool:
    if device.type != "cpu" or dtype is None:
        return False
    from dclip_cli.models.fused import cpu_fusion_supported

    return cpu_fusion_supported(dtype)


def peak_bf16_tflops(name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS:
        if key in name:
            return value
    return None


# ------------------------------------------------------------------------------------------------ helpers


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record, sort_keys=False), flush=True)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def arch_config(arch: str) -> dict[str, Any]:
    """The presets' real-size configurations (face: CelebA-HQ DDPM 256; dog: AFHQ ADM 256)."""
    if arch == "ddpm":
        from dclip_cli.models.configs import DDPM_256_CONFIG

        return dict(DDPM_256_CONFIG)
    from dclip_cli.models.configs import ADM_AFHQ_CONFIG

    return dict(ADM_AFHQ_CONFIG)


def make_model(arch: str, device: torch.device, checkpoint: str | None = None, seed: int = 0) -> nn.Module:
    """The real-size model with random weights (PyTorch's default init everywhere, zero-initialised layers
    re-drawn so that eps depends on the input), or loaded from ``checkpoint``."""
    if checkpoint:
        return load_diffusion_model(checkpoint, arch=arch, device=device).eval()
    model = build_model(arch, arch_config(arch))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            if module is not model and hasattr(module, "reset_parameters"):
                module.reset_parameters()  # type: ignore[operator]
    return model.to(device).eval()


def test_image(size: int, batch: int, device: torch.device) -> torch.Tensor:
    """The sample face photo (centre-cropped, resized), repeated with small flips/shifts; (B, 3, S, S) in [-1, 1]."""
    try:
        from dclip_cli.images import load_and_prepare

        x, _ = load_and_prepare(FACE_IMAGE, size)
    except Exception:  # any problem: a smooth synthetic image does as well for timing
        gen = torch.Generator().manual_seed(0)
        x = F.interpolate(torch.rand(1, 3, 8, 8, generator=gen) * 2 - 1, size=size, mode="bicubic")
        x = x.clamp(-1, 1)
    xs = [torch.roll(x, shifts=4 * i, dims=3) if i % 2 == 0 else x.flip(3) for i in range(batch)]
    return torch.cat(xs).to(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float, Any]:
    """(wall seconds, process CPU seconds, result) of one call."""
    P.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    P.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, repeats: int, warmup: int = 1):
    """Time each function ``repeats`` times, alternating between them (fair under shared machines)."""
    with torch.no_grad():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        walls: dict[str, list[float]] = {k: [] for k in fns}
        cpus: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                w, c, _ = timed(fn, device)
                walls[name].append(w)
                cpus[name].append(c)
    return walls, cpus


def flops_per_image(arch: str) -> float:
    """Forward FLOPs of one 256x256 image (2 per multiply-add), counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build_model(arch, arch_config(arch))
        x = torch.zeros(1, 3, 256, 256)
        t = torch.full((1,), 500.0)
    with FlopCounterMode(display=False) as counter:
        model(x, t)
    return float(counter.get_total_flops())


def image_diff(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """max |a - b| in model units ([-1, 1]), the max 8-bit difference, and PSNR (dB) of the images in [0, 1]."""
    a01 = (a.clamp(-1, 1) + 1) / 2
    b01 = (b.clamp(-1, 1) + 1) / 2
    mse = float((a01 - b01).pow(2).mean())
    a8 = (a01 * 255).round()
    b8 = (b01 * 255).round()
    return {
        "max_abs": round(float((a - b).abs().max()), 6),
        "max_abs_8bit": int((a8 - b8).abs().max()),
        "psnr_db": round(10 * math.log10(1.0 / mse), 2) if mse > 0 else float("inf"),
    }


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float32."""
    return float((a.float() - b.float()).norm() / b.float().norm())


#: kinds of operations in the forward profile, matched in order against the profiler's operator names
PROFILE_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("conv", ("convolution",)),
    ("group_norm", ("group_norm",)),
    ("silu", ("silu", "sigmoid")),
    ("linear", ("addmm", "aten::linear", "aten::mm")),
    ("add", ("aten::add",)),
    ("mul", ("aten::mul",)),
    ("cat", ("aten::cat",)),
    ("copy_cast", ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous")),
    ("pad_fill", ("constant_pad", "aten::fill_", "aten::zero_")),
    ("attention", ("scaled_dot_product", "aten::bmm", "softmax")),
    ("resample", ("upsample", "avg_pool", "interpolate")),
)


def forward_profile(fns: dict[str, Callable[[], Any]], calls: int = 3) -> dict[str, dict[str, Any]]:
    """Self CPU time per kind of operation (``PROFILE_KINDS``) of each ``fns[name]()``, in ms per call and percent.

    The functions are profiled in turn, one call at a time (A, B, A, B, ...), so that a change in the machine's
    load affects them alike. Self time counts each operator once (a convolution's own time, not its callers'); it
    is the calling thread's time, close to the wall time of these parallel operators.
    """
    from torch.profiler import ProfilerActivity, profile

    per_kind: dict[str, dict[str, float]] = {name: {} for name in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn()
        for _ in range(calls):
            for name, fn in fns.items():
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    fn()
                for event in prof.key_averages():
                    if event.self_cpu_time_total <= 0:
                        continue
                    kind = next(
                        (k for k, keys in PROFILE_KINDS if any(key in event.key for key in keys)), "other"
                    )
                    per_kind[name][kind] = (
                        per_kind[name].get(kind, 0.0) + event.self_cpu_time_total / calls / 1e3
                    )
    out = {}
    for name, kinds in per_kind.items():
        total = sum(kinds.values())
        ordered = sorted(kinds.items(), key=lambda kv: -kv[1])
        out[name] = {
            "total_ms": round(total, 1),
            "ms": {k: round(v, 1) for k, v in ordered},
            "percent": {k: round(100 * v / total, 1) for k, v in ordered},
        }
    return out


# ------------------------------------------------------------------------------------------------ sections


def bench_forward(args: argparse.Namespace, arch: str, base: nn.Module, fast: Callable, env: dict) -> dict:
    device = env["device_obj"]
    compiled = None
    compile_s = None
    if args.compile:
        compiled = P.optimize_model(copy.deepcopy(P.unwrap_model(fast)), precision=env["dtype"], compile=True)
    flops = flops_per_image(arch)
    results = []
    for batch in args.batches:
        x = torch.randn(batch, 3, 256, 256, generator=torch.Generator().manual_seed(batch)).to(device)
        t = torch.full((batch,), 500.0, device=device)
        fns: dict[str, Callable[[], Any]] = {
            "fp32_eager": partial(base, x, t),
            "optimized": partial(fast, x, t),
        }
        autocast_path = env.get("autocast_model")
        if autocast_path is not None:
            fns["optimized_autocast"] = partial(autocast_path, x, t)
        if compiled is not None:
            log(f"forward {arch} b{batch}: compiling (first call)")
            with torch.no_grad():
                w, _, _ = timed(partial(compiled, x, t), device)
            compile_s = round(w, 2) if compile_s is None else compile_s
            fns["optimized_compiled"] = partial(compiled, x, t)
        log(f"forward {arch} b{batch}: {len(fns)} variants x {args.repeats} repeats")
        walls, cpus = interleaved(fns, device, args.repeats)
        rec: dict[str, Any] = {
            "record": "forward",
            "arch": arch,
            "batch": batch,
            "precision": env["precision"],
            "device_name": env["device_name"],
            "loadavg": loadavg(),
            "gflop_per_image": round(flops / 1e9, 1),
            "cpu_allocator": args.cpu_allocator,
        }
        for name in fns:
            best = min(walls[name])
            rec[name] = {
                "s_per_call_min": round(best, 4),
                "s_per_call_median": round(statistics.median(walls[name]), 4),
                "cpu_s_min": round(min(cpus[name]), 3),
                "images_per_s": round(batch / best, 3),
                "tflops": round(flops * batch / best / 1e12, 3),
            }
        rec["optimized_path"] = getattr(fast, "execution_path", None)
        rec["speedup"] = round(min(walls["fp32_eager"]) / min(walls["optimized"]), 3)
        if "optimized_autocast" in walls:
            rec["speedup_autocast"] = round(min(walls["fp32_eager"]) / min(walls["optimized_autocast"]), 3)
            rec["fused_vs_autocast"] = round(min(walls["optimized_autocast"]) / min(walls["optimized"]), 3)
            # medians too: on a shared machine the fastest call of each can be an outlier
            med = {k: statistics.median(v) for k, v in walls.items()}
            rec["speedup_median"] = round(med["fp32_eager"] / med["optimized"], 3)
            rec["speedup_autocast_median"] = round(med["fp32_eager"] / med["optimized_autocast"], 3)
        with torch.no_grad():
            ref = base(x, t)
            rec["rel_rms_error_vs_fp32"] = round(rel_rms(fast(x, t), ref), 5)
            if autocast_path is not None:
                rec["rel_rms_error_vs_fp32_autocast"] = round(rel_rms(autocast_path(x, t), ref), 5)
        if compiled is not None:
            rec["speedup_compiled"] = round(min(walls["fp32_eager"]) / min(walls["optimized_compiled"]), 3)
            rec["compile_s"] = compile_s
        peak = env.get("peak_bf16_tflops")
        if peak:
            best_name = min((n for n in fns if n != "fp32_eager"), key=lambda n: min(walls[n]))
            rec["peak_bf16_tflops"] = peak
            rec["fraction_of_peak_bf16"] = round(rec[best_name]["tflops"] / peak, 4)
            rec["fraction_variant"] = best_name
        emit(rec)
        results.append(rec)
        if args.profile and batch == args.batches[0] and device.type == "cpu":
            variants = {"optimized": fns["optimized"]}
            if "optimized_autocast" in fns and not args.quick:
                variants["optimized_autocast"] = fns["optimized_autocast"]
            if not args.quick:
                variants["fp32_eager"] = fns["fp32_eager"]
            log(f"forward {arch} b{batch}: profile of {', '.join(variants)} (interleaved)")
            profiles = forward_profile(variants)
            paths = {
                "optimized": rec["optimized_path"],
                "optimized_autocast": "autocast",
                "fp32_eager": "fp32",
            }
            fp32 = profiles.get("fp32_eager")
            for name, prof in profiles.items():
                out = {"record": "forward_profile", "arch": arch, "batch": batch, "variant": name,
                       "path": paths[name], "loadavg": loadavg(), **prof}  # fmt: skip
                conv_ms = prof["ms"].get("conv")
                if fp32 is not None and name != "fp32_eager" and conv_ms:
                    # the measured ceiling: fp32 eager against this path's convolutions alone (every other
                    # operation free), and the convolution kernels' own bf16/fp32 ratio
                    out["speedup_in_profile"] = round(fp32["total_ms"] / prof["total_ms"], 3)
                    out["ceiling_speedup_convs_only"] = round(fp32["total_ms"] / conv_ms, 3)
                    out["conv_kernel_speedup"] = round(fp32["ms"].get("conv", 0.0) / conv_ms, 3)
                emit(out)
    return {"arch": arch, "forward": results}


def bench_edit(args: argparse.Namespace, arch: str, base: nn.Module, fast: Callable, env: dict) -> dict:
    device = env["device_obj"]
    n, t0 = args.steps, args.t0
    x0 = test_image(256, args.edit_batch, device)
    log(
        f"edit {arch}: inversion {n - 1} + generation {n} calls, batch {args.edit_batch}, baseline vs optimized"
    )

    def pipeline(model: Callable) -> tuple[torch.Tensor, torch.Tensor]:
        lat = ddim.invert(model, x0, t0=t0, n_steps=n)
        return lat, ddim.generate(model, lat, t0=t0, n_steps=n)

    with torch.no_grad():
        with P.track_peak_memory(device) as mem_base:
            w_base, c_base, (lat32, rec32) = timed(lambda: pipeline(base), device)
        with P.track_peak_memory(device) as mem_fast:
            w_fast, c_fast, (lat_fast, rec_fast) = timed(lambda: pipeline(fast), device)
        w_gen, _, gen_same = timed(lambda: ddim.generate(fast, lat32, t0=t0, n_steps=n), device)

    def mem(m: dict) -> dict:
        return {
            "peak_bytes": m.get("peak_bytes"),
            "peak_minus_start_bytes": (m["peak_bytes"] - m["start_bytes"])
            if m.get("peak_bytes") is not None and m.get("start_bytes") is not None
            else None,
        }

    rec = {
        "record": "edit",
        "arch": arch,
        "batch": args.edit_batch,
        "t0": t0,
        "inv_steps": n,
        "gen_steps": n,
        "model_calls": 2 * n - 1,
        "precision": env["precision"],
        "device_name": env["device_name"],
        "loadavg": loadavg(),
        "fp32_eager_s": round(w_base, 3),
        "optimized_s": round(w_fast, 3),
        "fp32_eager_cpu_s": round(c_base, 3),
        "optimized_cpu_s": round(c_fast, 3),
        "speedup": round(w_base / w_fast, 3),
        "s_per_image_optimized": round(w_fast / args.edit_batch, 3),
        "cpu_allocator": args.cpu_allocator,
        "memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_peak_rss",
        "fp32_eager_memory": mem(mem_base),
        "optimized_memory": mem(mem_fast),
        # generation from the fp32 latent with both precisions: the precision's effect on the edit itself
        "diff_same_latent": image_diff(gen_same, rec32),
        # the whole pipeline in the optimized precision vs the whole pipeline in fp32
        "diff_end_to_end": image_diff(rec_fast, rec32),
        "latent_max_abs_diff": round(float((lat_fast - lat32).abs().max()), 6),
        "reconstruction_psnr_fp32_db": image_diff(rec32, x0)["psnr_db"],
        "weights": "checkpoint" if getattr(args, f"checkpoint_{arch}") else "random",
    }
    emit(rec)
    return rec


# ---------------------------------------------------------------------------------------- fine-tuning (child)


class StandInDirectionalLoss(nn.Module):
    """A cheap frozen stand-in for the directional CLIP loss (``--clip standin``).

    Images are resized to 224 (bicubic, as CLIP's preprocessing), embedded by a frozen random 16x16 patch
    convolution to 512 dims and mean-pooled; L_dir = 1 - cos(f(x_gen) - f(x_src), a fixed direction), in [0, 2].
    It has a gradient like the real loss but none of CLIP ViT-B/16's cost, so fine-tuning figures measured with
    it are the diffusion model's share.
    """

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.embed = nn.Conv2d(3, 512, 16, stride=16)
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(self.embed.weight.shape, generator=gen) * 0.02)
            nn.init.zeros_(self.embed.bias)  # type: ignore[arg-type]
        self.register_buffer("direction", torch.randn(1, 512, generator=gen))
        self.requires_grad_(False)
        self.to(device)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=224, mode="bicubic", align_corners=False, antialias=True)
        return self.embed(x).mean(dim=(2, 3))

    def forward(self, x_src: torch.Tensor, src_text: str, x_gen: torch.Tensor, trg_text: str) -> torch.Tensor:
        delta = self.features(x_gen) - self.features(x_src).detach()
        direction: torch.Tensor = self.direction  # type: ignore[assignment]
        return (1.0 - F.cosine_similarity(delta, direction, dim=1)).mean()


def make_clip_loss(kind: str, device: torch.device) -> tuple[Callable, str]:
    if kind == "standin":
        return StandInDirectionalLoss(device), "stand-in (frozen random patch embedding, no CLIP)"
    import open_clip

    from dclip_cli.losses.clip import ClipModel, DirectionalCLIPLoss

    net = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None)
    prec = "fp32"
    if device.type == "cuda":  # CLIP runs in fp16 on CUDA, as in the original (reference 21.4)
        from open_clip.model import convert_weights_to_lp

        convert_weights_to_lp(net, dtype=torch.float16)
        prec = "fp16"
    clip = ClipModel(net, name="random ViT-B/16", precision=prec).to(device)
    loss = DirectionalCLIPLoss(clip)
    return loss, f"open-clip ViT-B/16 with random weights ({prec}), 79-template text direction"


def finetune_child(params: dict[str, Any]) -> dict[str, Any]:
    """One fine-tuning measurement in this (fresh) process; returns the record."""
    from dclip_cli.training import FinetuneConfig, finetune

    device = torch.device(params["device"])
    if params.get("threads"):
        torch.set_num_threads(int(params["threads"]))
    arch, variant = params["arch"], params["variant"]
    mode: Any = "efficient" if variant.startswith("efficient") else "original"
    ckpt = "+ckpt" in variant
    model = make_model(arch, device, params.get("checkpoint"))
    prec = params["precision"]
    dtype = P.resolve_precision(prec, device, training=True)
    runner: nn.Module = (
        P.optimize_model(model, precision=dtype, training=True) if dtype is not None else model
    )
    P.set_gradient_checkpointing(runner, ckpt)
    clip_loss, clip_desc = make_clip_loss(params["clip"], device)
    n_images = int(params["images"])
    x0 = test_image(256, n_images, device)
    t0, steps = int(params["t0"]), int(params["ft_steps"])
    gen = torch.Generator().manual_seed(0)
    x_lat = ddim.q_sample(x0.cpu(), t0, generator=gen).to(device)  # stands in for the inverted latents
    if hasattr(clip_loss, "text_direction"):
        clip_loss.text_direction("face", "angry face")  # the 79-template text pass, once, outside the timing
    config = FinetuneConfig(t0=t0, n_train_steps=steps, n_inv_steps=steps, n_gen_steps=steps, mode=mode,
                            epochs=1, batch_size=1, lr=8e-6)  # fmt: skip
    ends: list[float] = []

    def callback(info: dict[str, Any]) -> None:
        if info["step"] == info["steps"]:
            P.synchronize(device)
            ends.append(time.perf_counter())

    gc.collect()
    with P.track_peak_memory(device) as mem:
        P.synchronize(device)
        start = time.perf_counter()
        finetune(runner, x0, x_lat, src_text="face", trg_text="angry face", clip_loss=clip_loss, config=config,
                 callback=callback)  # fmt: skip
    starts = [start, *ends[:-1]]
    per_image = [e - s for s, e in zip(starts, ends, strict=True)]
    peak, start_bytes = mem.get("peak_bytes"), mem.get("start_bytes")
    return {
        "record": "finetune",
        "arch": arch,
        "variant": variant,
        "mode": mode,
        "checkpointing": ckpt,
        "precision": P.precision_name(dtype),
        "ft_steps": steps,
        "images": n_images,
        "batch": 1,
        "s_per_step": round(per_image[-1], 3),
        "s_per_step_all": [round(v, 3) for v in per_image],
        "first_step_includes_setup": n_images == 1,
        "memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_peak_rss",
        "peak_bytes": peak,
        "peak_gib": round(peak / 2**30, 3) if peak else None,
        "peak_minus_start_bytes": (peak - start_bytes)
        if peak is not None and start_bytes is not None
        else None,
        "start_bytes": start_bytes,
        "clip_loss": clip_desc,
        "loop": "dclip_cli.training.finetune",
        "cpu_allocator": params.get("cpu_allocator", "default"),
        "weights": "checkpoint" if params.get("checkpoint") else "random",
    }


def bench_finetune(args: argparse.Namespace, env: dict) -> list[dict]:
    out = []
    for arch in args.ft_archs:
        for prec in args.ft_precisions:
            for variant in args.ft_variants:
                params = {
                    "device": str(env["device_obj"]),
                    "threads": args.threads,
                    "arch": arch,
                    "variant": variant,
                    "precision": prec,
                    "clip": args.clip,
                    "images": args.ft_images,
                    "t0": args.t0,
                    "ft_steps": args.ft_steps,
                    "checkpoint": getattr(args, f"checkpoint_{arch}"),
                    "cpu_allocator": args.cpu_allocator,
                }
                log(
                    f"finetune {arch} {variant} {prec}: {args.ft_steps} steps, {args.ft_images} image(s), subprocess"
                )
                cmd = [sys.executable, str(Path(__file__).resolve()), "--finetune-child", json.dumps(params)]
                proc = subprocess.run(
                    [*cmd, "--cpu-allocator", args.cpu_allocator],
                    capture_output=True,
                    text=True,
                )
                if proc.returncode != 0:
                    rec = {"record": "finetune", "arch": arch, "variant": variant, "precision": prec,
                           "error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}  # fmt: skip
                    log(proc.stderr[-2000:])
                else:
                    rec = json.loads(proc.stdout.strip().splitlines()[-1])
                rec["device_name"] = env["device_name"]
                rec["loadavg"] = loadavg()
                emit(rec)
                out.append(rec)
    return out


def forward_with_default_allocator(args: argparse.Namespace) -> list[dict]:
    """The forward section again in a fresh process with glibc's default allocator (CPU)."""
    archs = args.archs[:1] if args.quick else args.archs
    batches = args.batches[:1] if args.quick else args.batches
    cmd = [sys.executable, str(Path(__file__).resolve()), "--sections", "forward", "--cpu-allocator", "default",
           "--compare-allocator", "off", "--archs", ",".join(archs), "--batches", ",".join(map(str, batches)),
           "--repeats", str(args.repeats), "--precision", args.precision, "--device", args.device]  # fmt: skip
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.no_channels_last:
        cmd.append("--no-channels-last")
    for arch in archs:
        if getattr(args, f"checkpoint_{arch}"):
            cmd += [f"--checkpoint-{arch}", getattr(args, f"checkpoint_{arch}")]
    log(
        f"forward {','.join(archs)} b{','.join(map(str, batches))} again with the default glibc allocator (subprocess)"
    )
    proc = subprocess.run(cmd, capture_output=True, text=True)
    out = []
    for line in proc.stdout.splitlines():
        rec = json.loads(line)
        if rec.get("record") == "forward":
            rec["record"] = "forward_default_allocator"
            emit(rec)
            out.append(rec)
    if proc.returncode != 0:
        log(proc.stderr[-2000:])
    return out


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short run (< ~3 min on a 2-core CPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="optimized path precision: auto|fp32|bf16|fp16")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile on CPUs)")
    p.add_argument("--no-channels-last", action="store_true", help="optimized path without channels_last")
    p.add_argument(
        "--no-profile", dest="profile", action="store_false", help="skip the per-operation forward profile"
    )
    p.add_argument(
        "--no-autocast-variant",
        dest="autocast_variant",
        action="store_false",
        help="do not time the plain autocast path next to the fused one",
    )
    p.add_argument("--sections", default="forward,edit,finetune")
    p.add_argument("--archs", default=None, help="ddpm,adm (quick: both for forward, ddpm for edit)")
    p.add_argument("--edit-archs", default=None)
    p.add_argument("--batches", default=None, help="forward batch sizes (default 1,4,8; quick: 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per variant (default 3; quick: 2)")
    p.add_argument("--steps", type=int, default=None, help="edit inversion = generation points N (GPU 40)")
    p.add_argument("--edit-batch", type=int, default=1)
    p.add_argument("--t0", type=int, default=500)
    p.add_argument("--ft-archs", default="ddpm")
    p.add_argument("--ft-variants", default=None, help="original,original+ckpt,efficient[,efficient+ckpt]")
    p.add_argument(
        "--ft-precisions", default=None, help="fine-tune precisions (default fp32,auto; quick auto)"
    )
    p.add_argument("--ft-steps", type=int, default=None, help="training timesteps (6 in the recipe; quick 2)")
    p.add_argument("--ft-images", type=int, default=None, help="images per measurement (last one timed)")
    p.add_argument("--clip", choices=("standin", "vit-b-16"), default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument(
        "--cpu-allocator",
        choices=("default", "tuned"),
        default=None,
        help="glibc allocator of this run, for every variant alike (CPU default: tuned, i.e. "
        "precision.tune_cpu_allocator; see --compare-allocator)",
    )
    p.add_argument(
        "--compare-allocator",
        choices=("on", "off"),
        default=None,
        help="CPU: also time the forward in a fresh process with glibc's default allocator (default on)",
    )
    p.add_argument("--checkpoint-ddpm", default=None, help="real DDPM weights instead of random ones")
    p.add_argument("--checkpoint-adm", default=None, help="real ADM weights instead of random ones")
    p.add_argument("--finetune-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    args.device_obj = resolve_device(args.device)
    cpu = args.device_obj.type == "cpu"
    q = args.quick
    args.sections = [s for s in args.sections.split(",") if s]
    args.archs = (args.archs or "ddpm,adm").split(",")
    args.edit_archs = (args.edit_archs or ("ddpm" if q else ",".join(args.archs))).split(",")
    args.batches = [int(b) for b in (args.batches or ("1" if q else "1,4,8")).split(",")]
    args.repeats = args.repeats or (2 if q else 3)
    args.steps = args.steps or (3 if q and cpu else 10 if cpu else 40)
    args.ft_archs = args.ft_archs.split(",")
    args.ft_variants = (args.ft_variants or "original,original+ckpt,efficient").split(",")
    args.ft_precisions = (args.ft_precisions or ("auto" if q else "fp32,auto")).split(",")
    args.ft_steps = args.ft_steps or (2 if q and cpu else 6)
    args.ft_images = args.ft_images or (1 if q else 2)
    args.clip = args.clip or ("standin" if q and cpu else "vit-b-16")
    args.cpu_allocator = args.cpu_allocator or ("tuned" if cpu else "default")
    args.compare_allocator = (
        (args.compare_allocator or "on") == "on" and cpu and args.cpu_allocator == "tuned"
    )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cpu_allocator == "tuned":
        P.tune_cpu_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.finetune_child:
        emit(finetune_child(json.loads(args.finetune_child)))
        return 0
    device = args.device_obj
    dtype = P.resolve_precision(args.precision, device)
    name = P.device_name(device)
    env = {
        "record": "env",
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": P.cpu_name(),
        "cpu_native_bf16": P.cpu_has_native_bf16(),
        "cpu_features": cpu_features(),
        "onednn": onednn_version(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA"),
        "cpu_fused_path": fused_available(device, dtype),
        "precision_requested": args.precision,
        "precision": P.precision_name(dtype),
        "channels_last": not args.no_channels_last,
        "compile": args.compile,
        "cpu_allocator": args.cpu_allocator,
        "quick": args.quick,
        "loadavg": loadavg(),
        "sections": args.sections,
    }
    if device.type == "cuda":
        env["peak_bf16_tflops"] = peak_bf16_tflops(name)
        # the fp32 baseline's convolutions use TF32 tensor cores when this is on (PyTorch's default)
        env["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        env["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    emit(env)
    env = {**env, "device_obj": device, "dtype": dtype}
    t_start = time.perf_counter()
    forward_recs: list[dict] = []
    edit_recs: list[dict] = []
    archs = [a for a in dict.fromkeys(args.archs + args.edit_archs)]
    for arch in archs:
        do_forward = "forward" in args.sections and arch in args.archs
        do_edit = "edit" in args.sections and arch in args.edit_archs
        if not (do_forward or do_edit):
            continue
        log(f"building {arch} (256x256, {'checkpoint' if getattr(args, f'checkpoint_{arch}') else 'random'})")
        base = make_model(arch, device, getattr(args, f"checkpoint_{arch}"))
        fast_model = copy.deepcopy(base)
        fast = P.optimize_model(fast_model, precision=dtype, channels_last=not args.no_channels_last)
        autocast_model = None
        if do_forward and args.autocast_variant and env["cpu_fused_path"] and not args.no_channels_last:
            # the optimized path before issue 13: autocast + channels_last + cached bf16 weights, no fusion
            autocast_model = P.optimize_model(copy.deepcopy(base), precision=dtype, fuse=False)
        if do_forward:
            fenv = {**env, "autocast_model": autocast_model}
            forward_recs += bench_forward(args, arch, base, fast, fenv)["forward"]
        del autocast_model
        if do_edit:
            edit_recs.append(bench_edit(args, arch, base, fast, env))
        del base, fast, fast_model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    untuned: list[dict] = []
    if args.compare_allocator and "forward" in args.sections:
        untuned = forward_with_default_allocator(args)
    ft_recs = bench_finetune(args, env) if "finetune" in args.sections else []

    summary: dict[str, Any] = {"record": "summary", "device_name": name, "precision": env["precision"]}
    for r in forward_recs:
        summary[f"forward_speedup_{r['arch']}_b{r['batch']}"] = r["speedup"]
        if "speedup_autocast" in r:
            summary[f"forward_speedup_autocast_{r['arch']}_b{r['batch']}"] = r["speedup_autocast"]
            summary[f"forward_fused_vs_autocast_{r['arch']}_b{r['batch']}"] = r["fused_vs_autocast"]
        if "fraction_of_peak_bf16" in r and r["batch"] == max(args.batches):
            summary[f"fraction_of_peak_bf16_{r['arch']}_b{r['batch']}"] = r["fraction_of_peak_bf16"]
    if forward_recs:
        worst = min(r["speedup"] for r in forward_recs)
        summary["forward_speedup_min"] = worst
        if device.type == "cpu":
            summary["cpu_goal_2x_met"] = worst >= 2.0
    for r in untuned:
        mine = next((f for f in forward_recs if (f["arch"], f["batch"]) == (r["arch"], r["batch"])), None)
        if mine is not None:
            ratio = r["fp32_eager"]["s_per_call_min"] / mine["optimized"]["s_per_call_min"]
            summary[f"forward_speedup_vs_default_allocator_fp32_{r['arch']}_b{r['batch']}"] = round(ratio, 3)
            summary[f"forward_allocator_effect_fp32_{r['arch']}_b{r['batch']}"] = round(
                r["fp32_eager"]["s_per_call_min"] / mine["fp32_eager"]["s_per_call_min"], 3
            )
    cross = [v for k, v in summary.items() if k.startswith("forward_speedup_vs_default_allocator")]
    if cross:
        summary["cpu_goal_2x_met_vs_default_fp32_process"] = min(cross) >= 2.0
    for r in edit_recs:
        summary[f"edit_speedup_{r['arch']}"] = r["speedup"]
        summary[f"edit_psnr_same_latent_{r['arch']}_db"] = r["diff_same_latent"]["psnr_db"]
    for r in ft_recs:
        if "error" not in r:
            key = f"finetune_{r['arch']}_{r['variant']}_{r['precision']}"
            summary[key + "_s_per_step"] = r["s_per_step"]
            summary[key + "_peak_gib"] = r["peak_gib"]
    summary["total_s"] = round(time.perf_counter() - t_start, 1)
    summary["loadavg_end"] = loadavg()
    emit(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
