"""`dclip --help` must stay fast: importing the CLI must not import torch (style example 21)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "open_clip", "facenet_pytorch", "lpips", "PIL", "numpy", "torchvision")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def test_importing_cli_does_not_import_torch() -> None:
    mods = _modules_after("import dclip_cli.cli.app")
    assert "dclip_cli.cli.app" in mods
    assert not [m for m in HEAVY if m in mods], [m for m in HEAVY if m in mods]


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from dclip_cli.cli.app import app\n"
        "try:\n"
        "    app(['--help'], standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
    )
    mods = _modules_after(code)
    assert "torch" not in mods


def test_python_m_help_runs_without_torch() -> None:
    code = (
        "import runpy, sys\n"
        "sys.argv = ['dclip', '--help']\n"
        "try:\n"
        "    runpy.run_module('dclip_cli', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
    )
    mods = _modules_after(code)
    assert "torch" not in mods
    result = subprocess.run([sys.executable, "-m", "dclip_cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "Usage" in result.stdout and "presets" in result.stdout
