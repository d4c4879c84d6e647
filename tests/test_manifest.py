"""The JSON sidecar: contents, JSON safety, atomic writes and refusal to overwrite."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dclip_cli import __version__
from dclip_cli.errors import ConfigError, OutputExistsError
from dclip_cli.fileio import sha256_bytes
from dclip_cli.manifest import (
    SCHEMA_VERSION,
    Timings,
    build_manifest,
    file_sha256,
    input_record,
    model_record,
    read_manifest,
    to_jsonable,
    write_manifest,
)


def test_records_hash_files(tmp_path: Path) -> None:
    data = b"not really a png"
    img = tmp_path / "photo.png"
    img.write_bytes(data)
    rec = input_record(img)
    assert rec == {"path": str(img.resolve()), "sha256": sha256_bytes(data), "size": len(data)}
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"weights")
    m = model_record("base", "tiny", path=ckpt, arch="ddpm")
    assert m["sha256"] == sha256_bytes(b"weights") and m["arch"] == "ddpm" and m["role"] == "base"
    assert model_record("edit", "x", sha256="ab")["sha256"] == "ab"
    # memoised on (path, size, mtime); a change of content is seen again
    ckpt.write_bytes(b"other weights!")
    assert file_sha256(ckpt) == sha256_bytes(b"other weights!")


def test_to_jsonable_handles_paths_tuples_nan_and_tensors() -> None:
    torch = pytest.importorskip("torch")
    value = {
        "p": Path("/a/b"),
        "t": (1, 2),
        "nan": math.nan,
        "x": torch.tensor(0.5),
        "v": torch.tensor([1.0, 2.0]),
    }
    assert to_jsonable(value) == {"p": "/a/b", "t": [1, 2], "nan": None, "x": 0.5, "v": [1.0, 2.0]}


def test_build_write_read_roundtrip(tmp_path: Path) -> None:
    doc = build_manifest(
        command="edit",
        inputs=[{"path": "/x.png", "sha256": "00"}],
        outputs={"image": tmp_path / "x.smiling.png", "compare": None},
        settings={"t0": 500, "steps": (40, 6)},
        seed=3,
        models=[model_record("base", "tiny", sha256="11")],
        timings={"inversion": 1.23456789},
        metrics={"psnr": 30.0, "lpips": math.inf},
        device="cpu",
    )
    assert doc["schema"] == SCHEMA_VERSION and doc["dclip_version"] == __version__
    assert doc["settings"]["steps"] == [40, 6] and doc["metrics"]["lpips"] is None
    assert doc["timings"]["inversion"] == pytest.approx(1.2346)
    assert doc["environment"]["device"] == "cpu"
    path = write_manifest(tmp_path / "x.smiling.json", doc)
    assert json.loads(path.read_text()) == doc == read_manifest(path)
    with pytest.raises(OutputExistsError, match="already exists"):
        write_manifest(path, doc)
    write_manifest(path, {**doc, "seed": 4}, overwrite=True)
    assert read_manifest(path)["seed"] == 4
    assert [p.name for p in tmp_path.iterdir()] == ["x.smiling.json"]  # no temporary files left


def test_read_manifest_rejects_other_json(tmp_path: Path) -> None:
    p = tmp_path / "a.json"
    p.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a dclip sidecar"):
        read_manifest(p)
    p.write_text("{broken")
    with pytest.raises(ConfigError, match="not a readable dclip sidecar"):
        read_manifest(p)


def test_timings_accumulate() -> None:
    t = Timings()
    with t.measure("a"):
        pass
    t.add("a", 1.0)
    d = t.as_dict()
    assert 1.0 <= d["a"] < 1.5 and d["total"] >= 0
