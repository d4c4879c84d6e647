"""Issue 12, "Help and names": help shows flags as flags and values by what they are, and the displays read in an
80-column terminal."""

from __future__ import annotations

import io
import re

import pytest
import typer.main
from rich.console import Console
from typer.testing import CliRunner

from dclip_cli import console
from dclip_cli.cli.app import app
from dclip_cli.progress import Event

runner = CliRunner()

#: what Typer shows when a parameter has no metavar: Python types, and braces around arguments
PYTHON_TYPES = re.compile(r"<(bool|str|int|float|path|file|dir|list\[[^\]]*\])[^>]*>|\{[a-z_]+\}")


def _commands() -> list[list[str]]:
    group = typer.main.get_command(app)
    paths = [[]]
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        paths.append([name])
        paths += [[name, sub] for sub in getattr(cmd, "commands", {})]
    return paths


@pytest.mark.parametrize("path", _commands(), ids=lambda p: " ".join(p) or "dclip")
def test_help_names_values_and_shows_flags_as_flags(path: list[str]) -> None:
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert not PYTHON_TYPES.search(text), PYTHON_TYPES.search(text)
    for line in text.splitlines():
        if re.search(r"--json\b|--overwrite\b|--quiet\b", line):  # flags: no value column at all
            assert not re.search(r"--(json|overwrite|quiet)\s+(<\w|TEXT\b|BOOLEAN\b)", line), line


def test_help_uses_value_names() -> None:
    invert = runner.invoke(app, ["invert", "--help"], env={"COLUMNS": "160"}).stdout
    assert "Usage: dclip invert [OPTIONS] IMAGE..." in invert
    assert re.search(r"--checkpoint\s+FILE", invert) and re.search(r"--inv-steps\s+N", invert)
    assert re.search(r"--domain,--preset\s+-d\s+PRESET", invert)
    assert "auto|fp32|bf16|fp16" in invert
    models = runner.invoke(app, ["models", "import", "--help"], env={"COLUMNS": "160"}).stdout
    assert "Usage: dclip models import [OPTIONS] FILE" in models and re.search(r"--as\s+NAME", models)


def test_generated_cli_reference_has_no_python_types() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    assert not PYTHON_TYPES.search(text), PYTHON_TYPES.search(text)
    assert "$ dclip invert [OPTIONS] IMAGE..." in text


# -- 80 columns -----------------------------------------------------------------------------------------------


def _console80() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=80, color_system=None, force_terminal=False), buf


def test_progress_display_is_readable_at_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    from dclip_cli.cli.display import Display

    c, buf = _console80()
    monkeypatch.setattr(console, "err", c)
    labels = ["Downloading celeba_hq.ckpt", "Fine-tuning gothic_church_at_night", "Inverting"]
    long_label = "Fine-tuning " + "a_very_long_free_text_edit_name_" * 2
    with Display() as display:
        display(Event("download", "celeba_hq.ckpt", done=123_400_000, total=455_000_000))
        display(Event("progress", labels[1], done=3, total=40, status="loss 0.1234"))
        display(Event("progress", "Inverting", done=12, total=40, status="image 1/1: generate t=0"))
        display(Event("progress", long_label, done=1, total=4))
    out = buf.getvalue()
    assert "…" not in out
    word = long_label.split()[1]
    assert word[:30] in out and word[-20:] in out  # folded onto the next line, not cut
    assert all(len(line) <= 80 for line in out.splitlines())
    for text in [*labels, "123.4/455.0 MB", "loss 0.1234", "image 1/1: generate t=0"]:
        assert text in out, (text, out)
    assert out.count("0:00:0") >= 3 and out.count("-:--:--") >= 3  # elapsed and remaining, whole
    assert "27%" in out and "30%" in out


def test_metrics_table_is_readable_at_80_columns() -> None:
    from dclip_cli.cli.report import metrics_table

    c, buf = _console80()
    name = "face.pixar_style_of_a_long_name.png"
    row = {
        "clip_directional": 0.2345,
        "clip_target": 0.2811,
        "lpips": 0.3412,
        "identity": 0.7123,
        "psnr": 20.1,
    }
    c.print(metrics_table("Edit metrics (face, 1 image)", [(name, row)]))
    out = buf.getvalue()
    assert "…" not in out
    for header in ("CLIP dir. ↑", "CLIP target ↑", "LPIPS ↓", "identity ↑", "PSNR ↑"):
        assert header in out, (header, out)
    for value in ("0.2345", "0.2811", "0.3412", "0.7123", "20.10"):
        assert value in out
    cells = [line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│")]
    assert "".join(cells) == name  # wrapped, not cut
    assert "CLIP dir. = CLIP directional similarity" in " ".join(out.split())


def test_models_list_is_readable_at_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    c, buf = _console80()
    monkeypatch.setattr(console, "out", c)
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0, result.output
    out = buf.getvalue()
    assert "…" not in out and "church/church_department_store" in out and "~455.0 MB" in out
    assert all(len(line) <= 80 for line in out.splitlines())
