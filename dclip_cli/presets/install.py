"""Installing and uninstalling preset plugins into the environment dclip itself runs in (``dclip plugins install``).

This is what ``pipx inject dclip NAME`` does, without knowing how dclip was installed: ``sys.executable -m pip``
installs into the interpreter running dclip, whether that is a virtual environment, a pipx venv or a conda env.
Afterwards the plugins are loaded again and the result says what the new distribution registered.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from dclip_cli.errors import PresetError
from dclip_cli.presets.manager import ENTRY_POINT_GROUP, FIRST_PARTY, PluginInfo, get_registry, reset_registry

Output = Callable[[str], None]


@dataclass
class PluginChange:
    """What ``install`` or ``uninstall`` did.

    Args:
        package: what was asked for (a name, a requirement, a path or a URL).
        distributions: the distributions that provide the plugins concerned.
        plugins: those plugins as loaded now (after install) or as they were (before uninstall).
        already: the package was installed already (``install``: pip had nothing to do).
        excluded: plugins of the package that ``DCLIP_LOAD_PLUGINS`` keeps from loading.
    """

    package: str
    distributions: list[str] = field(default_factory=list)
    plugins: list[PluginInfo] = field(default_factory=list)
    already: bool = False
    excluded: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "package": self.package,
            "distributions": self.distributions,
            "plugins": [p.to_dict() for p in self.plugins],
            "already": self.already,
            "excluded": self.excluded,
        }


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _entry_points() -> dict[tuple[str, str], str | None]:
    """``(entry-point name, value) -> distribution`` of every installed preset plugin."""
    importlib.invalidate_caches()
    out = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        out[(ep.name, ep.value)] = dist.metadata["Name"] if dist is not None else None
    return out


def _pip(args: list[str], output: Output | None) -> tuple[int, list[str]]:
    """Run ``sys.executable -m pip ARGS``, passing each line of its output to ``output``."""
    if importlib.util.find_spec("pip") is None:
        raise PresetError(
            f"pip is not available in the Python environment dclip runs in ({sys.executable}).",
            hint="Add it with 'python -m ensurepip', or install the plugin with the tool that made this environment "
            "(for example 'uv pip install --python "
            + sys.executable
            + " NAME' or 'pipx inject dclip NAME').",
        )
    cmd = [sys.executable, "-m", "pip", *args]
    lines: list[str] = []
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            lines.append(line)
            if output is not None and line:
                output(line)
        code = proc.wait()
    return code, lines


def _pip_failure(what: str, package: str, code: int, lines: list[str]) -> PresetError:
    errors = [ln for ln in lines if ln.startswith("ERROR")] or [ln for ln in lines if ln.strip()][-1:]
    detail = errors[0].removeprefix("ERROR: ") if errors else f"exit status {code}"
    return PresetError(
        f"pip could not {what} {package}: {detail}",
        hint="Check the name (it is a package name on PyPI, a path or a URL) and the network connection; pip's "
        "output above says more.",
    )


def _names_in(package: str, lines: list[str]) -> set[str]:
    """The distribution names a ``pip install PACKAGE`` was about: from the requirement or the wheel's file name,
    and from pip's "already satisfied" and "Successfully installed" lines."""
    text = package.strip()
    names = {_normalize(re.split(r"[\[<>=!~;@ ]", text, maxsplit=1)[0])}
    if text.endswith(".whl"):
        names.add(_normalize(Path(text).name.split("-", 1)[0]))
    for line in lines:
        m = re.match(r"Requirement already satisfied: ([A-Za-z0-9._-]+)", line)
        if m:
            names.add(_normalize(m.group(1)))
        m = re.match(r"(?:\S+ )?([A-Za-z0-9._-]+) is already installed", line)
        if m:
            names.add(_normalize(m.group(1)))
        if line.startswith("Successfully installed "):
            names |= {_normalize(n.rsplit("-", 1)[0]) for n in line.split()[2:]}
    return names


