"""``dclip edit`` end to end through the CLI, on tiny presets whose checkpoints come from a local HTTP server."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dclip_cli.cli.app import app
from dclip_cli.fileio import sha256_file
from dclip_cli.presets.hookspecs import hookimpl
from tests.support.editing import checkpoint_bytes, make_tiny32, setup_world, write_image
from tests.support.http_server import FileServer


@pytest.fixture
def finetune_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Count the calls of run_finetune (the real function still runs)."""
    calls: list[dict] = []
    finetune_mod = importlib.import_module("dclip_cli.training")
    real = finetune_mod.run_finetune

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(finetune_mod, "run_finetune", spy)
    return calls


def run(world, *args: str):
    result = CliRunner().invoke(app, ["edit", *world.cli_args(), *args])
    return result


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_edit_finetunes_once_then_reuses_the_library(world, finetune_calls) -> None:
    first = run(world, str(world.image), "--to", "smiling", "--domain", "tinyface")
    assert first.exit_code == 0, first.output
    out = world.image.with_name("photo.smiling.png")
    assert first.stdout.strip() == str(out)
    assert "fine-tuning one now" in first.stderr and "saved to" in first.stderr
    assert len(finetune_calls) == 1
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["settings"]["edit_model_source"] == "finetuned"
    lib_path = Path(sidecar["models"][1]["path"])
    assert lib_path.name == "smiling.safetensors" and lib_path.is_file()
    assert sidecar["models"][1]["sha256"] == sha256_file(lib_path)
    mtime = lib_path.stat().st_mtime_ns
    first_png = png(out)

    second = run(world, str(world.image), "--to", "smiling", "--domain", "tinyface", "--overwrite")
    assert second.exit_code == 0, second.output
    assert len(finetune_calls) == 1  # no second fine-tuning
    assert "fine-tuning" not in second.stderr.lower()
    assert "your edit library" in second.stderr
    assert lib_path.stat().st_mtime_ns == mtime
    again = json.loads(out.with_suffix(".json").read_text())
    assert again["settings"]["edit_model_source"] == "library"
    assert again["models"][1]["path"] == str(lib_path)
    # the library model is the one just trained: the same edit comes out
    assert np.array_equal(png(out), first_png)
    assert not np.array_equal(first_png, _reconstruction(world.image))  # and it is an edit

    # the library entry by its short name, for another text
    short = run(
        world, str(world.image), "--to", "face with a hat", "--domain", "tinyface", "--model", "smiling"
    )
    assert short.exit_code == 0, short.output
    assert f"the model named with --model ({lib_path})" in short.stderr

    # --no-finetune with a text nothing was trained for stops with an error naming the fix
    third = run(world, str(world.image), "--to", "angry", "--domain", "tinyface", "--no-finetune")
    assert third.exit_code == 1
    assert "No fine-tuned model for angry" in third.stderr and "--no-finetune" in third.stderr
    assert not world.image.with_name("photo.angry.png").exists()


def _reconstruction(image: Path) -> np.ndarray:
    """Oracle: the base model's DDIM inversion + generation of the input, as saved pixels."""
    from dclip_cli.diffusion.ddim import generate, invert
    from dclip_cli.images import load_and_prepare, to_pil

    base = make_tiny32(0)
    x0, _ = load_and_prepare(image, 32)
    with torch.no_grad():
        x_rec = generate(base, invert(base, x0, t0=200, n_steps=3), t0=200, n_steps=3)
    return np.asarray(to_pil(x_rec))


def test_strength_zero_reproduces_the_reconstruction(world) -> None:
    result = run(world, str(world.image), "--to", "smiling", "--domain", "tinyface", "--strength", "0")
    assert result.exit_code == 0, result.output
    out = png(world.image.with_name("photo.smiling.png"))
    assert np.array_equal(out, _reconstruction(world.image))
    full = run(
        world, str(world.image), "--to", "smiling", "--domain", "tinyface", "-o", str(world.root / "full")
    )
    assert full.exit_code == 0, full.output
    assert not np.array_equal(png(world.root / "full" / "photo.smiling.png"), out)
    doc = json.loads(world.image.with_name("photo.smiling.json").read_text())
    assert doc["settings"]["strength"] == 0.0


