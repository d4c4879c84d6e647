"""The library layer the CLI calls: thin functions over the core modules.

``dclip_cli.cli`` imports only this module, ``errors``, ``console`` and the config records; everything here may
import torch.
"""

from __future__ import annotations

from dclip_cli.device import resolve_device
from dclip_cli.presets.manager import get_registry

__all__ = ["get_registry", "resolve_device"]
