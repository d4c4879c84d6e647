"""CLI runner tests of the foundation: presets, plugins, --version, error formatting and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from dclip_cli import __version__
from dclip_cli.cli.app import app

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"dclip {__version__}"


def test_presets_list_table_and_json() -> None:
    result = runner.invoke(app, ["presets", "list"])
    assert result.exit_code == 0, result.output
    for name in ("face", "dog", "church", "bedroom"):
        assert name in result.stdout
    result = runner.invoke(app, ["presets", "list", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == ["bedroom", "church", "dog", "face"]
    face = rows[-1]
    assert face["checkpoint"] == "celeba_hq" and face["image_size"] == 256 and "smiling" in face["edits"]


def test_presets_show() -> None:
    result = runner.invoke(app, ["presets", "show", "church"])
    assert result.exit_code == 0, result.output
    assert "church_gothic" in result.stdout and "Gothic Church" in result.stdout
    data = json.loads(runner.invoke(app, ["presets", "show", "face", "--json"]).stdout)
    assert data["edits"]["grey_hair"]["trg"] == "person with grey hair"
    assert data["preprocess"] == "align" and data["id_weight"] > 0


def test_unknown_preset_is_one_red_line_and_a_hint_exit_1() -> None:
    result = runner.invoke(app, ["presets", "show", "cats"])
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0] == "Error: No preset named 'cats'."
    assert lines[1].startswith("Hint: Installed presets: bedroom, church, dog, face.")
    assert "Traceback" not in result.stderr


def test_debug_shows_traceback(monkeypatch) -> None:
    monkeypatch.setenv("DCLIP_DEBUG", "1")
    result = runner.invoke(app, ["presets", "show", "cats"])
    assert result.exit_code == 1
    assert "Traceback" in result.stderr and "UnknownPresetError" in result.stderr


def test_usage_errors_keep_exit_code_2() -> None:
    result = runner.invoke(app, ["--device", "tpu", "presets", "list"])
    assert result.exit_code == 2
    assert "not a device" in result.stderr
    result = runner.invoke(app, ["presets", "frobnicate"])
    assert result.exit_code == 2


def test_broken_plugin_warns_but_cli_works(tmp_path, monkeypatch) -> None:
    from tests.support.plugins import write_distribution

    write_distribution(tmp_path, "dclip-broken", "dclip_test_cli_broken", "raise RuntimeError('boom')\n",
                       entry_name="broken")  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("DCLIP_LOAD_PLUGINS", "face,broken")
    result = runner.invoke(app, ["presets", "list", "--json"])
    assert result.exit_code == 0
    assert [r["name"] for r in json.loads(result.stdout)] == ["face"]
    assert "Preset plugin 'broken' failed to load: RuntimeError: boom" in " ".join(result.stderr.split())
    plugins = json.loads(runner.invoke(app, ["plugins", "--json"]).stdout)
    broken = [p for p in plugins if p["name"] == "broken"][0]
    assert broken["error"] == "RuntimeError: boom"


def test_console_script_exit_code_on_error() -> None:
    """The installed ``dclip`` script (not only CliRunner) exits non-zero on failure (parity FIX 1)."""
    result = subprocess.run(
        [sys.executable, "-m", "dclip_cli", "presets", "show", "nope"], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "Error: No preset named 'nope'." in result.stderr
    assert result.stdout == ""
