"""``dclip doctor``: versions, device and precision, folders, what each preset has, plugins and settings."""

from __future__ import annotations

import json
from typing import Any

import typer

from dclip_cli.cli.options import JsonOpt

EXAMPLES = """
Examples:

  dclip doctor

  dclip doctor --json > doctor.json    # attach this to a bug report
"""


def _section(title: str, rows: list[tuple[str, str]]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left", title_style="bold", show_header=False, box=None)
    table.add_column("what", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in rows:
        table.add_row(key, value)
    return table


def _error_row(data: dict[str, Any]) -> list[tuple[str, str]]:
    return [("error", f"[red]{data['error']}[/red]")] if "error" in data else []


def doctor(as_json: JsonOpt = False) -> None:
    """Show what a bug report should contain: versions, the device and precision 'auto' picks and why, folders and
    free space, what each preset has cached, plugins and settings."""
    from rich.markup import escape as esc

    from dclip_cli import console
    from dclip_cli.cli._common import load_registry_with_warnings
    from dclip_cli.fileio import format_bytes
    from dclip_cli.store.doctor import diagnose

    load_registry_with_warnings()
    report = diagnose()
    if as_json:
        console.out.print_json(json.dumps(report, default=str))
        return
    out = console.out
    v = report["versions"]
    rows = _error_row(v)
    if "error" not in v:
        rows += [
            ("dclip", esc(str(v["dclip"]))),
            ("Python", esc(f"{v['python']} ({v['executable']})")),
            ("torch", esc(f"{v['torch']}, CUDA {v['cuda'] or 'none'}")),
            ("platform", esc(str(v["platform"]))),
            (
                "packages",
                esc(", ".join(f"{k} {v[k]}" for k in ("open-clip-torch", "safetensors", "typer", "rich"))),
            ),
        ]
    out.print(_section("Versions", rows))
    c = report["compute"]
    rows = _error_row(c)
    if "error" not in c:
        rows += [
            ("device (auto)", esc(f"{c['device']}, because {c['device_reason']}")),
            (
                "precision (auto)",
                esc(
                    f"{c['precision']} (fine-tuning: {c['precision_training']}), because {c['precision_reason']}"
                ),
            ),
            ("CPU", esc(f"{c['cpu']}, {c['cpu_cores']} cores, {c['torch_threads']} torch threads")),
            ("CPU features", esc(" ".join(c["cpu_features"]) or "none of note")),
        ]
        for gpu in c["gpus"]:
            rows.append(
                (
                    f"GPU {gpu['index']}",
                    esc(
                        f"{gpu['name']}, {format_bytes(gpu['memory'])}, compute capability {gpu['capability']}"
                    ),
                )
            )
        if not c["gpus"]:
            rows.append(("GPU", "none" + (" (Apple MPS available)" if c["mps"] else "")))
    out.print(_section("Compute", rows))
    f = report["folders"]
    rows = _error_row(f)
    for key, info in ({} if "error" in f else f).items():
        state = [] if info["exists"] else ["not created yet"]
        state += [] if info["writable"] else ["[red]not writable[/red]"]
        state.append(
            f"{format_bytes(info['free'])} free" if info["free"] is not None else "free space unknown"
        )
        rows.append((key, f"{esc(info['path'])} ({', '.join(state)})"))
    out.print(_section("Folders", rows))
    p = report["presets"]
    rows = _error_row(p)
    for name, info in ({} if "error" in p else p).items():
        total = info["cached"] + info["missing"]
        if info["missing"]:
            size = ("about " if info["missing_approximate"] else "") + format_bytes(info["missing_size"])
            size += f" + {info['missing_unknown']} of unknown size" if info["missing_unknown"] else ""
            text = (
                f"{info['cached']} of {total} files cached; missing: {size} "
                f"('dclip models fetch --preset {name} --dry-run' lists them)"
            )
        else:
            text = f"all {total} files cached"
        rows.append((name, esc(text)))
    out.print(_section("Presets", rows))
    pl = report["plugins"]
    rows = _error_row(pl)
    for plugin in [] if "error" in pl else pl["loaded"] + pl["failed"]:
        where = (
            f"{plugin['distribution']} {plugin['version']}" if plugin["distribution"] else plugin["module"]
        )
        status = f"[red]failed: {esc(plugin['error'])}[/red]" if plugin["error"] else "ok"
        rows.append((esc(plugin["name"]), f"{esc(where)}: {status}"))
    out.print(_section("Plugins", rows))
    s = report["settings"]
    rows = _error_row(s)
    if "error" not in s:
        rows += [
            ("offline", "yes (DCLIP_OFFLINE)" if s["offline"] else "no"),
            ("mirror", esc(s["mirror"] or "not set")),
            ("partial downloads", str(s["partial_downloads"])),
        ]
        rows += [
            (esc(k), esc(val))
            for k, val in s["environment"].items()
            if k not in ("DCLIP_OFFLINE", "DCLIP_MIRROR")
        ]
    out.print(_section("Settings", rows))


def register(app: typer.Typer) -> None:
    app.command("doctor", epilog=EXAMPLES)(doctor)
