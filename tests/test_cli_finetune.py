"""``dclip finetune`` end to end through the CLI, on a tiny preset served by a local HTTP server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from dclip_cli.artifacts import read_artifact
from dclip_cli.cli.app import app
from tests.support.finetune import TinyPreset, tiny_preset

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny nets are far faster single-threaded on a shared CPU
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny(tmp_path: Path) -> Iterator[TinyPreset]:
    with tiny_preset(tmp_path / "preset") as t:
        yield t


def _invoke(*args: str, quiet: bool = False):
    return runner.invoke(app, ["--device", "cpu", *(["--quiet"] if quiet else []), "finetune", *args])


def test_finetune_end_to_end(tiny: TinyPreset, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--domain", "tinycat", "--text", "tiger", "--samples", "2", "--previews", "1", "--epochs", "2",
            "--clip-model", str(tiny.clip), "--l1-weight", "0.5", "-o", str(out)]  # fmt: skip
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    artifact = out / "tinycat_tiger_t200.safetensors"
    assert result.stdout.splitlines() == [str(artifact)]  # only the path on stdout
    assert "Fine-tuned 1 edit(s) of tinycat" in result.stderr and "clip" in result.stderr
    assert "latent cache: 0 hit(s), 3 computed" in result.stderr
    assert "epoch 2/2" in result.stderr
    info = read_artifact(artifact)
    assert (info.src_text, info.trg_text, info.t0, info.base_sha256) == ("cat", "tiger", 200, tiny.sha256)
    assert info.metadata["epochs"] == 2 and info.metadata["loss_weights"]["l1"] == 0.5
    assert info.metadata["clip_model"] == str(tiny.clip) and info.metadata["dtype"] == "fp32"

    again = _invoke(*args, "--epochs", "1", "--overwrite", "--save-dtype", "fp16")
    assert again.exit_code == 0, again.output
    assert "latent cache: 3 hit(s), 0 computed" in again.stderr
    with safe_open(str(artifact), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    exists = _invoke(*args)
    assert exists.exit_code == 1 and "already exists" in exists.stderr and "--overwrite" in exists.stderr


def test_named_edit_into_the_library(tiny: TinyPreset) -> None:
    from dclip_cli.checkpoints.cache import library_dir

    result = _invoke("-d", "tinycat", "--edit", "tiger", "--samples", "1", "--previews", "0", "--mode", "efficient",
                     "--clip-model", str(tiny.clip), quiet=True)  # fmt: skip
    assert result.exit_code == 0, result.output
    path = library_dir() / "tinycat" / "tiger.safetensors"
    assert result.stdout.strip() == str(path) and path.is_file()
    assert result.stderr == ""  # --quiet: no progress, no summary
    assert read_artifact(path).t0 == 201 and read_artifact(path).metadata["mode"] == "efficient"
    listed = runner.invoke(app, ["models", "list", "--json"])
    assert "tinycat/tiger" in listed.stdout


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--text", "tiger"], 2, "--domain"),
        (["-d", "tinycat", "--edit", "nope"], 1, "has no edit named 'nope'"),
        (["-d", "tinycat"], 1, "Nothing to fine-tune"),
        (["-d", "tinycat", "--text", "x", "--mode", "fast"], 2, "fast"),
        (["-d", "tinycat", "--text", "x", "--clip-weight", "0"], 1, "Every loss weight is 0"),
        (["-d", "tinycat", "--text", "x", "--text", "y", "-o", "one.safetensors"], 1, "names one file"),
    ],
)
def test_errors(tiny: TinyPreset, args: list[str], code: int, words: str) -> None:
    result = _invoke(*args)
    assert result.exit_code == code, result.output
    assert words in result.output


def test_help_does_not_import_torch() -> None:
    code = "import sys, dclip_cli.cli.finetune; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    result = runner.invoke(app, ["finetune", "--help"])
    assert result.exit_code == 0 and "--train-steps" in result.output and "--save-dtype" in result.output
