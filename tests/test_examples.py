"""Every ``dclip ...`` example in the README, the docs and the commands' own help names commands and options that
exist: each is parsed with ``--help`` appended (so nothing runs, but unknown commands and options still fail)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dclip_cli.cli.app import app

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "README.md", ROOT / "plugins" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINE = re.compile(r"^\s*(?:\$\s+)?(?:[A-Z_]+=\S+\s+)*(dclip(?:\s.*)?)$")


def _examples() -> list[tuple[str, str]]:
    found: dict[str, str] = {}
    for path in SOURCES:
        fenced = False
        for line in path.read_text().splitlines():
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            in_code = fenced or line.startswith("    ") or line.lstrip().startswith("$ ")
            m = _LINE.match(line) if in_code else None
            if not m:
                continue
            command = m.group(1).split("  #", 1)[0].split(" # ", 1)[0].strip().rstrip("`")
            if "&&" in command or "..." in command or "|" in command or "[" in command:
                continue  # usage synopses and shell pipelines, not examples
            found.setdefault(command, path.name)
    for name, epilog in _epilogs():
        for line in epilog.splitlines():
            m = _LINE.match(line)
            if m:
                found.setdefault(m.group(1).split(" # ", 1)[0].strip(), f"help of {name}")
    return sorted(found.items())


def _epilogs() -> list[tuple[str, str]]:
    """The ``Examples:`` epilog of every command, from the Typer app itself."""
    import typer

    out: list[tuple[str, str]] = []
    stack = [("dclip", typer.main.get_command(app))]
    while stack:
        name, cmd = stack.pop()
        if getattr(cmd, "epilog", None):
            out.append((name, cmd.epilog))
        for sub_name, sub in getattr(cmd, "commands", {}).items():
            stack.append((f"{name} {sub_name}", sub))
    return out


EXAMPLES = _examples()


def test_examples_were_found() -> None:
    assert any(source.startswith("help of dclip models") for _, source in EXAMPLES)
    commands = {cmd.split()[1] for cmd, _ in EXAMPLES if len(cmd.split()) > 1}
    assert {"edit", "finetune", "mix", "translate", "invert", "models", "presets"} <= commands
    assert len(EXAMPLES) > 30


@pytest.mark.parametrize(("command", "source"), EXAMPLES, ids=[c for c, _ in EXAMPLES])
def test_example_parses(command: str, source: str) -> None:
    args = shlex.split(command)[1:]
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0, f"{source}: {command}\n{result.output}"
