"""``dclip plugins install|uninstall`` (issue 12) with a real pip, in a throw-away environment, from a wheel built
here: nothing comes from the network and the shared environment is not touched."""

from __future__ import annotations

import json
import os
import subprocess
import sysconfig
import venv
from pathlib import Path

import pytest

from tests.support.plugins import PRESET_SOURCE, write_wheel

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | Path]:
    """A virtual environment whose own site-packages starts empty but which sees this environment's packages
    (torch, pip, ...) through a .pth file, so pip installs into it and only into it."""
    root = tmp_path_factory.mktemp("plugin-env")
    home = root / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(home)
    python = home / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(purelib, "zz_shared.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return {"python": python, "purelib": Path(purelib), "root": root}


def dclip(env: dict, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")]),
        "PIP_NO_INDEX": "1",  # a typo must not reach the network
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "DCLIP_LOAD_PLUGINS": "face,cats",
        "COLUMNS": "120",
    }
    return subprocess.run(
        [str(env["python"]), "-m", "dclip_cli", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=300,
    )


def test_install_lists_what_the_plugin_registered_and_uninstall_removes_it(env: dict) -> None:
    wheel = write_wheel(
        env["root"] / "dist",
        "dclip-test-cats",
        "dclip_test_cats",
        PRESET_SOURCE.format(name="cat"),
        entry_name="cats",
    )
    result = dclip(env, "plugins", "install", str(wheel))
    assert result.returncode == 0, result.stderr
    assert "was installed (dclip-test-cats)" in result.stderr
    assert "1 preset (cat)" in result.stdout and "1 checkpoint (cat_base)" in result.stdout
    assert (env["purelib"] / "dclip_test_cats.py").is_file()  # into dclip's own environment

    listed = json.loads(dclip(env, "plugins", "--json").stdout)
    assert {p["name"]: p["distribution"] for p in listed} == {"face": "dclip", "cats": "dclip-test-cats"}
    assert "cat" in dclip(env, "presets", "list").stdout

    again = dclip(env, "plugins", "install", str(wheel), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["plugins"][0]["registered"]["presets"] == ["cat"]

    builtin = dclip(env, "plugins", "uninstall", "face")
    assert builtin.returncode == 1 and "part of dclip itself" in builtin.stderr
    other = dclip(env, "plugins", "uninstall", "rich")
    assert other.returncode == 1 and "not a dclip preset plugin" in other.stderr

    gone = dclip(env, "plugins", "uninstall", "cats")  # by plugin name; the package name works too
    assert gone.returncode == 0, gone.stderr
    assert "Uninstalled dclip-test-cats; its presets cat are gone." in gone.stderr
    assert not (env["purelib"] / "dclip_test_cats.py").exists()
    assert [p["name"] for p in json.loads(dclip(env, "plugins", "--json").stdout)] == ["face"]


def test_install_errors_are_one_line(env: dict) -> None:
    missing = dclip(env, "plugins", "install", "dclip-no-such-plugin")
    assert missing.returncode == 1
    assert (
        "pip could not install dclip-no-such-plugin" in missing.stderr and "Traceback" not in missing.stderr
    )
    plain = write_wheel(env["root"] / "dist2", "plain-lib", "plain_lib", "X = 1\n", plugin=False)
    not_plugin = dclip(env, "plugins", "install", str(plain))
    assert not_plugin.returncode == 1 and "registers no dclip preset plugin" in not_plugin.stderr
    refused = dclip(env, "plugins", "uninstall", "plain-lib")
    assert refused.returncode == 1 and "is not a dclip preset plugin" in refused.stderr
    assert (env["purelib"] / "plain_lib.py").is_file()  # left alone
    unknown = dclip(env, "plugins", "uninstall", "dclip-never-installed")
    assert unknown.returncode == 1 and "No installed preset plugin is called" in unknown.stderr
