"""``bench/gpu_check.py`` (issue 14) with ``--device cpu --tiny``: every check runs the code paths the GPU run
takes, on tiny models, reports finite outputs as JSON lines and a summary table; a crash fails the run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _records(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_every_check_runs_on_tiny_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert _gpu_check().main(["--device", "cpu", "--tiny"]) == 0
    captured = capsys.readouterr()
    records = _records(captured.out)
    assert all(r["ok"] for r in records), [r for r in records if not r["ok"]]
    by_check: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_check.setdefault(r["check"], []).append(r)
    assert list(by_check) == ["env", "forward", "edit", "finetune", "compile", "clip_fp16", "summary"]
    forward = by_check["forward"]
    assert [(r["arch"], r["precision"]) for r in forward] == [
        ("ddpm", "fp32"),
        ("ddpm", "bf16"),
        ("adm", "fp32"),
        ("adm", "bf16"),
    ]
    assert all(r["images_per_s"] > 0 and r["gflops_per_image"] > 0 for r in forward)
    assert [r["batch"] for r in by_check["edit"]] == [1, 8] and all(
        r["s_per_image"] > 0 for r in by_check["edit"]
    )
    finetune = {r["mode"]: r for r in by_check["finetune"]}
    assert finetune["original"]["checkpointing"] is True and finetune["efficient"]["checkpointing"] is False
    assert all(r["peak_gb"] > 0 and r["final_loss"] is not None for r in finetune.values())
    assert by_check["compile"][0]["backend"] == "eager" and by_check["compile"][0]["max_abs_diff"] == 0.0
    assert by_check["clip_fp16"][0]["dtype"] == "torch.float16"
    assert by_check["summary"][0] == {"check": "summary", "ok": True, "crashed": [], "missed_targets": []}
    assert "target" not in json.dumps(records[1:-1])  # the targets are GPU figures
    rows = [line for line in captured.err.splitlines() if line.endswith("  ok")]  # the summary table
    assert len(rows) == len(records) - 2 and rows[0].startswith("forward    ddpm fp32 2")


def test_a_crashing_check_fails_the_run_and_the_others_still_run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    gpu_check = _gpu_check()

    def crash(self: Any, mode: str) -> dict[str, Any]:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(gpu_check.Check, "finetune", crash)
    monkeypatch.setattr(gpu_check, "finite", lambda *tensors: False)  # and every output of clip_fp16 is NaN
    assert gpu_check.main(["--device", "cpu", "--tiny", "--only", "finetune,clip_fp16"]) == 1
    captured = capsys.readouterr()
    records = _records(captured.out)
    assert [r["check"] for r in records] == ["env", "finetune", "finetune", "clip_fp16", "summary"]
    assert records[1]["error"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert records[3]["ok"] is False and "error" not in records[3]
    assert records[-1] == {
        "check": "summary",
        "ok": False,
        "crashed": ["finetune", "finetune", "clip_fp16"],
        "missed_targets": [],
    }
    assert captured.err.count("CRASH") == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="there is a GPU")
def test_without_a_gpu_it_says_how_to_try_it() -> None:
    assert _gpu_check().main([]) == 2


def test_bench_measures_the_presets_real_architectures() -> None:
    """``bench/bench.py`` is a script no other test runs end to end (its real-size runs take minutes): its model
    configurations must still be the ones the face and dog presets load, whatever moved in the package."""
    from dclip_cli.presets import manager

    bench = _gpu_check().bench
    checkpoints = manager.load_registry().checkpoints
    assert bench.arch_config("ddpm") == dict(checkpoints["celeba_hq"].arch_config)
    assert bench.arch_config("adm") == dict(checkpoints["afhq_dog"].arch_config)
    assert bench.arch_config("ddpm")["ch"] == 128 and bench.arch_config("adm")["num_channels"] == 128
