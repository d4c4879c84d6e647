"""The wheel ships dclip_cli plus the four preset packages as top-level packages and declares them as
``dclip.presets`` entry points (style guide 3.1)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_top_level_packages_and_entry_points(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(ROOT)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("dclip-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
        assert top == {"dclip_cli", "dclip_face", "dclip_dog", "dclip_church", "dclip_bedroom"}
        assert "dclip_cli/py.typed" in names
        ep_name = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = zf.read(ep_name).decode()
    section = entry_points.split("[dclip.presets]", 1)[1].split("[", 1)[0]
    declared = dict(line.split(" = ") for line in section.strip().splitlines())
    assert declared == {"face": "dclip_face", "dog": "dclip_dog", "church": "dclip_church",
                        "bedroom": "dclip_bedroom"}  # fmt: skip
    assert "dclip = dclip_cli.cli.app:main" in entry_points
