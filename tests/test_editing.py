"""Library-level tests of the applications' pieces: parsers, target resolution, output planning, sessions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from dclip_cli.apps.config import check_strength, parse_metrics, parse_sweep
from dclip_cli.apps.schedule import MixEntry, default_mix_schedule, format_mix_schedule, parse_mix_schedule
from dclip_cli.apps.session import Session
from dclip_cli.errors import (
    ConfigError,
    ImageError,
    InvalidScheduleError,
    OutputError,
    OutputExistsError,
    UnknownEditError,
)
from dclip_cli.images import expand_inputs
from dclip_cli.metrics import MetricModels, compute_metrics, identity_similarity, mean_metrics, psnr
from dclip_cli.outputs import plan_images as plan_outputs
from dclip_cli.presets.preset import Edit, Preset
from dclip_cli.progress import Reporter
from dclip_cli.store import find_match as find_library_match
from dclip_cli.textedit import parse_target as resolve_target
from dclip_cli.textedit import slugify


def _preset() -> Preset:
    return Preset(
        name="tinyface",
        description="tiny",
        image_size=32,
        checkpoint="tiny_base",
        arch="ddpm",
        arch_config={},
        source_text="face",
        domain_prompt="a photo of a face",
        edits={
            "smiling": Edit("smiling", "face", "smiling face"),
            "curly_hair": Edit("curly_hair", "person", "person with curly hair"),
        },
    )


# --- --schedule ------------------------------------------------------------------------------------------------


def test_schedule_valid() -> None:
    entries = parse_mix_schedule("300:0.5,0.5; 0:0.3,0.7", 2)
    assert entries == [MixEntry(300, (0.5, 0.5)), MixEntry(0, (0.3, 0.7))]
    assert entries[1].normalized == pytest.approx((0.3, 0.7))
    assert parse_mix_schedule("0:2,0,6", 3)[0].normalized == pytest.approx((0.25, 0.0, 0.75))
    assert format_mix_schedule(entries) == "300:0.5,0.5;0:0.3,0.7"
    assert default_mix_schedule(3) == [MixEntry(0, (1.0, 1.0, 1.0))]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "The mixing schedule is empty."),
        ("300:0.5,0.5;", "Schedule entry 2 is empty (a trailing ';')."),
        ("300:0.5,0.5;;0:1,1", "Schedule entry 2 is empty (two ';' in a row)."),
        ("300 0.5,0.5", "Schedule entry 1 \"300 0.5,0.5\" has no ':'"),
        ("300:1:0.5,0.5", "has more than one ':'"),
        ("abc:0.5,0.5", 'Schedule entry 1 "abc:0.5,0.5": the threshold "abc" is not a whole number.'),
        ("12.5:0.5,0.5", 'the threshold "12.5" is not a whole number'),
        ("1200:0.5,0.5;0:1,1", "the threshold 1200 is outside 0..999"),
        ("-1:0.5,0.5", "the threshold -1 is outside 0..999"),
        ("0:1,1;300:1,1", 'Schedule entry 2 "300:1,1": the threshold 300 is not below the previous one (0)'),
        ("300:1,1;300:1,1;0:1,1", "the threshold 300 is not below the previous one (300)"),
        (
            "300:1,1;100:1,1",
            'Schedule entry 2 "100:1,1" has threshold 100, but the last entry must have threshold 0',
        ),
        ("300:0.5;0:1,1", 'Schedule entry 1 "300:0.5" gives 1 weight for 2 models (smiling, pixar)'),
        ("300:1,1;0:1,1,1", 'Schedule entry 2 "0:1,1,1" gives 3 weights for 2 models'),
        ("0:", "gives 0 weights for 2 models"),
        ("0:1,x", 'Schedule entry 1 "0:1,x": weight 2 "x" is not a number.'),
        ("0:1,nan", 'weight 2 "nan" is not a finite number'),
        ("0:1,-0.1", "weight 2 (-0.1) is negative; weights must be >= 0."),
        ("300:1,1;0:0,0", 'Schedule entry 2 "0:0,0": the weights sum to 0'),
    ],
)
def test_schedule_errors_name_the_wrong_part(text: str, message: str) -> None:
    with pytest.raises(InvalidScheduleError) as info:
        parse_mix_schedule(text, 2, member_names=["smiling", "pixar"])
    assert message in info.value.message
    assert "THRESHOLD:W1,W2" in (info.value.hint or "")


def test_schedule_needs_members() -> None:
    with pytest.raises(InvalidScheduleError, match="nothing to mix"):
        parse_mix_schedule("0:1", 0)


# --- --sweep / --strength ---------------------------------------------------------------------------------------


def test_sweep_parses_in_order() -> None:
    assert parse_sweep("0,0.25, 0.5,0.75,1") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_sweep("1,0") == [1.0, 0.0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "--sweep is empty."),
        ("0,,1", "--sweep value 2 is empty"),
        ("0,a", '--sweep value 2 "a" is not a number.'),
        ("0,1.5", "--sweep value 2 (1.5) is outside 0..1."),
        ("0.5,0.5", "--sweep value 2 (0.5) is listed twice."),
    ],
)
def test_sweep_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_sweep(text)
    assert message in info.value.message


def test_strength_range() -> None:
    assert check_strength(0) == 0.0 and check_strength(1) == 1.0
    with pytest.raises(ConfigError, match="between 0 and 1"):
        check_strength(1.5)


# --- --to -------------------------------------------------------------------------------------------------------


def test_named_and_free_text_targets() -> None:
    p = _preset()
    t = resolve_target(p, "curly_hair")
    assert (t.key, t.src, t.trg, t.tag) == ("curly_hair", "person", "person with curly hair", "curly_hair")
    t = resolve_target(p, "Face with Blue Eyes!")
    assert (t.key, t.src, t.trg, t.tag) == (
        "face_with_blue_eyes",
        "face",
        "Face with Blue Eyes!",
        "face_with_blue_eyes",
    )
    assert not t.named and resolve_target(p, "curly_hair").named
    t = resolve_target(p, "zombie", src="photo")
    assert (t.src, t.trg) == ("photo", "zombie")  # a single word far from any key is free text
    assert resolve_target(p, "smiling", src="face").key == "smiling"  # the same source text is fine


def test_unknown_edit_and_conflicts() -> None:
    p = _preset()
    with pytest.raises(UnknownEditError, match="Did you mean 'smiling'"):
        resolve_target(p, "smilling")
    with pytest.raises(UnknownEditError, match="no edit named 'red_hair'"):
        resolve_target(p, "red_hair")
    with pytest.raises(ConfigError, match="--src cannot be combined with the named edit 'smiling'"):
        resolve_target(p, "smiling", src="person")
    with pytest.raises(ConfigError, match="--to is empty"):
        resolve_target(p, "  ")


def test_slugify() -> None:
    """One rule for output tags, library names and artifact names (free text -> underscores)."""
    assert slugify("  Person with CURLY hair ") == "person_with_curly_hair"
    assert slugify("Gothic  church!") == "gothic_church"
    assert slugify("!!!").startswith("edit_") and slugify("!!!") != slugify("???")
    assert len(slugify("x" * 100)) == 48


# --- inputs and outputs -----------------------------------------------------------------------------------------


def test_expand_inputs(tmp_path: Path) -> None:
    d = tmp_path / "imgs"
    d.mkdir()
    for name in ("b.png", "a.jpg", "notes.txt"):
        (d / name).write_bytes(b"x")
    single = tmp_path / "c.png"
    single.write_bytes(b"x")
    assert expand_inputs([d, single, d / "a.jpg"]) == [d / "a.jpg", d / "b.png", single]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="contains no images"):
        expand_inputs([tmp_path / "empty"])
    with pytest.raises(ImageError, match="does not exist"):
        expand_inputs([tmp_path / "nope.png"])


def test_plan_outputs_naming(tmp_path: Path) -> None:
    img = tmp_path / "photo.png"
    img.write_bytes(b"x")
    [plan] = plan_outputs([img], "smiling", compare=True)
    assert plan.image == tmp_path / "photo.smiling.png"
    assert plan.sidecar == tmp_path / "photo.smiling.json"
    assert plan.compare == tmp_path / "photo.smiling.compare.png"
    [plan] = plan_outputs([img], "smiling", tmp_path / "out", kind="sweep")
    assert plan.image == tmp_path / "out" / "photo.smiling.sweep.png" and plan.compare is None
    assert plan.sidecar == tmp_path / "out" / "photo.smiling.sweep.json"  # its own sidecar (issue 11.10)
    assert not (tmp_path / "out").exists()  # planning creates nothing
    [plan] = plan_outputs([img], "translate", tmp_path / "res.png", intermediates=2, compare=True)
    assert plan.image == tmp_path / "res.png" and plan.sidecar == tmp_path / "res.json"
    assert plan.compare == tmp_path / "res.compare.png"
    assert plan.intermediates == (tmp_path / "res.round01.png", tmp_path / "res.round02.png")


def test_plan_outputs_refusals(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "photo.png", tmp_path / "b" / "photo.png"
    for p in (a, b):
        p.parent.mkdir()
        p.write_bytes(b"x")
    with pytest.raises(ConfigError, match="names one file but 2 images"):
        plan_outputs([a, b], "smiling", tmp_path / "x.png")
    with pytest.raises(ConfigError, match="does not end in .png"):
        plan_outputs([a], "smiling", tmp_path / "x.jpg")
    with pytest.raises(ConfigError, match="would both be written to"):
        plan_outputs([a, b], "smiling", tmp_path / "out")
    with pytest.raises(ConfigError, match="would replace an input"):
        plan_outputs([a], "smiling", a)
    (tmp_path / "a" / "photo.smiling.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="photo.smiling.json already exists"):
        plan_outputs([a], "smiling")
    assert plan_outputs([a], "smiling", overwrite=True)[0].sidecar.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_plan_outputs_unwritable(tmp_path: Path) -> None:
    a = tmp_path / "photo.png"
    a.write_bytes(b"x")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="is not writable"):
            plan_outputs([a], "smiling", locked / "sub")
    finally:
        locked.chmod(0o700)


def test_plan_outputs_directory_under_a_file(tmp_path: Path) -> None:
    a = tmp_path / "photo.png"
    a.write_bytes(b"x")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    with pytest.raises(OutputError, match="blocker is a file"):
        plan_outputs([a], "smiling", blocker / "sub")


# --- metrics ----------------------------------------------------------------------------------------------------


def test_psnr_closed_form() -> None:
    x = torch.zeros(2, 3, 8, 8)
    y = x + torch.tensor([0.2, 0.02]).reshape(2, 1, 1, 1)  # [0, 1]-scale differences 0.1 and 0.01
    assert psnr(y, x).tolist() == pytest.approx([20.0, 40.0], abs=1e-4)
    assert psnr(x, x)[0].item() == float("inf")
    assert psnr(torch.full((1, 3, 4, 4), 5.0), torch.ones(1, 3, 4, 4))[0].item() == float("inf")  # clamped


def test_compute_metrics_with_real_lpips_and_an_embedding_net() -> None:
    from dclip_cli.losses.lpips import LPIPSLoss

    gen = torch.Generator().manual_seed(0)
    x_src = torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1
    x_edit = torch.cat([x_src, (x_src + 0.3 * torch.randn(1, 3, 32, 32, generator=gen)).clamp(-1, 1)])
    proj = torch.randn(3 * 32 * 32, 16, generator=gen)

    def embed(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x.flatten(1) @ proj, dim=-1)

    lpips = LPIPSLoss("squeeze", pnet_rand=True)  # random trunk: no download, still a real LPIPS network
    rows = compute_metrics(
        MetricModels(lpips=lpips.per_sample, identity=embed), x_src=x_src, x_edit=x_edit, x_rec=x_edit
    )
    assert [set(r) for r in rows] == [{"lpips", "identity", "reconstruction_psnr"}] * 2
    assert rows[0]["lpips"] == pytest.approx(0.0, abs=1e-6) and rows[1]["lpips"] > 0
    assert rows[0]["identity"] == pytest.approx(1.0) and rows[1]["identity"] < 1.0
    assert rows[0]["reconstruction_psnr"] == float("inf")
    assert identity_similarity(embed, x_src, x_edit).shape == (2,)
    assert mean_metrics(rows)["lpips"] == pytest.approx(rows[1]["lpips"] / 2)


def test_compute_metrics_clip_terms_match_the_loss_module(tmp_path: Path) -> None:
    from dclip_cli.losses.clip import directional_similarity, text_similarity
    from dclip_cli.store import load_clip
    from tests.support.tiny_clip import save_tiny_clip

    clip = load_clip(save_tiny_clip(tmp_path / "c.pt"), device="cpu")
    x_src = -torch.ones(1, 3, 32, 32)
    x_edit = torch.linspace(-1, 1, 32).expand(2, 3, 32, 32).clone()
    rows = compute_metrics(
        MetricModels(clip=clip), x_src=x_src, x_edit=x_edit, src_text="face", trg_text="old face"
    )
    want_dir = directional_similarity(clip, x_src.expand(2, -1, -1, -1), x_edit, "face", "old face")
    want_trg = text_similarity(clip, x_edit, "old face")
    assert [r["clip_directional"] for r in rows] == pytest.approx(want_dir.tolist())
    assert [r["clip_target"] for r in rows] == pytest.approx(want_trg.tolist())
    only_target = compute_metrics(
        MetricModels(clip=clip), x_src=x_src, x_edit=x_edit[:1], trg_text="old face"
    )
    assert set(only_target[0]) == {"clip_target"}


def test_parse_metrics() -> None:
    assert parse_metrics("all") == ("clip", "lpips", "identity", "psnr")
    assert parse_metrics("none") == ()
    assert parse_metrics("psnr, clip,psnr") == ("psnr", "clip")
    with pytest.raises(ConfigError, match='--metrics item 2 "fid" is not a metric'):
        parse_metrics("clip,fid")


class _Recorder(Reporter):
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)


def test_missing_metric_networks_are_skipped_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DCLIP_OFFLINE", "1")  # LPIPS trunk and CLIP are not cached and may not be downloaded
    rec = _Recorder()
    session = Session(device="cpu", progress=rec)
    models = session.metric_models(None, ["clip", "lpips", "psnr"])
    assert models.clip is None and models.lpips is None
    assert any(w.startswith("CLIP metrics skipped:") for w in rec.warnings)
    assert any(w.startswith("LPIPS skipped:") and "DCLIP_OFFLINE" in w for w in rec.warnings)


# --- the edit library -------------------------------------------------------------------------------------------


def test_find_library_match(tmp_path: Path) -> None:
    from dclip_cli.artifacts import save_artifact
    from dclip_cli.checkpoints import cache
    from tests.support.editing import make_tiny32, tiny_preset

    preset = tiny_preset("tinyface", "a face")
    model = make_tiny32(0)

    def save(name: str, **meta) -> Path:
        base = {"src_text": "face", "trg_text": "smiling face", "t0": 200, "base_sha256": "a" * 64}
        return save_artifact(
            cache.library_dir() / "tinyface" / f"{name}.safetensors", model, {**base, **meta}
        )

    assert find_library_match(preset, "face", "smiling face", base_sha256="a" * 64, t0=200) is None
    save("other_t0", t0=300)
    save("other_text", trg_text="angry face")
    save("other_base", base_sha256="b" * 64)
    good = save("smiling")
    save_artifact(cache.library_dir() / "tinychurch" / "smiling.safetensors", model,
                  {"src_text": "face", "trg_text": "smiling face", "t0": 200})  # fmt: skip
    assert find_library_match(preset, "face", "smiling face", base_sha256="a" * 64, t0=200) == good
    assert (
        find_library_match(preset, "face", "smiling face", base_sha256="a" * 64, t0=300).name
        == "other_t0.safetensors"
    )
    assert find_library_match(preset, "face", "smiling face", base_sha256="c" * 64, t0=200) is None
    # without a recorded base hash, the base checkpoint's name decides
    named = save("named", base_sha256=None, base_checkpoint="tiny_base", trg_text="pixar face")
    assert find_library_match(preset, "face", "pixar face", base_sha256="c" * 64, t0=200) == named


def test_session_keeps_few_fast_wrappers() -> None:
    """A reused session does not keep every edit model (and its bf16 weight copy) alive."""
    from tests.support.tiny import TINY_SIZE, make_tiny_model

    session = Session(device="cpu", precision="bf16")
    models = [make_tiny_model("ddpm", seed=s) for s in range(6)]
    first = session.fast(models[0])
    assert session.fast(models[0]) is first  # reused while recent
    for m in models[1:]:
        session.fast(m)
    assert len(session._fast) == Session.KEEP_EDIT_MODELS
    assert id(models[0]) not in session._fast and id(models[-1]) in session._fast
    # fp32: a wrapper (for the estimate's kept call) around the model itself, computing bit for bit as the model
    fp32 = Session(device="cpu", precision="fp32").fast(models[0])
    assert fp32.inner is models[0] and fp32.autocast_dtype is None and not fp32.channels_last
    x = torch.randn(2, 3, TINY_SIZE, TINY_SIZE, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10.0, 900.0])
    with torch.no_grad():
        assert torch.equal(fp32(x, t), models[0](x, t))