def _plugins_of(distributions: set[str]) -> list[PluginInfo]:
    reset_registry()
    registry = get_registry()
    return [p for p in registry.plugins if p.distribution and _normalize(p.distribution) in distributions]


def _excluded(eps: dict[tuple[str, str], str | None], distributions: set[str]) -> list[str]:
    from dclip_cli.presets.manager import _allowed_names

    allowed = _allowed_names()
    if allowed is None:
        return []
    return sorted(n for (n, _), d in eps.items() if d and _normalize(d) in distributions and n not in allowed)


def install_plugin(package: str, *, upgrade: bool = False, output: Output | None = None) -> PluginChange:
    """``pip install PACKAGE`` into dclip's own environment, then load the plugins it brings.

    Args:
        package: a package name (``dclip-cats``), a requirement (``dclip-cats>=1.2``), a path (a wheel or a
            project folder) or a URL, as pip takes them.
        upgrade: pass ``--upgrade`` to pip.
        output: receives pip's output, line by line.

    Raises:
        PresetError: pip is missing or failed, or the package installed but registers no dclip preset plugin.
    """
    before = _entry_points()
    code, lines = _pip(["install", *(["--upgrade"] if upgrade else []), package], output)
    if code != 0:
        raise _pip_failure("install", package, code, lines)
    after = _entry_points()
    new = {key: dist for key, dist in after.items() if key not in before}
    dists = {_normalize(d) for d in new.values() if d}
    already = False
    if not dists:  # nothing new: already installed (or an upgrade of the same plugin), or not a plugin at all
        wanted = _names_in(package, lines)
        dists = {_normalize(d) for d in after.values() if d and _normalize(d) in wanted}
        already = bool(dists) and not any("Successfully installed" in ln for ln in lines)
    if not dists:
        raise PresetError(
            f"{package} was installed, but it registers no dclip preset plugin (no entry point in the group "
            f"{ENTRY_POINT_GROUP!r}).",
            hint="Check the package name; remove the package again with 'python -m pip uninstall' if it was a "
            "mistake.",
        )
    return PluginChange(
        package,
        sorted(dists),
        _plugins_of(dists),
        already=already,
        excluded=_excluded(after, dists),
    )


def uninstall_plugin(name: str, *, output: Output | None = None) -> PluginChange:
    """``pip uninstall`` a preset plugin's distribution from dclip's environment.

    ``name`` is the distribution (``dclip-cats``) or the plugin's entry-point name (``cats``). Only distributions
    that provide preset plugins are removed, and never dclip itself (its built-in presets).

    Raises:
        PresetError: not installed, not a preset plugin, dclip itself, or pip failed.
    """
    eps = _entry_points()
    wanted = _normalize(name)
    dists = {_normalize(d) for d in eps.values() if d and _normalize(d) == wanted}
    if not dists:  # an entry-point name (the plugin's name in 'dclip plugins')
        dists = {_normalize(d) for (n, _), d in eps.items() if d and _normalize(n) == wanted}
    if FIRST_PARTY in dists:
        raise PresetError(
            f"{name} is part of dclip itself (its built-in presets) and cannot be uninstalled on its own.",
            hint="Load only some plugins with DCLIP_LOAD_PLUGINS=face,dog (an empty value loads none).",
        )
    if not dists:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise PresetError(
                f"No installed preset plugin is called {name!r}.",
                hint="'dclip plugins' lists the installed plugins with their distributions.",
            ) from None
        raise PresetError(
            f"{name} is installed but is not a dclip preset plugin, so 'dclip plugins uninstall' leaves it alone.",
            hint="Remove other packages with 'python -m pip uninstall'.",
        )
    registry = get_registry()
    plugins = [p for p in registry.plugins if p.distribution and _normalize(p.distribution) in dists]
    code, lines = _pip(["uninstall", "--yes", *sorted(dists)], output)
    if code != 0:
        raise _pip_failure("uninstall", name, code, lines)
    reset_registry()
    return PluginChange(name, sorted(dists), plugins)
