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


# -- issue 12: first run -------------------------------------------------------------------------------------------


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables 200 columns wide, so that a row reads as one line."""
    from dclip_cli import console

    monkeypatch.setattr(console.out, "_width", 200)


def test_fetch_preset_dry_run_lists_everything_the_commands_need(wide) -> None:
    """``--preset face`` used to leave out CLIP and LPIPS, which every edit needs; --dry-run shows the plan."""
    result = runner.invoke(app, ["models", "fetch", "--preset", "face", "--dry-run"])
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") > 3}
    for name, size in [
        ("celeba_hq (celeba_hq.ckpt)", "~455.0 MB"),
        ("clip-vit-b-16 (ViT-B-16.pt)", "~351.0 MB"),
        ("lpips-alex (alexnet-owt-7be5be79.pth)", "~244.4 MB"),
        ("facenet-vggface2 (20180402-114759-vggface2.pt)", "~107.0 MB"),
        ("face/pixar (pixar_t601.pth)", "~455.0 MB"),
    ]:
        assert size in rows[name] and "to download" in rows[name], rows
    roles = [line.split("│")[2].strip() for line in rows.values()]
    assert roles[:4] == ["base model", "CLIP", "LPIPS", "identity"] and "official edit pixar" in roles
    assert len(rows) == 11
    assert "11 files, about 4.3 GB in all; 11 to download, about 4.3 GB." in result.stdout
    assert not cache.checkpoints_dir().exists()  # nothing was downloaded


def test_fetch_preset_downloads_clip_and_lpips_too(world, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny preset through a local server: base, CLIP, LPIPS and the official edit all arrive."""
    from dclip_cli.store import plan

    clip = world.clip.read_bytes()
    lpips = b"lpips trunk bytes" * 100
    specs = [
        CheckpointSpec(
            "tiny-clip", "tiny_clip.pt", urls=(world.server.add("/clip.pt", clip),), format="openai-clip"
        ),
        CheckpointSpec(
            "tiny-lpips", "lpips.pth", urls=(world.server.add("/lpips.pth", lpips),), format="torchvision"
        ),
    ]
    manager.register_plugin("extra", SpecPlugin(*specs))
    monkeypatch.setattr(plan, "DEFAULT_CLIP", "tiny-clip")
    monkeypatch.setattr(plan, "DEFAULT_LPIPS", "tiny-lpips")
    dry = runner.invoke(app, ["models", "fetch", "--preset", "tinyface", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "4 files" in dry.stdout and "4 to download" in dry.stdout
    result = runner.invoke(app, ["models", "fetch", "--preset", "tinyface"])
    assert result.exit_code == 0, result.output
    assert "4 files; 4 to download" in result.stderr
    got = sorted(Path(line).name for line in result.stdout.split())
    assert got == ["human_pixar_t201.pth", "lpips.pth", "tiny_base.ckpt", "tiny_clip.pt"]
    again = runner.invoke(app, ["models", "fetch", "--preset", "tinyface", "--dry-run"])
    assert "0 to download" in again.stdout


def test_list_shows_sizes_totals_partials_and_training_settings(server: FileServer, wide) -> None:
    from dclip_cli.artifacts import save_artifact
    from tests.support.editing import TinyPlugin, make_tiny32, tiny_preset

    assert runner.invoke(app, ["models", "fetch", "tiny"]).exit_code == 0
    partial = cache.checkpoints_dir() / "gone.ckpt.0badcafe.incomplete"
    partial.write_bytes(b"x" * 1234)
    cache.write_partial_meta(partial, name="gone", url=server.url("/gone.ckpt"), total=5000)
    manager.register_plugin("tiny", TinyPlugin([tiny_preset("tinyface", "a face")], []))
    meta = {"src_text": "face", "trg_text": "smiling face", "t0": 200, "epochs": 1, "n_train_images": 8,
            "n_train_steps": 6, "mode": "original"}  # fmt: skip
    save_artifact(cache.library_dir() / "tinyface" / "smiling.safetensors", make_tiny32(), meta)

    listing = json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)
    rows = {r["name"]: r for r in listing["models"]}
    assert rows["tiny"]["size"] == len(DATA) and not rows["tiny"]["approximate"]
    assert rows["clip-vit-b-16"]["size"] == 351_000_000 and rows["clip-vit-b-16"]["approximate"]
    assert rows["ddpm-base"]["size"] is None and rows["gone"]["partial"] == 1234
    assert listing["partial"][0]["name"] == "gone" and listing["partial"][0]["total"] == 5000
    assert listing["totals"]["cached"] == len(DATA) and listing["totals"]["partial"] == 1234
    (edit,) = listing["edits"]
    assert edit["training"]["epochs"] == 1 and edit["training"]["n_train_images"] == 8

    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "?" not in out
    assert "~351.0 MB" in out and "size unknown" in out and "320.0 kB" in out
    assert "Cached: 320.0 kB; not cached: about" in out and "of unknown size" in out
    assert "Partial downloads" in out and "1.2 kB of 5.0 kB" in out
    assert "t0 200, 1 epoch, 8 images, 6 train steps, original" in out


def test_rm_asks_on_a_terminal_and_removes_the_run_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from dclip_cli.cli import models as models_cli

    lib = cache.library_dir() / "face"
    lib.mkdir(parents=True)
    edit = lib / "smiling.safetensors"
    edit.write_bytes(b"weights" * 1000)
    run = cache.data_dir() / "runs" / "face-smiling-0123456789"
    (run / "previews").mkdir(parents=True)
    (run / "previews" / "epoch-001.png").write_bytes(b"png")
    (run / "run.json").write_text(json.dumps({"artifacts": [str(edit)], "status": "done"}))
    other = cache.data_dir() / "runs" / "face-angry-0123456789"
    other.mkdir()
    (other / "run.json").write_text(json.dumps({"artifacts": [str(lib / "angry.safetensors")]}))

    scripted = runner.invoke(app, ["models", "rm", "face/smiling"])  # not a terminal, no --yes
    assert scripted.exit_code == 1 and "cannot be downloaded again" in scripted.stderr
    assert "--yes" in scripted.stderr and edit.exists()

    monkeypatch.setattr(models_cli, "_interactive", lambda: True)
    declined = runner.invoke(app, ["models", "rm", "face/smiling"], input="n\n")
    assert declined.exit_code == 1 and edit.exists() and run.exists()
    assert "your fine-tuned edit, 7.1 kB" in declined.stderr and str(run) in declined.stderr

    accepted = runner.invoke(app, ["models", "rm", "face/smiling"], input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert not edit.exists() and not run.exists() and other.exists()
    assert f"Removed {run}" in accepted.stderr


def test_rm_yes_removes_without_asking() -> None:
    lib = cache.library_dir() / "face"
    lib.mkdir(parents=True)
    (lib / "mine.pth").write_bytes(b"x")
    result = runner.invoke(app, ["models", "rm", "--yes", "face/mine"])
    assert result.exit_code == 0 and not (lib / "mine.pth").exists()


def test_sigterm_during_fetch_keeps_the_bytes_and_the_next_fetch_resumes(tmp_path: Path) -> None:
    """Issue 11, point 14, through the real ``dclip`` process: SIGTERM ends it like Ctrl-C (exit 143), the partial
    file stays, ``models list`` shows it and the next ``fetch`` continues from its last byte."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.support.plugins import write_distribution

    with FileServer() as server:
        url = server.add("/slow.ckpt", DATA)
        server.misbehave("/slow.ckpt", delay=0.3, times=1)
        source = f"""
from dclip_cli.plugin import CheckpointSpec, hookimpl

@hookimpl
def register_checkpoints(register):
    register(CheckpointSpec("slow", "slow.ckpt", urls=({url!r},), sha256={SHA!r}, size={len(DATA)}))
"""
        site = write_distribution(
            tmp_path / "site", "dclip-slow", "dclip_test_slow", source, entry_name="slow"
        )
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(site), *sys.path]),
            "DCLIP_LOAD_PLUGINS": "slow",
        }
        cmd = [sys.executable, "-m", "dclip_cli", "models", "fetch", "slow"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        folder = cache.checkpoints_dir()
        deadline = time.monotonic() + 60
        while (
            not any(p.stat().st_size >= 65536 for p in folder.glob("*.incomplete"))
            if folder.is_dir()
            else True
        ):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 143, err
        assert "Terminated." in err and "partial download is kept" in err
        listing = subprocess.run(
            [*cmd[:3], "models", "list", "--json"], env=env, capture_output=True, text=True
        )
        (partial,) = json.loads(listing.stdout)["partial"]
        assert partial["name"] == "slow" and 0 < partial["size"] < len(DATA)
        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        assert f"Resuming slow.ckpt at {partial['size'] / 1000:.1f} kB of 320.0 kB" in again.stderr
        assert Path(again.stdout.strip()).read_bytes() == DATA
        assert server.requests_for("/slow.ckpt")[-1].headers["Range"] == f"bytes={partial['size']}-"
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == ["slow.ckpt", "slow.ckpt.meta.json"]
