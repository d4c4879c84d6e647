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
    said: list[str] = []

    def progress(e):  # noqa: ANN001, ANN202
        if e.kind == "download":
            seen.append((e.done, e.total))
        else:
            said.append(e.message)

    path = download.fetch(spec_for(url), progress=progress)
    assert path == cache.cache_dir() / "checkpoints" / "tiny.ckpt"
    assert path.read_bytes() == DATA
    meta = json.loads(cache.meta_path(path).read_text())
    assert meta["sha256"] == SHA and meta["size"] == len(DATA) and meta["pinned"] is True
    assert meta["url"] == url and meta["source"] == "download" and meta["format"] == "ddpm"
    assert seen[-1] == (len(DATA), len(DATA))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert said == ["Downloading tiny.ckpt (307.2 kB) from 127.0.0.1."]  # what, how big, from where
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
    path = download.fetch(spec_for(url), progress=lambda e: e.kind == "download" and seen.append(e.done))
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
    with pytest.raises(DownloadError, match="127.0.0.1 refused the connection"):
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


# -- issue 11, points 14 and 15: interrupted downloads are resumed, every byte received is kept -------------------

_SLOW_CHILD = """
import json, sys
from dclip_cli.checkpoints import download
from dclip_cli.checkpoints.registry import CheckpointSpec
download.SETTINGS = download.DownloadSettings(chunk_size=4096)
print(download.fetch(CheckpointSpec(**json.loads(sys.argv[1]))))
"""


def _wait_for_partial(folder: Path, proc: subprocess.Popen, at_least: int) -> Path:
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for p in folder.rglob("*.incomplete"):
            if p.stat().st_size >= at_least:
                return p
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError("the download never started")


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_killed_download_is_listed_and_resumed_under_the_lock(
    server: FileServer, tmp_path: Path, sig
) -> None:
    """Issue 11, point 14: a download killed mid-way leaves a partial file that ``list_partial`` reports, and the
    next fetch resumes it (Range from its last byte) instead of leaving it in the cache forever."""
    import signal

    url = server.add("/a/tiny.ckpt", DATA)
    server.misbehave("/a/tiny.ckpt", delay=0.3, times=1)  # the first transfer crawls: 64 KiB per 0.3 s
    spec = {"name": "tiny", "filename": "tiny.ckpt", "urls": [url], "sha256": SHA, "size": len(DATA)}
    folder = cache.cache_dir() / "checkpoints"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_CHILD, json.dumps(spec)],
        env={**os.environ, "DCLIP_CACHE": str(cache.cache_dir())},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    partial = _wait_for_partial(folder, proc, 64 * 1024)
    proc.send_signal(getattr(signal, sig))
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    (left,) = cache.list_partial()
    assert left.path == partial and left.url == url and left.name == "tiny" and left.total == len(DATA)
    assert 0 < left.size < len(DATA)

    path = download.fetch(spec_for(url))
    assert path.read_bytes() == DATA
    resumed = server.requests_for("/a/tiny.ckpt")[1]
    assert resumed.headers["Range"] == f"bytes={left.size}-"  # from the last byte the killed process wrote
    assert cache.list_partial() == []
    assert leftovers(folder) == ["tiny.ckpt", "tiny.ckpt.meta.json"]


def test_partials_of_unknown_origin_are_removed_not_resumed(server: FileServer) -> None:
    url = server.add("/a/tiny.ckpt", DATA)
    folder = cache.cache_dir() / "checkpoints"
    folder.mkdir(parents=True)
    stray = folder / "tiny.ckpt.0123abcd.incomplete"  # no sidecar: which server sent these bytes?
    stray.write_bytes(b"junk" * 1000)
    other = folder / "tiny.ckpt.4567cdef.incomplete"
    other.write_bytes(DATA[:1000])
    cache.write_partial_meta(other, name="tiny", url="http://elsewhere.example/tiny.ckpt", total=None)
    assert [p.size for p in cache.list_partial()] == [4000, 1000]  # sorted by path
    assert download.fetch(spec_for(url)).read_bytes() == DATA
    assert "Range" not in server.requests_for("/a/tiny.ckpt")[0].headers
    assert leftovers(folder) == ["tiny.ckpt", "tiny.ckpt.meta.json"]


