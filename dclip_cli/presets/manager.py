"""Discovery of preset plugins through the ``dclip.presets`` entry-point group.

The four built-in presets (face, dog, church, bedroom) are ordinary plugins declared in dclip's own
``pyproject.toml``; third-party packages add entry points to the same group. Loading is guarded: a plugin that fails
to import, misspells a hook, registers an invalid record or even calls ``sys.exit()`` becomes one warning and is
skipped, so ``dclip --help`` and every other command keep working.

Name clashes never depend on load order: first-party registrations (the core's checkpoints and the plugins of the
``dclip`` distribution) keep their names, and plugins are loaded first-party first, then sorted by distribution and
entry-point name. A plugin registering a name that is taken (a checkpoint, an aligner, an identity model, or a
checkpoint's cache file) is ignored for that record with one warning naming both distributions; two third-party
presets of the same name both become unusable until one is removed (:class:`DuplicatePresetError`).

``DCLIP_LOAD_PLUGINS`` (comma list of entry-point names; empty loads none) restricts what is loaded.
"""

from __future__ import annotations

import functools
import os
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from dclip_cli.checkpoints.registry import CheckpointSpec
from dclip_cli.errors import DuplicatePresetError, UnknownPresetError
from dclip_cli.presets import hookspecs
from dclip_cli.presets.preset import Aligner, IdentityModel, Preset

ENTRY_POINT_GROUP = "dclip.presets"
#: the distribution whose plugins are first-party (the built-in presets)
FIRST_PARTY = "dclip"
#: the owner named in warnings for the core's own checkpoint specs
CORE_OWNER = "dclip (core)"
HOOK_NAMES = ("register_presets", "register_checkpoints", "register_aligners", "register_identity_models")


@dataclass
class PluginInfo:
    """What ``dclip plugins`` shows about one loaded (or failed) plugin."""

    name: str
    module: str
    distribution: str | None
    version: str | None
    hooks: list[str] = field(default_factory=list)
    error: str | None = None
    #: what the plugin registered (and kept), by kind: ``presets``, ``checkpoints``, ``aligners``,
    #: ``identity_models``
    registered: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "hooks": self.hooks,
            "error": self.error,
            "registered": self.registered,
        }


@dataclass
class Registry:
    """Everything the loaded plugins registered."""

    presets: dict[str, Preset] = field(default_factory=dict)
    checkpoints: dict[str, CheckpointSpec] = field(default_factory=dict)
    aligners: dict[str, Aligner] = field(default_factory=dict)
    identity_models: dict[str, IdentityModel] = field(default_factory=dict)
    plugins: list[PluginInfo] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: preset name -> distribution that registered it (for duplicate errors)
    preset_owner: dict[str, str] = field(default_factory=dict)
    #: preset names registered by more than one plugin -> owners
    duplicates: dict[str, list[str]] = field(default_factory=dict)

    def preset(self, name: str) -> Preset:
        """Return the preset ``name``, raising a clear error for unknown or duplicated names."""
        if name in self.duplicates:
            owners = " and ".join(self.duplicates[name])
            raise DuplicatePresetError(
                f"Two plugins register a preset named {name!r}: {owners}.",
                hint="Uninstall one of them, or restrict loading with DCLIP_LOAD_PLUGINS.",
            )
        try:
            return self.presets[name]
        except KeyError:
            known = ", ".join(sorted(self.presets)) or "(none installed)"
            raise UnknownPresetError(
                f"No preset named {name!r}.",
                hint=f"Installed presets: {known}. Run 'dclip presets list' to see them.",
            ) from None


def _debug() -> bool:
    return os.environ.get("DCLIP_DEBUG", "") not in ("", "0")


