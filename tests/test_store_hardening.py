"""Issue 11 in the store: a bad file never breaks the library, names are checked whole, a pinned name accepts only
its bytes, files written follow the umask, and a full disk or a damaged CLIP file is a user error."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from dclip_cli import store
from dclip_cli.checkpoints import cache
from dclip_cli.checkpoints.registry import CheckpointSpec
from dclip_cli.cli.app import app
from dclip_cli.errors import (
    CheckpointError,
    ConfigError,
    DiskFullError,
    IncompatibleModelError,
)
from dclip_cli.presets import manager
from tests.support.editing import TINY32_CONFIG, TinyPlugin, checkpoint_bytes, make_tiny32, tiny_preset

runner = CliRunner()


@pytest.fixture
def tinyface(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a tiny preset (32x32 DDPM) is installed."""
    monkeypatch.setenv("DCLIP_LOAD_PLUGINS", "")
    manager.register_plugin("tiny", TinyPlugin([tiny_preset("tinyface", "a face")], []))


def artifact(path: Path, metadata: object, *, seed: int = 3) -> Path:
    """A dclip-format .safetensors of the tiny model with ``metadata`` as its ``dclip.metadata`` JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in make_tiny32(seed).unet.state_dict().items()}
    header = {"format": "dclip-finetuned", "format_version": "1", "dclip.metadata": json.dumps(metadata)}
    save_file(tensors, str(path), metadata=header)
    return path


GOOD_META = {
    "src_text": "face",
    "trg_text": "smiling face",
    "t0": 200,
    "base_checkpoint": "tiny_base",
    "arch": "ddpm",
    "arch_config": TINY32_CONFIG,
    "epochs": 1,
    "n_train_images": 2,
    "n_train_steps": 2,
    "mode": "original",
}


# -- point 1: damaged edit metadata ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata, problem",
    [
        ([1, 2], "dclip.metadata is a JSON list, not an object"),
        ({**GOOD_META, "t0": "abc"}, "t0 is 'abc', not a whole number from 1 to 999"),
        ({**GOOD_META, "epochs": "many"}, "epochs is 'many', not a whole number"),
        ({**GOOD_META, "src_text": 5}, "src_text is 5, not text"),
    ],
    ids=["not-an-object", "t0-text", "epochs-text", "src-number"],
)
def test_import_refuses_damaged_edit_metadata(tinyface, tmp_path: Path, metadata, problem) -> None:
    bad = artifact(tmp_path / "bad.safetensors", metadata)
    result = runner.invoke(app, ["models", "import", str(bad), "--as", "tinyface/bad"])
    assert result.exit_code == 1
    assert problem in result.stderr and "Unexpected error" not in result.stderr
    assert not (cache.library_dir() / "tinyface").exists()
    # --no-check skips loading the tensors, not the metadata schema
    result = runner.invoke(app, ["models", "import", str(bad), "--as", "tinyface/bad", "--no-check"])
    assert result.exit_code == 1 and problem in result.stderr


def test_import_checks_edit_architecture_against_the_preset(tinyface, tmp_path: Path) -> None:
    with pytest.raises(IncompatibleModelError, match="fine-tuned from a ADM model"):
        store.import_file(artifact(tmp_path / "adm.safetensors", {**GOOD_META, "arch": "adm"}), "tinyface/x")
    wrong = tmp_path / "wrong.pth"
    sd = make_tiny32().unet.state_dict()
    sd["conv_in.weight"] = torch.zeros(7, 3, 3, 3)  # a shape the preset's base does not have
    torch.save(sd, wrong)
    with pytest.raises(CheckpointError, match=r"for preset 'tinyface'\) does not fit the DDPM architecture"):
        store.import_file(wrong, "tinyface/x")
    good = store.import_file(artifact(tmp_path / "good.safetensors", GOOD_META), "tinyface/good")
    assert good == cache.library_dir() / "tinyface" / "good.safetensors"


def test_library_scan_skips_a_damaged_entry_with_one_warning(tinyface) -> None:
    lib = cache.library_dir() / "tinyface"
    artifact(lib / "broken.safetensors", [1, 2])  # copied in by hand, bypassing import
    artifact(lib / "bad_t0.safetensors", {**GOOD_META, "t0": "abc"})
    (lib / "truncated.safetensors").write_bytes(b"\x10\x00\x00")
    good = artifact(lib / "smiling.safetensors", GOOD_META)
    preset = manager.get_registry().preset("tinyface")
    said: list[str] = []

    def find() -> Path | None:
        return store.find_match(
            preset,
            "face",
            "smiling face",
            base_sha256=None,
            t0=200,
            progress=lambda e: said.append(e.message),
        )

    assert find() == good
    assert len(said) == 3
    for name, text in [
        ("bad_t0", "t0 is 'abc'"),
        ("broken", "dclip.metadata is a JSON list"),
        ("truncated", "not a readable .safetensors"),
    ]:
        (line,) = [w for w in said if f"{name}.safetensors" in w]
        assert text in line and line.endswith(f"Remove it with 'dclip models rm tinyface/{name}'.")
    assert find() == good and len(said) == 3  # one warning per file, not one per scan

    edits = {e.name: e for e in store.list_edits()}
    assert edits["tinyface/broken"].problem and edits["tinyface/broken"].training is None
    assert edits["tinyface/smiling"].problem is None
    assert (
        edits["tinyface/smiling"].training.summary() == "t0 200, 1 epoch, 2 images, 2 train steps, original"
    )
    listing = runner.invoke(app, ["models", "list"])
    assert listing.exit_code == 0, listing.output
    assert "dclip models rm tinyface/broken" in listing.stderr


def test_edit_command_survives_a_damaged_library_entry(world) -> None:
    """End to end: ``dclip edit`` with a damaged entry of its preset in the library warns once and edits."""
    from dclip_cli.fileio import sha256_bytes

    lib = cache.library_dir() / "tinyface"
    artifact(lib / "broken.safetensors", {**GOOD_META, "t0": "four hundred"})
    meta = {**GOOD_META, "base_sha256": sha256_bytes(checkpoint_bytes(0))}
    artifact(lib / "smiling.safetensors", meta)
    result = runner.invoke(
        app, ["edit", *world.cli_args(), str(world.image), "--to", "smiling", "--domain", "tinyface"]
    )
    assert result.exit_code == 0, result.output
    assert result.stderr.count("broken.safetensors") == 1
    assert "dclip models rm tinyface/broken" in result.stderr and "your edit library" in result.stderr


# -- point 2: whole names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tinyface/x\n", "tinyface/x\nrm", "tiny\n", "face/x\r"])
def test_names_are_validated_whole(tinyface, tmp_path: Path, name: str) -> None:
    src = tmp_path / "x.pth"
    src.write_bytes(checkpoint_bytes(0))
    with pytest.raises(ConfigError, match="is not a valid checkpoint name"):
        store.import_file(src, name)
    result = runner.invoke(app, ["models", "import", str(src), "--as", name])
    assert result.exit_code == 1 and "not a valid checkpoint name" in result.stderr
    assert not cache.library_dir().exists() or not any(cache.library_dir().rglob("*"))
    with pytest.raises(CheckpointError, match="must be letters"):
        CheckpointSpec(name=name, filename="x.ckpt")
    with pytest.raises(CheckpointError, match="plain file name"):
        CheckpointSpec(name="x", filename="x.ckpt\n")


# -- point 6: a pinned name accepts only its bytes ----------------------------------------------------------------


def test_pinned_name_refuses_other_bytes_unless_overridden(tmp_path: Path, clip_file: Path) -> None:
    """``clip-vit-b-16`` pins a SHA-256 and also lists an unpinned mirror of the same format: import used to skip the
    check, so a random CLIP became the CLIP every edit uses."""
    result = runner.invoke(app, ["models", "import", str(clip_file), "--as", "clip-vit-b-16"])
    assert result.exit_code == 1, result.output
    assert "does not match the pinned registry entry 'clip-vit-b-16'" in result.stderr
    assert "--allow-unpinned" in result.stderr
    assert not store.list_models() or not {r.name: r for r in store.list_models()}["clip-vit-b-16"].cached

    result = runner.invoke(
        app, ["models", "import", str(clip_file), "--as", "clip-vit-b-16", "--allow-unpinned"]
    )
    assert result.exit_code == 0, result.output
    assert "recorded as unpinned" in result.stderr
    meta = cache.read_meta(Path(result.stdout.strip()))
    assert meta is not None and meta.override and not meta.pinned
    row = {r.name: r for r in store.list_models()}["clip-vit-b-16"]
    assert row.override and not row.pinned
    check = store.verify("clip-vit-b-16")
    assert check.ok and check.checked == "recorded sha256"


# -- point 11: permissions follow the umask -------------------------------------------------------------------


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    from dclip_cli.artifacts import save_artifact
    from dclip_cli.latents import save_latent
    from dclip_cli.manifest import write_manifest

    old = os.umask(umask)
    try:
        art = save_artifact(tmp_path / "a.safetensors", make_tiny32(), {"t0": 200})
        lat = save_latent(tmp_path / "l.safetensors", torch.zeros(1, 3, 4, 4), {"t0": 200})
        doc = write_manifest(tmp_path / "m.json", {"x": 1})
    finally:
        os.umask(old)
    for path in (art, lat, doc):
        assert (path.stat().st_mode & 0o777) == mode, path


# -- point 12: a full disk and a damaged CLIP file are user errors ---------------------------------------------


def test_disk_full_while_writing_is_a_user_error_naming_the_file(tmp_path: Path) -> None:
    """Writers fail in their own ways on a full disk: an OSError (PIL, json), safetensors' SafetensorError with "os
    error 28", torch's zip writer with no reason at all (then the free space decides)."""
    from safetensors import SafetensorError

    from dclip_cli.fileio import atomic_path

    dest = tmp_path / "out.safetensors"

    def real_enospc(tmp: Path) -> None:  # a genuine ENOSPC from the kernel
        os.symlink("/dev/full", tmp)
        with open(tmp, "wb") as f:
            f.write(b"x" * 100_000)

    def safetensors_full(tmp: Path) -> None:
        tmp.write_bytes(b"x" * 5000)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    for writer in (real_enospc, safetensors_full):
        with pytest.raises(DiskFullError) as info:
            with atomic_path(dest) as tmp:
                writer(tmp)
        msg = str(info.value)
        assert msg.startswith(f"Could not write {dest}: the disk is full") and "free on that disk" in msg
        assert list(tmp_path.iterdir()) == []  # nothing half-written left


