"""The tiny test world in another process, for tests of ``dclip ui``: a preset plugin written as a real
throw-away distribution (module + dist-info with a ``dclip.presets`` entry point) whose checkpoints are served by
the local HTTP server of :mod:`tests.support.http_server`, a tiny CLIP file, and a running ``dclip ui``.

Usage::

    with FileServer() as http:
        world = write_ui_world(tmp_path, http)
        with start_ui(world) as ui:          # python -m dclip_cli --device cpu ui --port <free> --no-browser ...
            client = gradio_client.Client(ui.url)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from tests.support.editing import TINY32_CONFIG, checkpoint_bytes, write_image
from tests.support.plugins import write_distribution

PLUGIN_ENTRY = "tinyui"
PRESET = "tinyface"
IMAGE_SIZE = 32
#: where Debian's chromium package puts the browser (``DCLIP_TEST_CHROMIUM`` overrides)
CHROMIUM = "/usr/bin/chromium"
#: browser flags: no sandbox (root in CI containers), no GPU, nothing that talks to the network by itself
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-extensions",
]

_PLUGIN_SOURCE = """
from dclip_cli.checkpoints.registry import CheckpointSpec
from dclip_cli.presets.hookspecs import hookimpl
from dclip_cli.presets.preset import Edit, Preset

CONFIG = {config!r}


@hookimpl
def register_presets(register):
    register(Preset(
        name={preset!r},
        description="tiny test preset for dclip ui",
        image_size={size},
        checkpoint="tiny_base",
        arch="ddpm",
        arch_config=CONFIG,
        source_text="face",
        domain_prompt="a photo of a face",
        t0=200,
        n_inv_steps=3,
        n_gen_steps=3,
        n_train_steps=2,
        lr=1e-3,
        epochs=1,
        n_train_images=1,
        edits={{
            "smiling": Edit("smiling", "face", "smiling face"),
            "angry": Edit("angry", "face", "angry face"),
            "pixar": Edit("pixar", "face", "pixar face", t0=201, checkpoint="tiny/pixar"),
        }},
    ))


@hookimpl
def register_checkpoints(register):
    register(CheckpointSpec(
        name="tiny_base", filename="tiny_base.ckpt", urls=({base_url!r},), sha256={base_sha!r}, size={base_size},
        format="ddpm", arch="ddpm", arch_config=CONFIG,
    ))
    register(CheckpointSpec(
        name="tiny/pixar", filename="human_pixar_t201.pth", urls=({pixar_url!r},), sha256={pixar_sha!r},
        size={pixar_size}, format="finetuned", arch="ddpm", base="tiny_base", t0=201,
    ))
