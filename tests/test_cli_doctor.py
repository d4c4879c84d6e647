"""``dclip doctor`` (issue 12): what a bug report should contain."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from dclip_cli import console
from dclip_cli.checkpoints import cache
from dclip_cli.cli.app import app
from dclip_cli.store.doctor import cpu_features
from tests.support.plugins import write_distribution

runner = CliRunner()


def test_cpu_features_from_cpuinfo() -> None:
    text = "processor : 0\nflags : fpu sse avx2 fma avx512f avx512_bf16 amx_tile amx_bf16\n"
    assert cpu_features(text) == ["avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]
    assert cpu_features("Features : fp asimd bf16\n") == ["bf16"]  # Arm
    assert cpu_features("") == []


def test_doctor_json_holds_what_a_bug_report_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    write_distribution(site, "dclip-broken", "dclip_test_doctor_broken", "1/0\n", entry_name="broken")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("DCLIP_LOAD_PLUGINS", "face,broken")
    monkeypatch.setenv("DCLIP_OFFLINE", "1")
    monkeypatch.setenv("HTTPS_PROXY", "http://user:secret@proxy.example:3128")
    folder = cache.checkpoints_dir()
    folder.mkdir(parents=True)
    (folder / "celeba_hq.ckpt").write_bytes(b"x" * 1000)
    try:
        result = runner.invoke(app, ["doctor", "--json"])
    finally:
        sys.modules.pop("dclip_test_doctor_broken", None)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    versions = data["versions"]
    import torch

    from dclip_cli import __version__

    assert versions["dclip"] == __version__ and versions["torch"] == torch.__version__
    assert "cuda" in versions and versions["python"] == ".".join(map(str, sys.version_info[:3]))
    compute = data["compute"]
    assert compute["device"] in ("cpu", "cuda", "mps") and compute["device_reason"]
    assert compute["precision"] in ("fp32", "bf16", "fp16") and compute["precision_reason"]
    assert isinstance(compute["cpu_features"], list) and compute["cpu_cores"] >= 1
    assert data["folders"]["cache"]["path"] == str(cache.cache_dir())
    assert data["folders"]["cache"]["free"] > 0 and data["folders"]["library"]["exists"] is False
    face = data["presets"]["face"]
    assert [f["name"] for f in face["files"]][:4] == [
        "celeba_hq",
        "clip-vit-b-16",
        "lpips-alex",
        "facenet-vggface2",
    ]
    assert face["cached"] == 1 and face["missing"] == 10 and face["missing_approximate"]
    assert face["files"][0]["cached"] and face["files"][0]["size"] == 1000
    assert [p["name"] for p in data["plugins"]["loaded"]] == ["face"]
    (failed,) = data["plugins"]["failed"]
    assert failed["name"] == "broken" and "ZeroDivisionError" in failed["error"]
    settings = data["settings"]
    assert settings["offline"] is True and settings["mirror"] is None
    assert settings["environment"]["HTTPS_PROXY"] == "http://***@proxy.example:3128"  # no password in reports


def test_doctor_table_reads_at_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.StringIO()
    monkeypatch.setattr(console, "out", Console(file=buf, width=80, color_system=None))
    monkeypatch.setenv("DCLIP_MIRROR", "https://mirror.example/dclip")
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    out = buf.getvalue()
    assert "…" not in out and all(len(line) <= 80 for line in out.splitlines())
    for heading in ("Versions", "Compute", "Folders", "Presets", "Plugins", "Settings"):
        assert heading in out
    assert "device (auto)" in out and "precision (auto)" in out and "because" in out
    assert "0 of 11 files cached" in out and "https://mirror.example/dclip" in out