def test_sweep_writes_a_contact_sheet(world) -> None:
    result = run(world, str(world.image), "--to", "smiling", "--domain", "tinyface", "--sweep", "0,0.5,1")
    assert result.exit_code == 0, result.output
    sheet = world.image.with_name("photo.smiling.sweep.png")
    assert result.stdout.strip() == str(sheet)
    img = Image.open(sheet)
    assert img.width > 5 * 32 and img.height > 32  # input, reconstruction and three strengths, labelled
    doc = json.loads(world.image.with_name("photo.smiling.sweep.json").read_text())
    assert [s["strength"] for s in doc["sweep"]] == [0.0, 0.5, 1.0]
    assert doc["settings"]["sweep"] == [0.0, 0.5, 1.0]
    # strength 0 is the reconstruction: its PSNR against the input equals the reconstruction PSNR
    s0 = doc["sweep"][0]["metrics"]
    assert set(s0) == {"reconstruction_psnr"}
    assert not world.image.with_name("photo.smiling.png").exists()
    assert not world.image.with_name("photo.smiling.json").exists()

    bad = run(world, str(world.image), "--to", "smiling", "--domain", "tinyface", "--sweep", "0,1.5")
    assert bad.exit_code == 2
    assert "--sweep value 2 (1.5) is outside 0..1" in bad.stderr