def test_disk_full_for_torch_writer_and_cli_formatting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dclip_cli import fileio
    from dclip_cli.cli.errors import report

    dest = tmp_path / "state.pt"
    failure = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    with pytest.raises(RuntimeError):  # plenty of space: not a full disk, the error stays what it is
        with fileio.atomic_path(dest):
            raise failure
    monkeypatch.setattr(fileio, "free_bytes", lambda path: 4096)
    with pytest.raises(DiskFullError, match="state.pt: the disk is full"):
        with fileio.atomic_path(dest):
            raise failure
    assert report(OSError(28, "No space left on device", str(dest))) == 1


def test_damaged_clip_safetensors_is_a_checkpoint_error(tmp_path: Path) -> None:
    bad = tmp_path / "clip.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(CheckpointError, match="clip.safetensors' could not be read"):
        store.load_clip(bad)


def test_cli_reports_full_disk_and_damaged_clip_in_one_line(world, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end through ``dclip invert`` (a latent) and ``dclip edit --clip-model`` (a damaged file)."""
    import safetensors.torch as st
    from safetensors import SafetensorError

    def full(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    with monkeypatch.context() as m:
        m.setattr(st, "save_file", full)
        result = runner.invoke(app, ["invert", str(world.image), "--domain", "tinyface", "--inv-steps", "3"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "the disk is full" in lines[0] and ".safetensors" in lines[0]
    assert "bug in dclip" not in result.stderr

    bad = world.root / "clip.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}garbage")
    args = ["edit", str(world.image), "--to", "smiling", "--domain", "tinyface", "--clip-model", str(bad)]
    result = runner.invoke(app, [*args, "--metrics", "psnr", "--finetune-samples", "1"])
    assert result.exit_code == 1, result.output
    assert "clip.safetensors' could not be read" in result.stderr and "bug in dclip" not in result.stderr


def test_disk_full_during_a_download_names_the_file_and_the_size(monkeypatch: pytest.MonkeyPatch) -> None:
    from dclip_cli.checkpoints import download
    from tests.support.http_server import FileServer

    data = b"w" * 300_000
    with FileServer() as server:
        spec = CheckpointSpec("tiny", "tiny.ckpt", urls=(server.add("/tiny.ckpt", data),), size=len(data))
        dest = cache.checkpoint_path(spec)
        full = dest.with_name("tiny.ckpt.0000dead.incomplete")

        def new_tmp(path: Path) -> Path:  # the partial file lands on a full disk
            full.parent.mkdir(parents=True, exist_ok=True)
            os.symlink("/dev/full", full)
            return full

        monkeypatch.setattr(download, "_new_tmp", new_tmp)
        with pytest.raises(DiskFullError) as info:
            download.fetch(spec)
    msg = str(info.value)
    assert f"Could not write {dest}: the disk is full" in msg and "the file needs 300.0 kB" in msg
    assert not os.path.lexists(full) and not dest.exists()
