"""Run the real ``dclip`` in separate processes over the tiny world of :mod:`tests.support.editing`, for tests of
what two processes do at once.

``python -m tests.support.procs ARGS...`` registers the tiny presets (``tinyface``, ``tinychurch``) in that process
and runs ``dclip ARGS``. The checkpoints must already be in the shared cache (``DCLIP_CACHE``; the parent test
fetches them from its local server first), so no server is needed here.

Fault injection through the environment:

* ``DCLIP_TEST_HOLD=FILE`` with ``DCLIP_TEST_MARKER=FILE``: at its first training batch the process writes the
  marker, then waits while the hold file exists (at most two minutes), so a test can start other processes while
  this one holds a fine-tuning lock.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from dclip_cli.checkpoints.registry import CheckpointSpec
from tests.support.editing import TINY32_CONFIG, TinyPlugin, checkpoint_bytes, tiny_preset

UNREACHABLE = "http://127.0.0.1:9/unreachable"


def cached_specs() -> list[CheckpointSpec]:
    """The tiny world's specs (same names, files and hashes as :func:`tests.support.editing.make_specs`), with
    URLs that cannot be reached: the files must be cached."""
    base, official = checkpoint_bytes(0), checkpoint_bytes(7)
    return [
        CheckpointSpec(
            name="tiny_base", filename="tiny_base.ckpt", urls=(UNREACHABLE,), sha256=hashlib.sha256(base).hexdigest(),
            size=len(base), format="ddpm", arch="ddpm", arch_config=TINY32_CONFIG,
        ),
        CheckpointSpec(
            name="tiny/pixar", filename="human_pixar_t201.pth", urls=(UNREACHABLE,),
            sha256=hashlib.sha256(official).hexdigest(), size=len(official), format="finetuned", arch="ddpm",
            base="tiny_base", t0=201,
        ),
    ]  # fmt: skip


def _hold_training() -> None:
    """Install the ``DCLIP_TEST_HOLD`` hook on the first training batch."""
    hold, marker = os.environ.get("DCLIP_TEST_HOLD"), os.environ.get("DCLIP_TEST_MARKER")
    if not hold or not marker:
        return
    from dclip_cli.training import loop

    real = loop._original_batch

    def held(*args: Any, **kwargs: Any) -> None:
        Path(marker).write_text(str(os.getpid()))
        deadline = time.monotonic() + 120
        while Path(hold).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        real(*args, **kwargs)

    loop._original_batch = held  # type: ignore[assignment]


def main(argv: list[str]) -> None:
    from dclip_cli.cli.app import app
    from dclip_cli.presets import manager

    os.environ["DCLIP_LOAD_PLUGINS"] = ""
    presets = [tiny_preset("tinyface", "a photo of a face"), tiny_preset("tinychurch", "a photo of a dog")]
    manager.register_plugin("tiny-editing", TinyPlugin(presets, cached_specs()))
    _hold_training()
    app(argv, prog_name="dclip")


if __name__ == "__main__":
    main(sys.argv[1:])
