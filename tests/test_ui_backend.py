"""The web page's adapter to the library (issue #15), in-process with the tiny world: uploads are staged and
bounded, results land in a new run folder under the outputs, progress arrives as events, library changes go
through the store, and failures are dclip's message and hint."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dclip_cli.ui import backend
from tests.support.editing import TinyWorld, checkpoint_bytes, write_image

SID = "session-1"


@pytest.fixture(autouse=True)
def fresh_sessions() -> Iterator[None]:
    backend.forget_sessions()
    yield
    backend.forget_sessions()


@pytest.fixture
def settings(world: TinyWorld, tmp_path: Path) -> backend.Settings:
    return backend.Settings(
        outputs=tmp_path / "outputs",
        uploads=tmp_path / "uploads",
        device="cpu",
        precision="fp32",
        clip_model=str(world.clip),
        metrics=("clip", "psnr"),
        finetune_samples=1,
    )


def staged(settings: backend.Settings, world: TinyWorld, *paths: Path) -> list[Path]:
    return backend.stage_uploads(
        settings, SID, list(paths or [world.image]), allowed_roots=[world.root / "in"]
    )


def inside(path: Path, folder: Path) -> bool:
    return folder.resolve() in path.resolve().parents


# -- uploads ------------------------------------------------------------------------------------------------------


def test_uploads_are_copied_into_the_session_folder(settings: backend.Settings, world: TinyWorld) -> None:
    odd = write_image(world.root / "in" / "my photo (1).PNG", seed=3)
    copies = staged(settings, world, world.image, odd, world.image)
    assert [p.name for p in copies] == ["photo.png", "my-photo-1.png", "photo-2.png"]
    assert all(inside(p, settings.uploads / SID) for p in copies)
    assert copies[1].read_bytes() == odd.read_bytes()
    backend.drop_session(settings, SID)
    assert not (settings.uploads / SID).exists()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("outside", "secret.png is not a file uploaded to this page."),
        ("large", "big.png is 1.2 MB; the page accepts images up to 1 MB."),
        ("pixels", "wide.png is 100x40 pixels; the page accepts images up to 64 pixels on a side."),
        ("not-image", "notes.png is not an image file that Pillow can read."),
        ("many", "3 images were given; the page takes at most 2 per job."),
        ("none", "No image was given."),
    ],
)
def test_uploads_are_bounded(world: TinyWorld, tmp_path: Path, case: str, message: str) -> None:
    settings = backend.Settings(
        outputs=tmp_path / "out", uploads=tmp_path / "up", max_upload_mb=1, max_image_side=64, max_images=2
    )
    upload = world.root / "in"
    paths: list[Path] = {
        "outside": lambda: [write_image(tmp_path / "elsewhere" / "secret.png")],
        "large": lambda: [_bytes(upload / "big.png", 1_200_000)],
        "pixels": lambda: [write_image(upload / "wide.png", size=(100, 40))],
        "not-image": lambda: [_bytes(upload / "notes.png", 100)],
        "many": lambda: [world.image] * 3,
        "none": lambda: [],
    }[case]()
    with pytest.raises(backend.UserError) as err:
        backend.stage_uploads(settings, SID, paths, allowed_roots=[upload])
    assert err.value.message == message
    assert err.value.hint


def _bytes(path: Path, n: int) -> Path:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes())
    return path


def test_session_ids_cannot_name_other_folders(settings: backend.Settings, world: TinyWorld) -> None:
    with pytest.raises(backend.UserError, match="no valid id"):
        backend.stage_uploads(settings, "../outside", [world.image], allowed_roots=[world.root])
    assert not (settings.uploads.parent / "outside").exists()


# -- edit, sweep, detection -----------------------------------------------------------------------------------------


def test_edit_writes_a_new_run_folder_and_reports_progress(
    settings: backend.Settings, world: TinyWorld
) -> None:
    events: list[backend.ProgressEvent] = []
    out = backend.edit(
        settings, staged(settings, world), to="pixar", domain="tinyface", on_event=events.append
    )
    (item,) = out.items
    assert out.domain == "tinyface" and inside(out.folder, settings.outputs)
    assert [p.name for p in (item.image, item.sidecar, item.compare)] == [  # type: ignore[union-attr]
        "photo.pixar.png",
        "photo.pixar.json",
        "photo.pixar.compare.png",
    ]
    assert all(inside(p, out.folder) for p in (item.image, item.sidecar))
    with Image.open(item.image) as im:
        assert im.size == (32, 32)
    assert item.metrics == json.loads(item.sidecar.read_text())["metrics"]
    assert set(item.metrics) == {"clip_directional", "clip_target", "reconstruction_psnr"}
    last = {e.label: e for e in events if e.kind == "progress"}
    assert {"Inverting", "Reconstructing", "Generating"} <= set(last)
    assert last["Generating"].done == last["Generating"].total == 3
    assert any(e.kind == "status" and e.label.startswith("Edit model: the official") for e in events)
    assert any(m.startswith("Edit model: the official") for m in out.messages)


def test_sweep_gives_one_image_per_strength(settings: backend.Settings, world: TinyWorld) -> None:
    out = backend.sweep(
        settings, staged(settings, world), to="pixar", strengths=[0.0, 0.5, 1.0], domain="tinyface"
    )
    assert [i.caption for i in out.items] == ["photo: strength 0", "photo: strength 0.5", "photo: strength 1"]
    docs = [json.loads(i.sidecar.read_text()) for i in out.items]
    assert [d["settings"]["strength"] for d in docs] == [0.0, 0.5, 1.0]
    assert sorted(p.name for p in out.folder.iterdir()) == ["strength-0", "strength-0.5", "strength-1"]
    images = [np.asarray(Image.open(i.image)) for i in out.items]
    assert not np.array_equal(images[0], images[2])


def test_sweep_values_use_the_cli_parser() -> None:
    assert backend.parse_strengths("0, 0.5,1") == [0.0, 0.5, 1.0]
    with pytest.raises(backend.UserError) as err:
        backend.parse_strengths("0,1.5")
    assert err.value.message == "--sweep value 2 (1.5) is outside 0..1."


def test_detection_scores_every_preset(settings: backend.Settings, world: TinyWorld) -> None:
    det = backend.detect_domain(settings, staged(settings, world))
    assert det.method == "clip" and set(det.scores) == {"tinyface", "tinychurch"}
    assert sum(det.scores.values()) == pytest.approx(1.0, abs=1e-5)
    assert det.domain == max(det.scores, key=lambda k: det.scores[k])
    assert det.sure == (det.confidence >= 0.6)
    assert det.description.startswith(f"domain {det.domain} detected by CLIP with")


def test_library_errors_become_messages_with_hints(settings: backend.Settings, world: TinyWorld) -> None:
    with pytest.raises(backend.UserError) as err:
        backend.edit(settings, staged(settings, world), to="smilng", domain="tinyface")
    assert err.value.message == "Preset 'tinyface' has no edit named 'smilng'. Did you mean 'smiling'?"
    assert err.value.hint and err.value.hint.startswith("Run 'dclip presets show tinyface'")
    with pytest.raises(backend.UserError) as err:
        backend.edit(settings, staged(settings, world), to="pixar", domain="nope")
    assert err.value.message == "No preset named 'nope'."
    assert list(settings.outputs.iterdir()) == []  # a failed run leaves no empty folder behind


# -- mix --------------------------------------------------------------------------------------------------------------


def test_schedule_messages_are_the_cli_messages(world: TinyWorld) -> None:
    from dclip_cli.cli.app import app

    text = "300:0.5,0.5;100:1,0"
    check = backend.validate_schedule(text, ["smiling", "angry"])
    assert not check.ok
    assert check.message == (
        'Schedule entry 2 "100:1,0" has threshold 100, but the last entry must have threshold 0 so that every '
        "timestep down to 0 has weights."
    )
    result = CliRunner().invoke(
        app, ["mix", str(world.image), "--to", "smiling", "--to", "angry", "--schedule", text]
    )
    assert result.exit_code == 2
    assert " ".join(check.message.split()) in " ".join(result.output.replace("│", " ").split())
    ok = backend.validate_schedule("500:1,0,1;0:1,1,2", ["smiling", "angry"], with_base=True)
    assert ok.ok and ok.message.startswith(
        "500:1,0,1;0:1,1,2 (t 500..999: smiling 0.50, angry 0.00, base 0.50"
    )
    assert backend.validate_schedule("", ["smiling"]).message.startswith("Equal weights for smiling")
    assert not backend.validate_schedule("0:1", []).ok


def test_mix_refuses_a_bad_schedule_before_loading_anything(
    settings: backend.Settings, world: TinyWorld
) -> None:
    with pytest.raises(backend.UserError, match="gives 1 weight for 2 models"):
        backend.mix(
            settings, staged(settings, world), to=["pixar", "smiling"], schedule="0:1", domain="tinyface"
        )
    assert not settings.outputs.exists() or list(settings.outputs.iterdir()) == []


def test_mix_with_the_base_model(settings: backend.Settings, world: TinyWorld) -> None:
    out = backend.mix(
        settings,
        staged(settings, world),
        to=["pixar"],
        with_base=True,
        schedule="100:1,0;0:0.5,0.5",
        domain="tinyface",
    )
    (item,) = out.items
    assert item.caption == "photo: pixar + base" and item.compare is not None
    doc = json.loads(item.sidecar.read_text())
    assert doc["settings"]["schedule"] == "100:1,0;0:0.5,0.5" and doc["settings"]["members"] == [
        "pixar",
        "base",
    ]
    with Image.open(item.image) as im:
        assert im.size == (32, 32)


def test_translate_shows_every_round(settings: backend.Settings, world: TinyWorld) -> None:
    out = backend.translate(settings, staged(settings, world), domain="tinyface", iterations=2)
    (item,) = out.items
    assert [p.name for p in item.intermediates] == [
        "photo.translate.round01.png",
        "photo.translate.round02.png",
    ]
    assert all(inside(p, out.folder) for p in item.intermediates)
    assert item.caption == "photo: translated (2 rounds)"
    assert json.loads(item.sidecar.read_text())["settings"]["iterations"] == 2


# -- fine-tuning and the library ----------------------------------------------------------------------------------------


def test_finetune_job_adds_a_library_entry(settings: backend.Settings, world: TinyWorld) -> None:
    events: list[backend.ProgressEvent] = []
    out = backend.finetune_job(
        settings, domain="tinyface", edit="smiling", samples=1, previews=1, on_event=events.append
    )
    assert out.names == ("tinyface/smiling",)
    assert out.artifacts[0].name == "smiling.safetensors" and out.losses["total"] > 0
    steps = [e for e in events if e.kind == "progress" and e.label == "Fine-tuning"]
    assert steps and steps[-1].done == steps[-1].total == 2  # 1 epoch x 1 image x 2 training steps
    assert any(e.label.startswith("Edit 1/1 smiling: 'face' -> 'smiling face'") for e in events)
    (preview,) = out.previews
    assert inside(preview, settings.outputs) and preview.name == "epoch-001.png"
    assert [e.image for e in events if e.image is not None] == [preview]
    row = next(r for r in backend.library_rows() if r.name == "tinyface/smiling")
    assert (row.kind, row.src_text, row.trg_text, row.t0, row.base) == (
        "edit",
        "face",
        "smiling face",
        200,
        "tiny_base",
    )
    with pytest.raises(backend.UserError) as err:  # the same job again: the library entry exists
        backend.finetune_job(settings, domain="tinyface", edit="smiling", samples=1, previews=0)
    assert "already exists" in err.value.message and err.value.hint


def test_a_cancelled_finetune_job_saves_nothing(settings: backend.Settings, world: TinyWorld) -> None:
    seen: list[backend.ProgressEvent] = []
    with pytest.raises(backend.Cancelled, match="nothing was saved"):
        backend.finetune_job(
            settings,
            domain="tinyface",
            src="face",
            trg="face with a hat",
            samples=1,
            previews=0,
            on_event=seen.append,
            should_stop=lambda: any(e.label == "Fine-tuning" for e in seen),
        )
    assert [r.name for r in backend.library_rows() if r.kind == "edit"] == []


def test_finetune_needs_one_kind_of_target(settings: backend.Settings) -> None:
    with pytest.raises(backend.UserError, match="Choose a named edit, or give a target text"):
        backend.finetune_job(settings, domain="tinyface")
    with pytest.raises(backend.UserError, match="not both"):
        backend.finetune_job(settings, domain="tinyface", edit="smiling", trg="x")


def test_library_import_and_delete_go_through_the_store(world: TinyWorld, tmp_path: Path) -> None:
    upload = tmp_path / "my_edit.pth"
    upload.write_bytes(checkpoint_bytes(5))
    dest = backend.import_file(upload, "tinyface/imported")
    assert dest.name == "imported.pth" and dest.read_bytes() == upload.read_bytes()
    row = next(r for r in backend.library_rows() if r.name == "tinyface/imported")
    assert row.kind == "edit" and row.size == upload.stat().st_size
    with pytest.raises(backend.UserError) as err:
        backend.import_file(upload, "../escape")
    assert err.value.message == "'../escape' is not a valid checkpoint name."
    with pytest.raises(backend.UserError, match="is not in the library"):
        backend.delete_entry("tinyface/other")
    with pytest.raises(backend.UserError, match="is not a valid checkpoint name"):
        backend.delete_entry("tinyface/../../x")
    assert backend.delete_entry("tinyface/imported")[0] == "imported.pth"
    assert not dest.exists()
    assert "tinyface/imported" not in {r.name for r in backend.library_rows()}


def test_presets_list_the_named_edits(world: TinyWorld) -> None:
    infos = {p.name: p for p in backend.presets()}
    assert set(infos) == {"tinyface", "tinychurch"}
    edits = {e.key: e for e in infos["tinyface"].edits}
    assert list(edits) == ["angry", "pixar", "smiling"]
    assert edits["pixar"].official and not edits["smiling"].official
    assert (infos["tinyface"].t0, infos["tinyface"].image_size) == (200, 32)
