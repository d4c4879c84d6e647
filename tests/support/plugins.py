"""Helpers to install throw-away preset plugins the way a real third-party package is installed: a module plus a
``*.dist-info`` folder with ``entry_points.txt`` on ``sys.path``."""

from __future__ import annotations

import textwrap
from pathlib import Path


def write_distribution(
    root: Path,
    dist_name: str,
    module: str,
    source: str,
    *,
    entry_name: str | None = None,
    version: str = "0.1.0",
) -> Path:
    """Write ``module`` with ``source`` and a dist-info declaring it in ``dclip.presets``; return ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist_name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[dclip.presets]\n{entry_name or module} = {module}\n")
    (info / "RECORD").write_text("")
    return root


PRESET_SOURCE = """
from dclip_cli.checkpoints.registry import CheckpointSpec
from dclip_cli.presets.hookspecs import hookimpl
from dclip_cli.presets.preset import Edit, Preset


@hookimpl
def register_presets(register):
    register(Preset(
        name="{name}",
        description="A test preset.",
        image_size=32,
        checkpoint="{name}_base",
        arch="ddpm",
        arch_config={{"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [16],
                      "resolution": 32}},
        source_text="cat",
        domain_prompt="a photo of a cat",
        t0=300,
        edits={{"tiger": Edit(key="tiger", src="cat", trg="tiger", t0=301)}},
    ))


@hookimpl
def register_checkpoints(register):
    register(CheckpointSpec(name="{name}_base", filename="{name}.ckpt", urls=("http://127.0.0.1:9/x.ckpt",)))
"""


def write_wheel(
    folder: Path,
    dist_name: str,
    module: str,
    source: str,
    *,
    entry_name: str | None = None,
    version: str = "0.1.0",
    plugin: bool = True,
) -> Path:
    """Build a pure-Python wheel of a one-module preset plugin in ``folder`` (no build backend, no network) and
    return its path; ``pip install`` takes it like any wheel. ``plugin=False`` leaves out the entry point (a
    package that is not a dclip plugin)."""
    import base64
    import hashlib
    import zipfile

    stem = dist_name.replace("-", "_")
    info = f"{stem}-{version}.dist-info"
    files = {
        f"{module}.py": textwrap.dedent(source).encode(),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: dclip-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    if plugin:
        files[f"{info}/entry_points.txt"] = f"[dclip.presets]\n{entry_name or module} = {module}\n".encode()
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{stem}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return wheel