def test_sidecar_and_compare(world) -> None:
    result = run(
        world, str(world.image), "--to", "face with blue hair", "--domain", "tinyface", "--compare",
        "--t0", "150", "--steps", "2", "--eta", "0.5", "--seed", "3", "--metrics", "clip,psnr",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = world.image.with_name("photo.face_with_blue_hair.png")
    compare = world.image.with_name("photo.face_with_blue_hair.compare.png")
    assert result.stdout.split() == [str(out), str(compare)]
    assert Image.open(compare).width > 3 * 32
    doc = json.loads(out.with_suffix(".json").read_text())
    from dclip_cli import __version__

    assert doc["dclip_version"] == __version__ and doc["command"] == "edit" and doc["seed"] == 3
    assert doc["inputs"] == [
        {
            "path": str(world.image.resolve()),
            "sha256": sha256_file(world.image),
            "size": world.image.stat().st_size,
        }
    ]
    s = doc["settings"]
    assert (s["domain"], s["edit"], s["src_text"], s["trg_text"]) == (
        "tinyface",
        None,
        "face",
        "face with blue hair",
    )
    assert (s["t0"], s["n_inv_steps"], s["n_gen_steps"], s["eta"]) == (150, 3, 2, 0.5)
    assert s["domain_detection"] == {"method": "requested"}
    roles = {m["role"]: m for m in doc["models"]}
    assert roles["base"]["name"] == "tiny_base"
    assert roles["base"]["sha256"] == __import__("hashlib").sha256(checkpoint_bytes(0)).hexdigest()
    assert roles["edit"]["t0"] == 150 and roles["edit"]["trg_text"] == "face with blue hair"
    assert roles["clip"]["sha256"] == sha256_file(world.clip)
    assert {"model", "inversion", "generation", "metrics", "total"} <= set(doc["timings"])
    m = doc["metrics"]
    assert -1 <= m["clip_directional"] <= 1 and -1 <= m["clip_target"] <= 1 and m["reconstruction_psnr"] > 0
    assert doc["outputs"]["compare"] == str(compare)


def test_official_checkpoint_and_model_file(world) -> None:
    result = run(world, str(world.image), "--to", "pixar", "--domain", "tinyface")
    assert result.exit_code == 0, result.output
    assert "official DiffusionCLIP checkpoint" in result.stderr
    assert world.server.count("/human_pixar_t201.pth") == 1
    doc = json.loads(world.image.with_name("photo.pixar.json").read_text())
    assert doc["settings"]["edit_model_source"] == "official"
    assert doc["settings"]["t0"] == 201  # the named edit's t0, read from the official file name
    official = Path(doc["models"][1]["path"])

    # the same model given as a file for another named edit: its t0 (201, from the file name) is used
    other = run(world, str(world.image), "--to", "smiling", "--domain", "tinyface", "--model", str(official),
                "-o", str(world.root / "again.png"))  # fmt: skip
    assert other.exit_code == 0, other.output
    assert "the file given with --model" in other.stderr
    assert json.loads((world.root / "again.json").read_text())["settings"]["t0"] == 201
    assert np.array_equal(png(world.root / "again.png"), png(world.image.with_name("photo.pixar.png")))

    missing = run(
        world,
        str(world.image),
        "--to",
        "pixar",
        "--domain",
        "tinyface",
        "--model",
        "nope.safetensors",
        "--overwrite",
    )
    assert missing.exit_code == 1 and "The model file nope.safetensors does not exist" in missing.stderr


def test_latent_from_dclip_invert(world) -> None:
    inv = CliRunner().invoke(
        app, ["invert", str(world.image), "--domain", "tinyface", "-o", str(world.root / "lat")]
    )
    assert inv.exit_code == 0, inv.output
    [latent] = (world.root / "lat").glob("*.safetensors")
    result = run(world, str(world.image), "--to", "smiling", "--domain", "tinyface", "--latent", str(latent),
                 "--strength", "0")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert np.array_equal(png(world.image.with_name("photo.smiling.png")), _reconstruction(world.image))
    doc = json.loads(world.image.with_name("photo.smiling.json").read_text())
    assert doc["settings"]["latent"] == str(latent.resolve())
    wrong = run(world, str(world.image), "--to", "smiling", "--domain", "tinyface", "--latent", str(latent),
                "--t0", "300", "--overwrite")  # fmt: skip
    assert wrong.exit_code == 1 and "was inverted to t0 = 200, but --t0 300" in wrong.stderr


def test_batches_skip_unreadable_images(world) -> None:
    folder = world.root / "batch"
    write_image(folder / "a.png", seed=1)
    write_image(folder / "b.jpg", seed=2, size=(50, 40))
    (folder / "broken.png").write_bytes(b"this is not an image")
    out = world.root / "out"
    result = run(world, str(folder), "--to", "smiling", "--domain", "tinyface", "-o", str(out), "-b", "2",
                 "--no-finetune", "--model", "tiny/pixar")  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "Skipping" in result.stderr and "broken.png" in result.stderr
    assert "1 of 3 input(s) could not be read and were skipped" in result.stderr
    assert files(out) == {"a.smiling.png", "a.smiling.json", "b.smiling.png", "b.smiling.json"}
    assert result.stdout.split() == [str(out / "a.smiling.png"), str(out / "b.smiling.png")]


def test_quiet_and_json(world) -> None:
    result = run(world, str(world.image), "--to", "pixar", "--domain", "tinyface", "--quiet", "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    [doc] = json.loads(result.stdout)
    assert doc["outputs"]["image"] == str(world.image.with_name("photo.pixar.png").resolve())


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["MISSING", "--to", "smiling", "--domain", "tinyface"], 2, "does not exist"),
        (["NOTIMAGE", "--to", "smiling", "--domain", "tinyface"], 1, "notes.png"),
        (["IMAGE", "--to", "smiling", "--domain", "nosuch"], 1, "No preset named 'nosuch'"),
        (["IMAGE", "--to", "smilling", "--domain", "tinyface"], 1, "Did you mean 'smiling'?"),
        (["IMAGE", "--to", "smiling", "--domain", "tinyface", "-o", "BLOCKER/out"], 1, "is a file"),
        (["IMAGE", "--to", "smiling", "--domain", "tinyface", "-o", "EXISTING"], 1, "already exists"),
        (["IMAGE", "--to", "smiling", "--domain", "tinyface", "--strength", "2"], 2, "--strength"),
        (["IMAGE", "--to", "smiling", "--domain", "tinyface", "--sweep", "0,1", "--compare"], 1, "--compare"),
    ],
)
def test_bad_inputs(world, args: list[str], code: int, message: str) -> None:
    (world.root / "in" / "notes.png").write_text("plain text, not an image")
    (world.root / "blocker").write_text("a file")
    existing = world.root / "exists.png"
    existing.write_bytes(b"keep me")
    subst = {
        "MISSING": str(world.root / "missing.png"),
        "NOTIMAGE": str(world.root / "in" / "notes.png"),
        "IMAGE": str(world.image),
        "BLOCKER/out": str(world.root / "blocker" / "out"),
        "EXISTING": str(existing),
    }
    before = files(world.root)
    result = run(world, *[subst.get(a, a) for a in args])
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert files(world.root) == before  # nothing written, nothing partial
    assert existing.read_bytes() == b"keep me"
    assert world.server.count("/tiny_base.ckpt") == 0  # refused before any model was downloaded


def test_score_any_pair(world) -> None:
    other = write_image(world.root / "other.png", seed=9)
    args = ["score", str(world.image), str(other), "--src", "face", "--trg", "smiling face", "--clip-model",
            str(world.clip), "--metrics", "clip,psnr", "--domain", "tinyface"]  # fmt: skip
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert set(row) == {"clip_directional", "clip_target", "psnr"}
    assert -1 <= row["clip_directional"] <= 1 and 0 < row["psnr"] < 60
    same_args = ["score", str(world.image), str(world.image), "--src", "face", "--trg", "old", "--clip-model",
                 str(world.clip), "--metrics", "psnr", "--json"]  # fmt: skip
    same = CliRunner().invoke(app, same_args)
    assert same.exit_code == 0
    assert json.loads(same.stdout) == {"psnr": None}  # identical images: infinite PSNR
    table = CliRunner().invoke(app, args)
    assert table.exit_code == 0
    assert "directional" in table.stdout and "PSNR" in table.stdout
    assert world.server.count("/tiny_base.ckpt") == 0  # scoring needs no diffusion model


