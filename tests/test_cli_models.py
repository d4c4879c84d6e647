"""``dclip models ...`` through the real Typer app and a real HTTP server on 127.0.0.1 (issue 3)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dclip_cli.checkpoints import cache, download
from dclip_cli.checkpoints.registry import CheckpointSpec
from dclip_cli.cli.app import app
from dclip_cli.presets import manager
from dclip_cli.presets.hookspecs import hookimpl
from tests.support.http_server import FileServer

runner = CliRunner()
DATA = b"0123456789abcdef" * 20_000  # 320 kB
SHA = hashlib.sha256(DATA).hexdigest()


class SpecPlugin:
    def __init__(self, *specs: CheckpointSpec) -> None:
        self.specs = specs

    @hookimpl
    def register_checkpoints(self, register):  # noqa: ANN001, ANN201
        for spec in self.specs:
            register(spec)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(
        download, "SETTINGS", download.DownloadSettings(retries=1, backoff=0.001, read_timeout=5)
    )
    with FileServer() as s:
        manager.register_plugin(
            "cli-test",
            SpecPlugin(
                CheckpointSpec(
                    "tiny", "tiny.ckpt", urls=(s.add("/tiny.ckpt", DATA),), sha256=SHA, size=len(DATA)
                ),
                CheckpointSpec("gone", "gone.ckpt", urls=(s.url("/gone.ckpt"),)),
                CheckpointSpec("ddpm-base", "base.ckpt", format="ddpm"),
            ),
        )
        yield s


def test_fetch_list_verify_path_rm(server: FileServer) -> None:
    result = runner.invoke(app, ["models", "fetch", "tiny"])
    assert result.exit_code == 0, result.output
    path = cache.checkpoints_dir() / "tiny.ckpt"
    assert result.stdout.strip() == str(path) and path.read_bytes() == DATA
    assert "tiny.ckpt" in result.stderr  # the progress bar goes to stderr

    again = runner.invoke(app, ["models", "fetch", "tiny"])
    assert again.exit_code == 0 and "already cached" in again.stderr and server.count("/tiny.ckpt") == 1

    listing = json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)
    rows = {r["name"]: r for r in listing["models"]}
    assert rows["tiny"]["cached"] and rows["tiny"]["verified"] and rows["tiny"]["size"] == len(DATA)
    assert rows["gone"]["cached"] is False and rows["ddpm-base"]["downloadable"] is False
    assert "clip-vit-b-16" in rows and "celeba_hq" in rows
    assert listing["library_dir"] == str(cache.library_dir()) and listing["edits"] == []
    table = runner.invoke(app, ["models", "list"])
    assert table.exit_code == 0 and "tiny" in table.stdout and "manual download" in table.stdout

    verify = runner.invoke(app, ["models", "verify", "--json"])
    assert verify.exit_code == 0, verify.output
    assert json.loads(verify.stdout) == [
        {
            "name": "tiny",
            "path": str(path),
            "status": "ok",
            "sha256": SHA,
            "expected": None,
            "actual": None,
            "checked": "pinned size, pinned sha256, recorded sha256",
        }
    ]
    assert runner.invoke(app, ["models", "path", "tiny"]).stdout.strip() == str(path)

    path.write_bytes(DATA[::-1])
    bad = runner.invoke(app, ["models", "verify", "tiny"])
    assert bad.exit_code == 1 and "mismatch" in bad.stdout and "failed verification" in bad.stderr

    rm = runner.invoke(app, ["models", "rm", "tiny"])
    assert rm.exit_code == 0 and "Removed" in rm.stderr and not path.exists()
    missing = runner.invoke(app, ["models", "path", "tiny"])
    assert missing.exit_code == 1 and "dclip models fetch tiny" in missing.stderr


def test_fetch_errors_and_partial_failure(server: FileServer) -> None:
    one = runner.invoke(app, ["models", "fetch", "gone"])
    assert one.exit_code == 1 and "HTTP 404" in one.stderr and "Hint:" in one.stderr
    both = runner.invoke(app, ["models", "fetch", "gone", "tiny"])
    assert both.exit_code == 1
    assert both.stdout.strip() == str(cache.checkpoints_dir() / "tiny.ckpt")
    assert "1 checkpoint(s) failed: gone" in both.stderr
    unknown = runner.invoke(app, ["models", "fetch", "tinny"])
    assert unknown.exit_code == 1 and "Did you mean tiny" in unknown.stderr
    nothing = runner.invoke(app, ["models", "fetch"])
    assert nothing.exit_code == 2


def test_fetch_offline_and_cache_dir_option(server: FileServer, tmp_path: Path) -> None:
    offline = runner.invoke(app, ["models", "fetch", "tiny"], env={"DCLIP_OFFLINE": "1"})
    assert offline.exit_code == 1 and "DCLIP_OFFLINE" in offline.stderr
    assert server.requests == []
    other = tmp_path / "other-cache"
    result = runner.invoke(app, ["--cache-dir", str(other), "models", "fetch", "tiny"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(other / "checkpoints" / "tiny.ckpt")


def test_import_command(server: FileServer, tmp_path: Path) -> None:
    src = tmp_path / "base.ckpt"
    torch.save({"temb.dense.0.weight": torch.zeros(2, 2), "conv_in.weight": torch.zeros(2, 3, 3, 3)}, src)
    result = runner.invoke(app, ["models", "import", str(src), "--as", "ddpm-base"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(cache.checkpoints_dir() / "base.ckpt")
    clash = runner.invoke(app, ["models", "import", str(src), "--as", "ddpm-base"])
    assert clash.exit_code == 1 and "--overwrite" in clash.stderr
    from tests.support.editing import TinyPlugin, checkpoint_bytes, tiny_preset

    manager.register_plugin("tiny", TinyPlugin([tiny_preset("tinyface", "a face")], []))
    tiny = tmp_path / "mine.ckpt"
    tiny.write_bytes(checkpoint_bytes(0))
    edit = runner.invoke(app, ["models", "import", str(tiny), "--as", "tinyface/mine"])
    assert edit.exit_code == 0, edit.output
    assert edit.stdout.strip() == str(cache.library_dir() / "tinyface" / "mine.ckpt")
    listing = json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)
    assert [e["name"] for e in listing["edits"]] == ["tinyface/mine"]
    wrong_arch = runner.invoke(app, ["models", "import", str(src), "--as", "face/mine"])
    assert wrong_arch.exit_code == 1 and "does not fit the DDPM architecture" in wrong_arch.stderr
    wrong = runner.invoke(app, ["models", "import", str(src), "--as", "tiny"])
    assert wrong.exit_code == 1 and "expected 320000 bytes" in wrong.stderr
