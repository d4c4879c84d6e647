"""The package layout keeps its promises: public names resolve to what the docs say whatever was imported before,
no module takes part in an import cycle, modules stay small, and plugins need only the facade."""

from __future__ import annotations

import json
import pkgutil
import random
import subprocess
import sys
import types
from pathlib import Path

import pytest

import dclip_cli

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dclip_cli"

WALK = """
import importlib, json, sys, types
order = json.loads(sys.argv[1])
for module in json.loads(sys.argv[2]):
    importlib.import_module(module)
import dclip_cli as d
bad = []
for name in order:
    value = getattr(d, name)
    module, attr = d._EXPORTS[name]
    if isinstance(value, types.ModuleType) or value is not getattr(importlib.import_module(module), attr):
        bad.append(name)
if "FinetuneConfig" in order:  # the order of the report in issue 10
    d.FinetuneConfig(epochs=1)
    assert callable(d.finetune) and d.finetune.__module__ == "dclip_cli.training.loop"
print(json.dumps(bad))
"""


def _submodules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages([str(PACKAGE)], prefix="dclip_cli."))


def _walk(order: list[str], preload: list[str]) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", WALK, json.dumps(order), json.dumps(preload)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_no_public_name_is_also_a_submodule() -> None:
    """A submodule named like a public function would replace it on the package once imported
    (``dclip_cli.finetune`` was both)."""
    children = {name.split(".")[1] for name in _submodules()}
    assert not children & set(dclip_cli.__all__)
    assert all(not isinstance(getattr(dclip_cli, n), types.ModuleType) for n in ["__version__"])


@pytest.mark.parametrize("seed", ["sorted", "reversed", 1, 2])
def test_public_names_resolve_in_any_order_in_a_fresh_interpreter(seed: object) -> None:
    names = [n for n in dclip_cli.__all__ if n != "__version__"]
    if seed == "reversed":
        names.reverse()
    elif isinstance(seed, int):
        random.Random(seed).shuffle(names)
    assert _walk(names, []) == []


def test_public_names_resolve_after_every_submodule_was_imported() -> None:
    preload = [m for m in _submodules() if not m.startswith("dclip_cli.cli") and m != "dclip_cli.__main__"]
    assert _walk(["FinetuneConfig", *sorted(set(dclip_cli.__all__) - {"__version__"})], preload) == []


def test_no_module_is_part_of_an_import_cycle() -> None:
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("dclip_cli")
    modules = sorted(m for m in graph.modules if m.startswith("dclip_cli"))
    edges = {
        m: sorted(w for w in graph.find_modules_directly_imported_by(m) if w.startswith("dclip_cli"))
        for m in modules
    }
    # Tarjan's strongly connected components, iteratively
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0
    for start in modules:
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            if i < len(edges[node]):
                work.append((node, i + 1))
                child = edges[node][i]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            for child in edges[node]:
                if child in on_stack:
                    low[node] = min(low[node], low[child])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    assert cycles == []


def test_modules_stay_small() -> None:
    """The reorganisation's bound: no module over about 700 lines."""
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 720} == {}


def test_plugin_facade_is_light_and_the_old_import_paths_still_work() -> None:
    code = """
import sys
from dclip_cli import plugin
assert "torch" not in sys.modules, "importing the plugin facade imported torch"
from dclip_cli.checkpoints.registry import CheckpointSpec
from dclip_cli.presets.hookspecs import hookimpl
from dclip_cli.presets.preset import Aligner, Edit, IdentityModel, Preset
from dclip_cli.presets.tables import edits_from_table
assert (plugin.CheckpointSpec, plugin.hookimpl, plugin.Preset, plugin.Edit) == (CheckpointSpec, hookimpl, Preset, Edit)
assert (plugin.Aligner, plugin.IdentityModel, plugin.edits_from_table) == (Aligner, IdentityModel, edits_from_table)
from dclip_cli.losses.identity import build_facenet
from dclip_cli.models import DDPM_256_CONFIG, ADM_AFHQ_CONFIG
assert plugin.DDPM_256_CONFIG is DDPM_256_CONFIG and plugin.ADM_AFHQ_CONFIG is ADM_AFHQ_CONFIG
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_built_in_plugins_import_only_the_facade() -> None:
    for folder in sorted((ROOT / "plugins").glob("dclip_*")):
        for source in folder.rglob("*.py"):
            lines = [ln.strip() for ln in source.read_text().splitlines()]
            imports = [ln for ln in lines if ln.startswith(("from dclip_cli", "import dclip_cli"))]
            assert all(ln.startswith("from dclip_cli.plugin import") for ln in imports), (source, imports)