class _FaceAligner:
    """A test plugin whose aligner "finds a face" only in images whose top-left pixel is white."""

    @hookimpl
    def register_aligners(self, register) -> None:
        from dclip_cli.presets.preset import Aligner

        def align(img, size):
            if img.getpixel((0, 0)) != (255, 255, 255):
                return None
            return img.resize((size, size))

        register(Aligner(name="test-faces", align=align))


@pytest.mark.parametrize("command", ["edit", "translate"])
@pytest.mark.parametrize("require_face", [False, True])
def test_require_face(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clip_file: Path, require_face: bool, command: str
) -> None:
    """No face found: a warning and a centre crop, or with --require-face that image is reported and skipped
    (the others complete and the exit code says something failed); edit and translate alike."""
    from dclip_cli.presets import manager
    from tests.support.editing import tiny_preset

    with FileServer() as server:
        preset = tiny_preset("tinyface", "a photo of a face", preprocess="align", aligner="test-faces")
        world = setup_world(tmp_path, server, monkeypatch, clip_file, presets=[preset])
        manager.register_plugin("test-faces", _FaceAligner())
        face = write_image(tmp_path / "in" / "face.png", seed=3)
        img = Image.open(face)
        img.putpixel((0, 0), (255, 255, 255))
        img.save(face)
        args = ["--domain", "tinyface", "-o", str(tmp_path / "out"), *world.cli_args()]
        args += ["--to", "pixar"] if command == "edit" else ["--iterations", "1", "--metrics", "none"]
        if require_face:
            args.append("--require-face")
        result = CliRunner().invoke(app, [command, str(world.image), str(face), *args])
    out = tmp_path / "out"
    tag = "pixar" if command == "edit" else "translate"
    if require_face:
        assert result.exit_code == 1, result.output
        assert "photo.png" in result.stderr and "no face" in result.stderr.lower()
        assert sorted(p.name for p in out.glob("*.png")) == [f"face.{tag}.png"]
    else:
        assert result.exit_code == 0, result.output
        assert "no face" in result.stderr.lower()
        assert sorted(p.name for p in out.glob("*.png")) == [f"face.{tag}.png", f"photo.{tag}.png"]


@pytest.mark.parametrize(
    "extra", [["--metrics", "none"], ["--eta", "0.5", "--metrics", "none"], ["--steps", "4"]]
)
def test_second_edit_reuses_the_inversion(world, extra: list[str]) -> None:
    """The latent is cached even when no reconstruction was computed (no PSNR, η > 0, other generation steps)."""
    from dclip_cli.checkpoints.cache import cache_dir

    args = [str(world.image), "--to", "pixar", "--domain", "tinyface", "--overwrite", *extra]
    first = run(world, *args, "-o", str(world.root / "a.png"))
    assert first.exit_code == 0, first.output
    entries = list((cache_dir() / "latents").rglob("*.safetensors"))
    assert len(entries) == 1
    second = run(world, *args, "-o", str(world.root / "b.png"))
    assert second.exit_code == 0, second.output
    inversion_lines = [line for line in second.stderr.splitlines() if "Inverting" in line]
    assert inversion_lines and "cached" in inversion_lines[-1]
    assert np.array_equal(png(world.root / "a.png"), png(world.root / "b.png"))


def test_eta_results_do_not_depend_on_the_batch_size(world) -> None:
    """η noise is drawn per image (seeded by --seed and the image), so batching changes no result."""
    folder = world.root / "two"
    write_image(folder / "a.png", seed=1)
    write_image(folder / "b.png", seed=2)
    outs = {}
    for bs in ("1", "2"):
        out = world.root / f"bs{bs}"
        result = run(world, str(folder), "--to", "pixar", "--domain", "tinyface", "--eta", "0.5", "--seed", "3",
                     "-b", bs, "--metrics", "none", "-o", str(out))  # fmt: skip
        assert result.exit_code == 0, result.output
        outs[bs] = [png(out / "a.pixar.png"), png(out / "b.pixar.png")]
    assert np.array_equal(outs["1"][0], outs["2"][0]) and np.array_equal(outs["1"][1], outs["2"][1])
    assert not np.array_equal(outs["1"][0], outs["1"][1])
