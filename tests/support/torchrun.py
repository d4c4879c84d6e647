"""dclip under ``torchrun`` in tests (issue 14): the tiny presets as a real plugin distribution, and the launcher.

The ranks are separate processes, so the test plugin object of :mod:`tests.support.editing` cannot reach them:
:func:`write_plugin` writes the same presets and checkpoint specs (served by the test's local HTTP server) as an
installed distribution on ``PYTHONPATH``. :class:`Torchrun` starts ``python -m torch.distributed.run --standalone
--nproc-per-node N -m dclip_cli ...`` (gloo on the CPU, one thread per rank) with that plugin alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dclip_cli.checkpoints.registry import CheckpointSpec
from dclip_cli.presets.preset import Preset
from tests.support.plugins import write_distribution

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_MODULE = "dclip_tinyrun"
PLUGIN_ENTRY = "tinyrun"


def plugin_source(presets: Sequence[Preset], specs: Sequence[CheckpointSpec]) -> str:
    """A plugin module registering ``presets`` and ``specs`` (written out with their ``repr``)."""
    return "\n".join(
        [
            "from dclip_cli.plugin import CheckpointSpec, Edit, Mirror, Preset, hookimpl",
            f"PRESETS = [{', '.join(repr(p) for p in presets)}]",
            f"SPECS = [{', '.join(repr(s) for s in specs)}]",
            "",
            "@hookimpl",
            "def register_presets(register):",
            "    for preset in PRESETS:",
            "        register(preset)",
            "",
            "@hookimpl",
            "def register_checkpoints(register):",
            "    for spec in SPECS:",
            "        register(spec)",
            "",
        ]
    )


def write_plugin(root: Path, presets: Sequence[Preset], specs: Sequence[CheckpointSpec]) -> Path:
    """Install the plugin distribution under ``root`` (put it on ``PYTHONPATH``); returns ``root``."""
    return write_distribution(
        root, "dclip-tinyrun", PLUGIN_MODULE, plugin_source(presets, specs), entry_name=PLUGIN_ENTRY
    )


@dataclass
class Torchrun:
    """Launches dclip commands under torchrun.

    Args:
        plugin_dir: where :func:`write_plugin` installed the test plugin.
        home: the ranks' ``DCLIP_CACHE`` (``home/cache``) and ``DCLIP_DATA`` (``home/data``), shared by the ranks
            and apart from the test process's own.
        timeout: ``DCLIP_DIST_TIMEOUT`` of the ranks (seconds).
    """

    plugin_dir: Path
    home: Path
    timeout: float = 30.0

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        paths = [str(ROOT), str(ROOT / "plugins"), str(self.plugin_dir)]
        env.update(
            PYTHONPATH=os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            DCLIP_LOAD_PLUGINS=PLUGIN_ENTRY,
            DCLIP_CACHE=str(self.home / "cache"),
            DCLIP_DATA=str(self.home / "data"),
            DCLIP_PRECISION="fp32",
            DCLIP_DIST_TIMEOUT=str(self.timeout),
            OMP_NUM_THREADS="1",
            PYTHONUNBUFFERED="1",
        )
        for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "DCLIP_DEVICE", "DCLIP_DEBUG"):
            env.pop(name, None)
        return env

    def command(self, args: Sequence[str], nproc: int = 2, script: Path | None = None) -> list[str]:
        """The torchrun command line: ``-m dclip_cli ARGS``, or ``--no-python SCRIPT ARGS`` (the ``dclip`` entry
        point)."""
        program = ["--no-python", str(script)] if script is not None else ["-m", "dclip_cli"]
        return [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "--monitor-interval", "0.2", *program, *args,
        ]  # fmt: skip

    def run(
        self, args: Sequence[str], nproc: int = 2, timeout: float = 120, script: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``dclip ARGS`` on ``nproc`` ranks and wait for it."""
        return subprocess.run(
            self.command(args, nproc, script), env=self.env(), capture_output=True, text=True, timeout=timeout
        )

    def start(self, args: Sequence[str], nproc: int = 2) -> subprocess.Popen[str]:
        """Start ``dclip ARGS`` on ``nproc`` ranks (stdout and stderr piped)."""
        return subprocess.Popen(
            self.command(args, nproc),
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def rank_pids(launcher_pid: int) -> dict[int, int]:
    """The worker processes torchrun started, by rank (Linux: read from ``/proc``)."""
    found: dict[int, int] = {}
    for task in Path(f"/proc/{launcher_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for item in environ:
                if item.startswith(b"RANK="):
                    found[int(item[5:])] = int(child)
    return found


def kill_rank(launcher_pid: int, rank: int, deadline: float = 30.0) -> int:
    """SIGKILL the worker of ``rank`` (waiting for it to exist); returns its pid."""
    stop = time.monotonic() + deadline
    while time.monotonic() < stop:
        pid = rank_pids(launcher_pid).get(rank)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            return pid
        time.sleep(0.05)
    raise AssertionError(f"torchrun started no rank {rank} within {deadline} s")
