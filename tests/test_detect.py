"""Domain auto-detection: CLIP zero-shot over the installed presets' domain prompts (tiny CLIP)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dclip_cli.cli.app import app
from dclip_cli.detect import detect_domain, score_domains
from dclip_cli.errors import DomainDetectionError, UnknownPresetError
from dclip_cli.images import load_and_prepare
from dclip_cli.store import load_clip
from tests.support.editing import setup_world, tiny_preset, write_image
from tests.support.http_server import FileServer
from tests.support.tiny_clip import save_tiny_clip

FACE, DOG = "a photo of a face", "a photo of a dog"


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip.pt")


@pytest.fixture(scope="module")
def clip(clip_file: Path):
    return load_clip(clip_file, device="cpu")


@pytest.fixture
def image(tmp_path: Path) -> torch.Tensor:
    x, _ = load_and_prepare(write_image(tmp_path / "a.png"), 32)
    return x


def test_clear_case_picks_the_most_likely_preset(clip, image) -> None:
    presets = [tiny_preset("tinychurch", DOG), tiny_preset("tinyface", FACE)]
    [scores] = score_domains(clip, image, presets)
    assert list(scores) == ["tinyface", "tinychurch"]  # sorted, best first
    assert sum(scores.values()) == pytest.approx(1.0)
    assert scores["tinyface"] > 0.9  # the tiny CLIP separates these two prompts clearly
    found = detect_domain(clip, image, presets)
    assert (found.preset, found.method) == ("tinyface", "clip")
    assert found.confidence == pytest.approx(scores["tinyface"])
    assert found.describe().startswith("domain tinyface detected by CLIP with 99% confidence")


def test_unclear_case_asks_for_domain(clip, image) -> None:
    presets = [tiny_preset("tinychurch", FACE), tiny_preset("tinyface", FACE)]  # indistinguishable: 50/50
    with pytest.raises(DomainDetectionError) as info:
        detect_domain(clip, image, presets, label="a.png")
    message = info.value.message
    assert message.startswith("Could not tell which domain a.png belongs to: CLIP gives ")
    assert "tinyface 50%" in message and "tinychurch 50%" in message and "below the 60% needed" in message
    assert info.value.hint == "Pass --domain with one of: tinychurch, tinyface."
    # a threshold below 50% accepts the same scores
    assert detect_domain(clip, image, presets, min_confidence=0.4).confidence == pytest.approx(0.5)


def test_single_and_no_presets(image) -> None:
    only = detect_domain(None, image, [tiny_preset("tinyface", FACE)])
    assert (only.preset, only.confidence, only.method) == ("tinyface", 1.0, "only-preset")
    with pytest.raises(UnknownPresetError, match="No presets are installed"):
        detect_domain(None, image, [])


def test_images_of_different_domains(clip) -> None:
    """Two images whose best prompts differ are refused rather than edited with one domain's model."""
    presets = [tiny_preset("tinyface", FACE), tiny_preset("tinysketch", "a sketch")]
    black, white = -torch.ones(1, 3, 32, 32), torch.ones(1, 3, 32, 32)
    assert detect_domain(clip, black, presets).preset == "tinyface"
    assert detect_domain(clip, white, presets).preset == "tinysketch"
    with pytest.raises(DomainDetectionError, match="look like different domains"):
        detect_domain(clip, torch.cat([black, white]), presets, min_confidence=0.0)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clip_file: Path):
    with FileServer() as server:
        yield server, tmp_path, monkeypatch, clip_file


def test_cli_detects_the_domain(world) -> None:
    server, root, monkeypatch, clip_file = world
    w = setup_world(root, server, monkeypatch, clip_file)  # tinyface: a face, tinychurch: a dog
    result = CliRunner().invoke(app, ["edit", *w.cli_args(), str(w.image), "--to", "pixar"])
    assert result.exit_code == 0, result.output
    assert "Using domain tinyface detected by CLIP with 99% confidence" in result.stderr
    import json

    doc = json.loads(w.image.with_name("photo.pixar.json").read_text())
    detection = doc["settings"]["domain_detection"]
    assert detection["method"] == "clip" and list(detection["scores"]) == ["tinyface", "tinychurch"]


def test_cli_unclear_domain_is_an_error(world) -> None:
    server, root, monkeypatch, clip_file = world
    presets = [tiny_preset("tinyface", FACE), tiny_preset("tinychurch", FACE)]
    w = setup_world(root, server, monkeypatch, clip_file, presets=presets)
    result = CliRunner().invoke(app, ["translate", *w.cli_args(), str(w.image)])
    assert result.exit_code == 1
    assert "Could not tell which domain" in result.stderr and "Pass --domain with one of" in result.stderr
    assert server.count("/tiny_base.ckpt") == 0
    assert sorted(p.name for p in w.image.parent.iterdir()) == ["photo.png"]