def _allowed_names() -> set[str] | None:
    raw = os.environ.get("DCLIP_LOAD_PLUGINS")
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _dist_of(ep: metadata.EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


def _format_exc(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text.splitlines()[0] if text else type(exc).__name__


def _identity(obj: Any) -> Any:
    return obj


class _Collector:
    """Collects what one plugin registers, validating each record's type."""

    def __init__(self, plugin: str) -> None:
        self.plugin = plugin
        self.presets: list[Preset] = []
        self.checkpoints: list[CheckpointSpec] = []
        self.aligners: list[Aligner] = []
        self.identity_models: list[IdentityModel] = []

    def _typed(self, kind: type, target: list[Any]) -> Callable[[Any], None]:
        def register(obj: Any) -> None:
            if not isinstance(obj, kind):
                raise TypeError(f"registered a {type(obj).__name__} where a {kind.__name__} was expected")
            target.append(obj)

        return register


def _is_first_party(dist: str | None) -> bool:
    return dist is not None and dist.lower().replace("_", "-") == FIRST_PARTY


def load_registry(
    entry_points: Iterable[metadata.EntryPoint] | None = None,
    extra_plugins: Iterable[tuple[str, ModuleType | object]] = (),
) -> Registry:
    """Load the preset plugins and return what they registered.

    Args:
        entry_points: entry points to load; by default those of the ``dclip.presets`` group, filtered by
            ``DCLIP_LOAD_PLUGINS``.
        extra_plugins: ``(name, module_or_object)`` pairs registered directly (tests use this); they load after
            the entry-point plugins, in the order given.
    """
    registry = Registry()
    allowed = _allowed_names()
    if entry_points is None:
        entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
    candidates: list[tuple[str, str, str | None, str | None, Callable[[], Any]]] = []
    seen: set[tuple[str, str]] = set()
    for ep in entry_points:
        if allowed is not None and ep.name not in allowed:
            continue
        dist, version = _dist_of(ep)
        key = (ep.name, ep.value)
        if key in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add(key)
        candidates.append((ep.name, ep.value, dist, version, ep.load))
    # the order of sys.path (and of entry points within it) must not decide who owns a name
    candidates.sort(key=lambda c: (not _is_first_party(c[2]), (c[2] or "").lower(), c[0], c[1]))
    for name, obj in extra_plugins:
        module = getattr(obj, "__name__", type(obj).__name__)
        candidates.append((name, module, None, None, functools.partial(_identity, obj)))

    claims = _Claims(registry)
    for name, module_name, dist, version, load in candidates:
        info = PluginInfo(name=name, module=module_name, distribution=dist, version=version)
        registry.plugins.append(info)
        try:
            plugin = load()
            collector = _register_plugin(name, plugin, info)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - a broken plugin (even one calling sys.exit) must not break the CLI
            info.error = _format_exc(exc)
            msg = f"Preset plugin {name!r} failed to load: {info.error}"
            if _debug():
                msg += "\n" + "".join(traceback.format_exception(exc))
            else:
                msg += "; run with DCLIP_DEBUG=1 for details"
            registry.warnings.append(msg)
            continue
        owner = f"{dist} ({name})" if dist else name
        claims.add(collector, owner)
        info.registered = {
            "presets": [p.name for p in collector.presets if registry.preset_owner.get(p.name) == owner],
            "checkpoints": [c.name for c in collector.checkpoints if registry.checkpoints.get(c.name) is c],
            "aligners": [a.name for a in collector.aligners if registry.aligners.get(a.name) is a],
            "identity_models": [
                i.name for i in collector.identity_models if registry.identity_models.get(i.name) is i
            ],
        }
    return registry


class _Claims:
    """Who owns each name: first come in the (deterministic) load order, the core's checkpoints before all."""

    def __init__(self, registry: Registry) -> None:
        from dclip_cli.checkpoints.builtin import CORE_SPECS

        self.registry = registry
        #: checkpoint name or alias -> (owner, spec)
        self.spec_names: dict[str, tuple[str, CheckpointSpec]] = {}
        #: cache file (folder/filename) -> (owner, spec)
        self.spec_files: dict[str, tuple[str, CheckpointSpec]] = {}
        self.owners: dict[tuple[str, str], str] = {}
        for spec in CORE_SPECS.values():
            self._claim_spec(spec, CORE_OWNER)

    @staticmethod
    def _file_key(spec: CheckpointSpec) -> str:
        folder, _, _ = spec.name.rpartition("/")
        return f"{folder}/{spec.filename}" if folder else spec.filename

    def _claim_spec(self, spec: CheckpointSpec, owner: str) -> None:
        for key in (spec.name, *spec.aliases):
            self.spec_names.setdefault(key, (owner, spec))
        self.spec_files.setdefault(self._file_key(spec), (owner, spec))

    def _clash(self, kind: str, name: str, first: str, owner: str, what: str = "") -> None:
        self.registry.warnings.append(
            f"{owner} registers {kind} {name!r}{what}, which {first} already registers; {first}'s is used and "
            f"{owner}'s is ignored"
        )

    def add(self, collector: _Collector, owner: str) -> None:
        registry = self.registry
        for preset in collector.presets:
            first = registry.preset_owner.get(preset.name)
            if first is None:
                registry.presets[preset.name] = preset
                registry.preset_owner[preset.name] = owner
            elif preset.name in registry.duplicates or not _is_first_party_owner(first):
                # two third-party presets: neither load order nor anything else can pick one
                registry.duplicates.setdefault(preset.name, [first]).append(owner)
                registry.warnings.append(
                    f"Preset {preset.name!r} is registered by both {first} and {owner}; "
                    "it cannot be used until one is removed"
                )
            else:
                self._clash("preset", preset.name, first, owner)
        for spec in collector.checkpoints:
            self._add_spec(spec, owner)
        groups: tuple[tuple[str, list[Any], dict[str, Any]], ...] = (
            ("aligner", collector.aligners, registry.aligners),
            ("identity model", collector.identity_models, registry.identity_models),
        )
        for kind, items, target in groups:
            for item in items:
                key = (kind, item.name)
                if key not in self.owners:
                    self.owners[key] = owner
                    target[item.name] = item
                elif target[item.name] != item:
                    self._clash(kind, item.name, self.owners[key], owner)

    def _add_spec(self, spec: CheckpointSpec, owner: str) -> None:
        for key in (spec.name, *spec.aliases):
            taken = self.spec_names.get(key)
            if taken is not None and taken[1] != spec:
                what = "" if key == spec.name else f" (as an alias of {spec.name!r})"
                self._clash("checkpoint", key, taken[0], owner, what)
                return
            if taken is not None and key == spec.name:
                return  # the very same spec registered again (a plugin bundling a built-in base): nothing to do
        taken = self.spec_files.get(self._file_key(spec))
        if taken is not None and taken[1] != spec:
            self._clash(
                "checkpoint", spec.name, taken[0], owner, f" with the cache file of {taken[1].name!r}"
            )
            return
        self._claim_spec(spec, owner)
        self.registry.checkpoints[spec.name] = spec


def _is_first_party_owner(owner: str) -> bool:
    return owner.split(" ", 1)[0].lower() == FIRST_PARTY


def _register_plugin(name: str, plugin: Any, info: PluginInfo) -> _Collector:
    """Run one plugin's hooks in its own plugin manager, so a failure affects only that plugin."""
    pm = pluggy.PluginManager("dclip")
    pm.add_hookspecs(hookspecs)
    pm.register(plugin, name=name)
    pm.check_pending()  # a misspelt hook name fails loudly
    info.hooks = sorted(impl.function.__name__ for impl in _impls(pm))
    collector = _Collector(name)
    pm.hook.register_presets(register=collector._typed(Preset, collector.presets))
    pm.hook.register_checkpoints(register=collector._typed(CheckpointSpec, collector.checkpoints))
    pm.hook.register_aligners(register=collector._typed(Aligner, collector.aligners))
    pm.hook.register_identity_models(register=collector._typed(IdentityModel, collector.identity_models))
    return collector


def _impls(pm: pluggy.PluginManager) -> list[Any]:
    impls = []
    for hook_name in HOOK_NAMES:
        caller = getattr(pm.hook, hook_name)
        impls.extend(caller.get_hookimpls())
    return impls


_REGISTRY: Registry | None = None
_EXTRA: list[tuple[str, Any]] = []


def get_registry() -> Registry:
    """The process-wide registry, loaded once on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = load_registry(extra_plugins=list(_EXTRA))
    return _REGISTRY


def register_plugin(name: str, plugin: Any) -> None:
    """Register a plugin object directly (without an entry point) and reload the registry."""
    _EXTRA.append((name, plugin))
    reset_registry()


def unregister_plugin(name: str) -> None:
    """Undo :func:`register_plugin`."""
    _EXTRA[:] = [(n, p) for n, p in _EXTRA if n != name]
    reset_registry()


def reset_registry() -> None:
    """Forget the loaded registry; the next :func:`get_registry` loads again."""
    global _REGISTRY
    _REGISTRY = None
