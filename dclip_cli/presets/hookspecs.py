"""Hook specifications for preset plugins (entry-point group ``dclip.presets``).

Every hook has the register-callback shape: dclip passes a ``register`` function and the plugin calls it once per
record. Plugins never touch dclip's internals.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("dclip")
hookimpl = pluggy.HookimplMarker("dclip")


@hookspec
def register_presets(register: Any) -> None:
    """Register domain presets: call ``register(Preset(...))`` for each."""


@hookspec
def register_checkpoints(register: Any) -> None:
    """Register downloadable files: call ``register(CheckpointSpec(...))`` for each."""


@hookspec
def register_aligners(register: Any) -> None:
    """Register preprocessing aligners: call ``register(Aligner(...))`` for each."""


@hookspec
def register_identity_models(register: Any) -> None:
    """Register identity networks: call ``register(IdentityModel(...))`` for each."""
