"""Test isolation (after simonw/llm's conftest): every test gets its own cache and data directories, no
network-affecting environment, and only the built-in preset plugins (third-party plugins installed on the machine
stay out). Heavier tests are marked ``slow`` and run only with ``DCLIP_RUN_SLOW=1``.
"""

from __future__ import annotations

import os

import pytest

BUILTIN_PLUGINS = "face,dog,church,bedroom"

#: shared fixtures (``clip_file``, ``world``: the tiny presets served by a local HTTP server)
pytest_plugins = ["tests.support.editing"]


def pytest_configure(config: pytest.Config) -> None:
    # Tiny models are dominated by per-op overhead: one thread is 5-10x faster than two on the 2-core CI box.
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("DCLIP_RUN_SLOW", "") not in ("", "0"):
        return
    skip = pytest.mark.skip(reason="slow test; set DCLIP_RUN_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolate(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    from dclip_cli import console
    from dclip_cli.presets import manager

    root = tmp_path_factory.mktemp("dclip-home")
    monkeypatch.setenv("DCLIP_CACHE", str(root / "cache"))
    monkeypatch.setenv("DCLIP_DATA", str(root / "data"))
    monkeypatch.setenv("DCLIP_LOAD_PLUGINS", BUILTIN_PLUGINS)
    # the commands default to --precision auto (bf16 on CPUs with native bf16, like CI's); tests compare exact
    # float32 results unless they ask for another precision
    monkeypatch.setenv("DCLIP_PRECISION", "fp32")
    for var in ("DCLIP_OFFLINE", "DCLIP_MIRROR", "DCLIP_DEBUG", "DCLIP_DEVICE", "DCLIP_CONFIRM_MINUTES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(root / "xdg-cache"))
    monkeypatch.setenv("TORCH_HOME", str(root / "torch-home"))
    manager.reset_registry()
    saved_extra = list(manager._EXTRA)
    try:
        yield root
    finally:
        manager._EXTRA[:] = saved_extra
        manager.reset_registry()
        console.configure(quiet=False, verbose=False)
        try:
            from dclip_cli.checkpoints import cache

            cache.set_cache_dir_override(None)
        except (ImportError, AttributeError):
            pass