"""


def require(module: str) -> None:
    """Skip the test when ``module`` is missing, unless ``DCLIP_REQUIRE_UI_TESTS`` is set (CI): then fail."""
    import importlib.util

    if importlib.util.find_spec(module) is not None:
        return
    message = f"{module} is not installed; install the test extra: pip install -e '.[test]'"
    if os.environ.get("DCLIP_REQUIRE_UI_TESTS", "") not in ("", "0"):
        pytest.fail(message)
    pytest.skip(message)


def chromium_path() -> str:
    """The Chromium executable; a missing browser fails under ``DCLIP_REQUIRE_UI_TESTS`` (CI), else skips."""
    path = os.environ.get("DCLIP_TEST_CHROMIUM") or CHROMIUM
    if Path(path).is_file() or shutil.which(path):
        return path
    message = (
        f"Chromium was not found at {path}; install Debian's package (apt-get install chromium; .ci/run does) "
        "or point DCLIP_TEST_CHROMIUM at a Chromium executable"
    )
    if os.environ.get("DCLIP_REQUIRE_UI_TESTS", "") not in ("", "0"):
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class UiWorld:
    """Files and environment of the tiny world for a ``dclip ui`` subprocess."""

    root: Path
    plugin_dir: Path
    clip: Path
    image: Path
    outputs: Path
    env: dict[str, str] = field(default_factory=dict)
    pending: list[threading.Thread] = field(default_factory=list)

    def wait(self) -> None:
        """Wait until every file of the world is written."""
        for thread in self.pending:
            thread.join()
        assert self.clip.is_file(), f"{self.clip} was not written"

    def library(self) -> Path:
        return Path(self.env["DCLIP_DATA"]) / "edits"


def write_ui_world(root: Path, http: Any) -> UiWorld:
    """Write the plugin distribution (checkpoints served by ``http``), the tiny CLIP and an input image."""
    from tests.support.tiny_clip import save_tiny_clip

    base, pixar = checkpoint_bytes(0), checkpoint_bytes(7)
    source = _PLUGIN_SOURCE.format(
        config=TINY32_CONFIG,
        preset=PRESET,
        size=IMAGE_SIZE,
        base_url=http.add("/ui/tiny_base.ckpt", base),
        base_sha=hashlib.sha256(base).hexdigest(),
        base_size=len(base),
        pixar_url=http.add("/ui/human_pixar_t201.pth", pixar),
        pixar_sha=hashlib.sha256(pixar).hexdigest(),
        pixar_size=len(pixar),
    )
    plugin_dir = write_distribution(
        root / "site", "dclip-tinyui", "dclip_tinyui", source, entry_name=PLUGIN_ENTRY
    )
    # the CLIP file is read at the first job, not at start-up: write it while the server boots
    clip = root / "tiny_clip.pt"
    writer = threading.Thread(target=save_tiny_clip, args=(clip,), name="tiny-clip", daemon=True)
    writer.start()
    (root / "tmp").mkdir()
    image = write_image(root / "in" / "photo.png", size=(48, 40))
    env = dict(os.environ)
    paths = [str(plugin_dir)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env.update(
        PYTHONPATH=os.pathsep.join(paths),
        DCLIP_LOAD_PLUGINS=PLUGIN_ENTRY,
        DCLIP_CACHE=str(root / "cache"),
        DCLIP_DATA=str(root / "data"),
        DCLIP_PRECISION="fp32",
        XDG_CACHE_HOME=str(root / "xdg-cache"),
        TORCH_HOME=str(root / "torch-home"),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TMPDIR=str(root / "tmp"),
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    for var in ("DCLIP_OFFLINE", "DCLIP_MIRROR", "DCLIP_DEVICE", "DCLIP_UI_AUTH", "GRADIO_SERVER_NAME"):
        env.pop(var, None)
    return UiWorld(root, plugin_dir, clip, image, root / "outputs", env, [writer])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class UiProcess:
    """A running ``dclip ui``: its URL, process and what it printed so far."""

    url: str
    proc: subprocess.Popen[str]
    stdout: list[str]
    stderr: list[str]

    def output(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)


def _pump(stream: IO[str], sink: list[str]) -> None:
    for line in stream:
        sink.append(line)


@contextlib.contextmanager
def start_ui(world: UiWorld, *extra: str, timeout: float = 90.0) -> Iterator[UiProcess]:
    """Start ``python -m dclip_cli --device cpu ui`` on a free loopback port and wait for its URL on stdout."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "dclip_cli", "--device", "cpu", "ui", "--port", str(port), "--no-browser",
        "--clip-model", str(world.clip), "--metrics", "clip,psnr", "--outputs", str(world.outputs),
        "--precision", "fp32", *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=world.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=world.root
    )
    out: list[str] = []
    err: list[str] = []
    assert proc.stdout is not None and proc.stderr is not None
    threads = [
        threading.Thread(target=_pump, args=(proc.stdout, out), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, err), daemon=True),
    ]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + timeout
        url = None
        while url is None:
            url = next((line.strip() for line in out if line.startswith("http://")), None)
            if url is not None:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"dclip ui did not start (exit code {proc.poll()}):\n{''.join(out)}{''.join(err)}"
                )
            time.sleep(0.1)
        world.wait()
        yield UiProcess(url, proc, out, err)
    finally:
        proc.terminate()  # SIGTERM: dclip ui stops normally and removes its temporary folder
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        for t in threads:
            t.join(timeout=5)
    assert proc.returncode == 0, f"dclip ui exited with {proc.returncode}:\n{''.join(out)}{''.join(err)}"
    assert "dclip ui stopped." in "".join(err)
    left = sorted(p.name for p in (world.root / "tmp").glob("dclip-ui-*"))
    assert not left, f"dclip ui left its temporary folder behind: {left}"