def test_a_link_that_drops_every_500kb_still_completes(server: FileServer, fast_settings) -> None:
    """Issue 11, point 15: with 1 MiB reads, the bytes of a read cut short used to be lost, so a link dropping
    every 500 kB never progressed. Every byte is kept now, and every attempt moves on."""
    data = bytes(range(251)) * 10_000  # 2.51 MB
    url = server.add("/a/big.ckpt", data)
    server.misbehave("/a/big.ckpt", drop_after=500_000, times=None)
    fast_settings.chunk_size = 1 << 20
    spec = CheckpointSpec("big", "big.ckpt", urls=(url,), sha256=hashlib.sha256(data).hexdigest())
    assert download.fetch(spec).read_bytes() == data
    starts = [r.headers.get("Range", "bytes=0-") for r in server.requests_for("/a/big.ckpt")]
    assert starts == [f"bytes={n}-" for n in range(0, len(data), 500_000)]


def test_failed_source_keeps_its_bytes_for_the_next_run(server: FileServer) -> None:
    url = server.add("/a/tiny.ckpt", DATA)
    server.misbehave("/a/tiny.ckpt", drop_after=100_000, times=1)
    server.misbehave("/a/tiny.ckpt", status=503, times=3)  # then the server goes down: retries run out
    with pytest.raises(DownloadError) as info:
        download.fetch(spec_for(url))
    assert "100.0 kB received so far are kept" in str(info.value)
    (left,) = cache.list_partial()
    assert left.size == 100_000
    assert download.fetch(spec_for(url)).read_bytes() == DATA
    assert server.requests_for("/a/tiny.ckpt")[-1].headers["Range"] == "bytes=100000-"


def test_complete_partial_is_finished_on_416(server: FileServer) -> None:
    """A process killed after the last byte but before the rename: the server says there is nothing left."""
    url = server.add("/a/tiny.ckpt", DATA)
    folder = cache.cache_dir() / "checkpoints"
    folder.mkdir(parents=True)
    partial = folder / "tiny.ckpt.89abcdef.incomplete"
    partial.write_bytes(DATA)
    cache.write_partial_meta(partial, name="tiny", url=url, total=len(DATA))
    assert download.fetch(spec_for(url)).read_bytes() == DATA
    assert server.count("/a/tiny.ckpt") == 1


# -- issue 12: the first network failure, as a newcomer meets it ----------------------------------------------


def test_download_says_what_from_where_and_errors_in_plain_words(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before retries start the user is told the file, its size and the host; every retry says why it waits; the
    final error names the causes in words (no urllib3 text) and, for CLIP, suggests --clip-model FILE."""
    import socket

    def no_dns(host, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    spec = CheckpointSpec(
        "clip-test", "ViT-T.pt", urls=("https://openaipublic.example/ViT-T.pt",), format="openai-clip",
        approx_size=351_000_000,
    )  # fmt: skip
    said: list[str] = []
    with pytest.raises(DownloadError) as info:
        download.fetch(spec, progress=lambda e: said.append(e.message))
    assert said[0] == "Downloading ViT-T.pt (about 351.0 MB) from openaipublic.example."
    assert said[1].startswith("ViT-T.pt: the host name openaipublic.example could not be resolved")
    assert "retrying in" in said[1] and "(retry 1 of 2" in said[1]
    msg = str(info.value)
    assert (
        "could not be resolved (no network connection, or DNS is blocked) (gave up after 3 attempts)" in msg
    )
    for noise in ("HTTPSConnectionPool", "Max retries", "urllib3", "object at 0x", "NameResolutionError"):
        assert noise not in msg
    hint = info.value.hint or ""
    assert "--clip-model FILE" in hint and "set DCLIP_MIRROR" in hint

    monkeypatch.setenv("DCLIP_MIRROR", "https://mirror.example/files")
    with pytest.raises(DownloadError) as info:
        download.fetch(spec)
    hint = info.value.hint or ""
    assert (
        "set DCLIP_MIRROR" not in hint
        and "DCLIP_MIRROR (https://mirror.example/files) did not have it" in hint
    )
    assert "ViT-T.pt: the host name mirror.example could not be resolved" in str(info.value)


def test_approximate_size_is_announced_only_for_the_specs_own_file(server: FileServer) -> None:
    """A mirror in another format (or a copy with its own hashes) serves other bytes: its size is not the spec's."""
    said: list[str] = []
    other = server.add("/other/copy.bin", b"other bytes" * 10)
    spec = CheckpointSpec(
        "big", "big.ckpt", urls=(server.url("/gone/big.ckpt"), Mirror(other)), approx_size=455_000_000
    )
    download.fetch(spec, progress=lambda e: e.kind == "info" and said.append(e.message))
    assert said[0] == "Downloading big.ckpt (about 455.0 MB) from 127.0.0.1."
    assert said[1] == "Downloading big.ckpt (size unknown) from 127.0.0.1."
