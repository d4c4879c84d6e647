"""Downloads against a real HTTP server on 127.0.0.1 (issue 3): resume, mirrors, verification, offline, locks."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dclip_cli.checkpoints import cache, download
from dclip_cli.checkpoints.registry import CheckpointSpec, Mirror
from dclip_cli.errors import (
    CheckpointNotCachedError,
    ChecksumMismatchError,
    ConfigError,
    DownloadError,
)
from tests.support.http_server import FileServer

DATA = bytes(range(256)) * 1200  # 307,200 bytes
SHA = hashlib.sha256(DATA).hexdigest()
MD5 = hashlib.md5(DATA).hexdigest()


@pytest.fixture
def server():
    with FileServer() as s:
        yield s


@pytest.fixture(autouse=True)
def fast_settings(monkeypatch: pytest.MonkeyPatch) -> download.DownloadSettings:
    settings = download.DownloadSettings(
        connect_timeout=2, read_timeout=5, retries=2, backoff=0.001, backoff_max=0.01, chunk_size=4096
    )
    monkeypatch.setattr(download, "SETTINGS", settings)
    return settings


def spec_for(*urls: str | Mirror, name: str = "tiny", **kw: object) -> CheckpointSpec:
    kw.setdefault("sha256", SHA)
    kw.setdefault("size", len(DATA))
    return CheckpointSpec(name=name, filename="tiny.ckpt", urls=urls, **kw)  # type: ignore[arg-type]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


def test_fresh_download_verifies_records_and_reports_progress(server: FileServer) -> None:
    url = server.add("/a/tiny.ckpt", DATA)
    seen: list[tuple[int, int | None]] = []
    path = download.fetch(spec_for(url), progress=lambda e: seen.append((e.done, e.total)))
    assert path == cache.cache_dir() / "checkpoints" / "tiny.ckpt"
    assert path.read_bytes() == DATA
    meta = json.loads(cache.meta_path(path).read_text())
    assert meta["sha256"] == SHA and meta["size"] == len(DATA) and meta["pinned"] is True
    assert meta["url"] == url and meta["source"] == "download" and meta["format"] == "ddpm"
    assert seen[-1] == (len(DATA), len(DATA))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert (
        (cache.cache_dir() / "CACHEDIR.TAG")
        .read_text()
        .startswith("Signature: 8a477f597d28d172789f06886806bc55")
    )
    assert leftovers(path.parent) == ["tiny.ckpt", "tiny.ckpt.meta.json"]
    assert server.count("/a/tiny.ckpt") == 1


def test_cached_file_is_reused_with_the_server_stopped(server: FileServer) -> None:
    spec = spec_for(server.add("/a/tiny.ckpt", DATA))
    first = download.fetch(spec)
    server.stop()
    assert download.fetch(spec) == first
    assert download.fetch(spec, offline=True) == first
    assert len(server.requests) == 1


def test_dropped_connection_resumes_with_range(server: FileServer) -> None:
    url = server.add("/a/tiny.ckpt", DATA)
    server.misbehave("/a/tiny.ckpt", drop_after=100_000)
    path = download.fetch(spec_for(url))
    assert path.read_bytes() == DATA
    first, second = server.requests_for("/a/tiny.ckpt")
    assert "Range" not in first.headers
    start = int(second.headers["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= 100_000  # resumed from what had arrived, not from zero
    assert leftovers(path.parent) == ["tiny.ckpt", "tiny.ckpt.meta.json"]


def test_server_that_ignores_range_is_restarted_from_zero(server: FileServer) -> None:
    url = server.add("/a/tiny.ckpt", DATA)
    server.misbehave("/a/tiny.ckpt", drop_after=150_000)
    server.misbehave("/a/tiny.ckpt", ignore_range=True)
    seen: list[int] = []
    path = download.fetch(spec_for(url), progress=lambda e: seen.append(e.done))
    assert path.read_bytes() == DATA  # not the first part twice
    reqs = server.requests_for("/a/tiny.ckpt")
    assert len(reqs) == 2 and reqs[1].headers["Range"].startswith("bytes=")
    assert 0 in seen[1:]  # progress went back to zero for the restart


def test_corrupt_bytes_raise_mismatch_and_leave_nothing(server: FileServer) -> None:
    url = server.add("/a/tiny.ckpt", DATA)
    server.misbehave("/a/tiny.ckpt", corrupt=True)
    spec = spec_for(url)
    with pytest.raises(ChecksumMismatchError) as info:
        download.fetch(spec)
    msg = str(info.value)
    assert "tiny.ckpt" in msg and url in msg and f"expected sha256 {SHA}" in msg
    actual = msg.split("got sha256 ")[1].split(".")[0]
    assert len(actual) == 64 and actual != SHA
    assert "deleted" in msg and "dclip models fetch tiny" in (info.value.hint or "")
    assert leftovers(cache.cache_dir() / "checkpoints") == []


def test_size_and_md5_checks(server: FileServer) -> None:
    url = server.add("/a/tiny.ckpt", DATA)
    with pytest.raises(ChecksumMismatchError, match="expected 999 bytes, got 307200 bytes"):
        download.fetch(spec_for(url, sha256=None, size=999))
    path = download.fetch(spec_for(url, sha256=None, md5=MD5))
    assert json.loads(cache.meta_path(path).read_text())["md5"] == MD5
    path.unlink()
    cache.meta_path(path).unlink()
    with pytest.raises(ChecksumMismatchError, match="expected md5 0{32}"):
        download.fetch(spec_for(url, sha256=None, md5="0" * 32))


def test_404_on_first_mirror_falls_through_to_second(server: FileServer) -> None:
    good = server.add("/b/tiny.ckpt", DATA)
    path = download.fetch(spec_for(server.url("/missing/tiny.ckpt"), good))
    assert path.read_bytes() == DATA
    assert server.count("/missing/tiny.ckpt") == 1 and server.count("/b/tiny.ckpt") == 1


def test_5xx_is_retried_with_backoff(server: FileServer) -> None:
    url = server.add("/a/tiny.ckpt", DATA)
    server.misbehave("/a/tiny.ckpt", status=503)
    assert download.fetch(spec_for(url)).read_bytes() == DATA
    assert server.count("/a/tiny.ckpt") == 2


def test_every_mirror_failing_gives_one_error_listing_each(server: FileServer) -> None:
    server.add("/forbidden/tiny.ckpt", DATA)
    server.misbehave("/forbidden/tiny.ckpt", status=403, times=None)
    server.add("/broken/tiny.ckpt", DATA)
    server.misbehave("/broken/tiny.ckpt", status=500, times=None)
    urls = [server.url(p) for p in ("/missing/tiny.ckpt", "/forbidden/tiny.ckpt", "/broken/tiny.ckpt")]
    with pytest.raises(DownloadError) as info:
        download.fetch(spec_for(*urls))
    msg = str(info.value)
    assert "from any of its 3 sources" in msg
    assert f"{urls[0]}: HTTP 404" in msg and f"{urls[1]}: HTTP 403" in msg
    assert f"{urls[2]}: HTTP 500" in msg and "gave up after 3 attempts" in msg
    assert server.count("/broken/tiny.ckpt") == 3  # 1 + 2 retries
    assert "dclip models import tiny.ckpt --as tiny" in (info.value.hint or "")
    assert leftovers(cache.cache_dir() / "checkpoints") == []


def test_connection_refused_is_a_download_error() -> None:
    with FileServer() as s:
        url = s.url("/a/tiny.ckpt")
    with pytest.raises(DownloadError, match="connection failed"):
        download.fetch(spec_for(url))


def test_offline_mode_names_the_file_and_the_command(
    server: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = server.add("/a/tiny.ckpt", DATA)
    monkeypatch.setenv("DCLIP_OFFLINE", "1")
    with pytest.raises(CheckpointNotCachedError) as info:
        download.fetch(spec_for(url))
    assert "tiny.ckpt" in str(info.value) and "DCLIP_OFFLINE" in str(info.value)
    assert "dclip models fetch tiny" in (info.value.hint or "")
    assert isinstance(info.value, FileNotFoundError)
    assert server.requests == []
    assert download.fetch(spec_for(url), offline=False).read_bytes() == DATA


def test_dclip_mirror_is_tried_first(server: FileServer, monkeypatch: pytest.MonkeyPatch) -> None:
    server.add("/mirror/tiny.ckpt", DATA)
    original = server.add("/orig/tiny.ckpt", DATA)
    monkeypatch.setenv("DCLIP_MIRROR", server.url("/mirror/"))
    path = download.fetch(spec_for(original))
    assert path.read_bytes() == DATA
    assert server.count("/mirror/tiny.ckpt") == 1 and server.count("/orig/tiny.ckpt") == 0
    assert json.loads(cache.meta_path(path).read_text())["url"] == server.url("/mirror/tiny.ckpt")


def test_dclip_mirror_folder_and_fallback(
    server: FileServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    original = server.add("/orig/tiny.ckpt", DATA)
    monkeypatch.setenv("DCLIP_MIRROR", str(tmp_path))  # empty folder: falls through to the registry URL
    assert download.fetch(spec_for(original)).read_bytes() == DATA
    assert server.count("/orig/tiny.ckpt") == 1
    (tmp_path / "tiny.ckpt").write_bytes(DATA)
    path = download.fetch(spec_for(original, name="other"))
    assert path.read_bytes() == DATA and server.count("/orig/tiny.ckpt") == 1


def test_no_url_gives_manual_instructions() -> None:
    spec = spec_for(manual="Download it from the project's Drive folder")
    with pytest.raises(CheckpointNotCachedError) as info:
        download.fetch(spec)
    assert "has no download URL" in str(info.value)
    hint = info.value.hint or ""
    assert "Drive folder" in hint and "dclip models import tiny.ckpt --as tiny" in hint


def test_google_drive_confirmation_page(server: FileServer) -> None:
    server.add("/download", DATA)
    page = textwrap.dedent(
        """<html><body><p>Google Drive can't scan this file for viruses.</p>
        <form id="download-form" action="/download" method="get">
        <input type="submit" value="Download anyway"/>
        <input type="hidden" name="id" value="FILEID"><input type="hidden" name="export" value="download">
        <input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="1234">
        </form></body></html>"""
    )
    url = server.add_page("/uc", page) + "?export=download&id=FILEID"
    assert download.fetch(spec_for(url)).read_bytes() == DATA
    (got,) = server.requests_for("/download")
    assert got.query["confirm"] == ["t"] and got.query["id"] == ["FILEID"] and got.query["uuid"] == ["1234"]


def test_html_instead_of_file_is_a_clear_failure(server: FileServer) -> None:
    url = server.add_page("/uc", "<html><body>Quota exceeded</body></html>")
    with pytest.raises(DownloadError, match="web page instead of the file"):
        download.fetch(spec_for(url))


def test_mirror_with_other_format_records_it(server: FileServer) -> None:
    other = b"diffusers bytes" * 100
    server.add("/diffusers/diffusion_pytorch_model.bin", other)
    spec = spec_for(
        server.url("/gone/tiny.ckpt"),
        Mirror(server.url("/diffusers/diffusion_pytorch_model.bin"), format="diffusers-ddpm"),
    )
    path = download.fetch(spec)  # the spec's sha256 and size do not apply to the diffusers copy
    assert path.read_bytes() == other
    meta = cache.read_meta(path)
    assert meta is not None and meta.format == "diffusers-ddpm" and meta.pinned is False
    assert meta.sha256 == hashlib.sha256(other).hexdigest()


def test_hand_placed_file_is_verified_once(server: FileServer) -> None:
    spec = spec_for(server.url("/never/tiny.ckpt"))
    dest = cache.checkpoint_path(spec)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(DATA[:-1] + b"\0")
    with pytest.raises(ChecksumMismatchError, match="does not match the registry entry 'tiny'"):
        download.fetch(spec)
    dest.write_bytes(DATA)
    assert download.fetch(spec) == dest
    meta = cache.read_meta(dest)
    assert meta is not None and meta.source == "found" and meta.pinned
    assert server.requests == []


def test_names_that_escape_the_cache_are_refused() -> None:
    from dclip_cli.errors import CheckpointError
    from dclip_cli.store import get_spec

    for bad in ("../etc", "a/../../b", "/abs", "a/b/c", "a\\b", ""):
        with pytest.raises(ConfigError):
            get_spec(bad)
    with pytest.raises(CheckpointError, match="plain file name"):
        CheckpointSpec(name="x", filename="../x.ckpt")
    with pytest.raises(CheckpointError, match="must start with http"):
        CheckpointSpec(name="x", filename="x.ckpt", urls=("file:///etc/passwd",))


_CHILD = """
import json, sys
from dclip_cli.checkpoints import download
from dclip_cli.checkpoints.registry import CheckpointSpec
spec = CheckpointSpec(**json.loads(sys.argv[1]))
print(download.fetch(spec))
"""


def test_two_processes_download_once(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/a/tiny.ckpt", DATA)
    server.misbehave("/a/tiny.ckpt", delay=0.03, times=None)  # ~0.15 s per transfer, so the two overlap
    spec = {"name": "tiny", "filename": "tiny.ckpt", "urls": [url], "sha256": SHA, "size": len(DATA)}
    env = {**os.environ, "DCLIP_CACHE": str(tmp_path / "shared-cache")}
    cmd = [sys.executable, "-c", _CHILD, json.dumps(spec)]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    paths = {out.strip() for out, _ in outs}
    assert paths == {str(tmp_path / "shared-cache" / "checkpoints" / "tiny.ckpt")}
    assert Path(paths.pop()).read_bytes() == DATA
    assert server.count("/a/tiny.ckpt") == 1
    assert leftovers(tmp_path / "shared-cache" / "checkpoints") == ["tiny.ckpt", "tiny.ckpt.meta.json"]
