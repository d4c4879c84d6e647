"""Generated documentation must match the code (docs/cli.md from the Typer app, docs/presets.md from the
built-in presets). Regenerate with ``python scripts/gen_docs.py``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_docs_are_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_docs.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_readme_quick_start_has_exactly_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = section.split("```console", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line.startswith("$ ")]
    assert len(commands) == 2, commands
    assert 'dclip edit examples/face.png --to "smiling"' in commands[0]
    assert "pytest" in commands[1] and ".[test]" in commands[1]
