"""The edit library: fine-tuned edits stored as ``<data_dir>/edits/<preset>/<key>.safetensors``.

``dclip finetune`` and on-the-fly fine-tuning save into it; ``dclip edit`` looks in it before downloading an official
model or fine-tuning; ``dclip models list|rm|import`` manage it.

One bad file never breaks the library: every entry is read through :func:`read_entry`, which checks the metadata
schema of dclip artifacts (:func:`metadata_problems`), and the scans skip an unreadable entry with one warning naming
the file and the command that removes it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dclip_cli.checkpoints import cache
from dclip_cli.progress import ProgressCallback, Reporter

if TYPE_CHECKING:
    from dclip_cli.artifacts import ArtifactInfo
    from dclip_cli.presets.preset import Preset

_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?")
_HEX64 = re.compile(r"[0-9a-f]{64}")

#: metadata fields of a dclip artifact that must be text when present
_TEXT_FIELDS = (
    "src_text", "trg_text", "base_checkpoint", "mode", "clip_model", "dclip_version", "created", "dtype", "preset",
    "edit",
)  # fmt: skip
#: fields that must be whole numbers >= 0 when present
_COUNT_FIELDS = (
    "epochs",
    "n_train_images",
    "n_inv_steps",
    "n_train_steps",
    "n_gen_steps",
    "batch_size",
    "seed",
)
#: fields that must be numbers when present
_NUMBER_FIELDS = ("lr", "lr_gamma", "eta")


def is_plain_name(name: str) -> bool:
    """Whether ``name`` can be a library or registry name (``face/pixar``), not a path."""
    return _PLAIN_NAME.fullmatch(name) is not None and ".." not in name


def _whole(value: Any) -> int | None:
    """``value`` as an int when it is a whole number (``601``, ``601.0``), else ``None`` (``True`` is not one)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def metadata_problems(meta: Any) -> list[str]:
    """What is wrong with a dclip artifact's ``dclip.metadata`` (empty when nothing is).

    The metadata must be a JSON object; ``t0`` a whole number from 1 to 999; the texts, the base checkpoint name and
    the training mode text; ``base_sha256`` 64 hex digits; ``arch`` ``ddpm`` or ``adm`` and ``arch_config`` an
    object; the counts (``epochs``, ``n_train_images``, step counts) whole numbers. Fields may be absent.
    """
    if not isinstance(meta, dict):
        return [f"dclip.metadata is a JSON {type(meta).__name__}, not an object"]
    problems = []
    if meta.get("t0") is not None:
        t0 = _whole(meta["t0"])
        if t0 is None or not 1 <= t0 <= 999:
            problems.append(f"t0 is {meta['t0']!r}, not a whole number from 1 to 999")
    for key in _TEXT_FIELDS:
        if meta.get(key) is not None and not isinstance(meta[key], str):
            problems.append(f"{key} is {meta[key]!r}, not text")
    for key in _COUNT_FIELDS:
        if meta.get(key) is not None and (_whole(meta[key]) is None or _whole(meta[key]) < 0):  # type: ignore[operator]
            problems.append(f"{key} is {meta[key]!r}, not a whole number")
    for key in _NUMBER_FIELDS:
        value = meta.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            problems.append(f"{key} is {value!r}, not a number")
    sha = meta.get("base_sha256")
    if sha is not None and not (isinstance(sha, str) and _HEX64.fullmatch(sha)):
        problems.append(f"base_sha256 is {sha!r}, not 64 lower-case hex digits")
    if meta.get("arch") is not None and meta["arch"] not in ("ddpm", "adm"):
        problems.append(f"arch is {meta['arch']!r}, not 'ddpm' or 'adm'")
    if meta.get("arch_config") is not None and not isinstance(meta["arch_config"], dict):
        problems.append(f"arch_config is {meta['arch_config']!r}, not an object")
    weights = meta.get("loss_weights")
    if weights is not None and not (
        isinstance(weights, dict) and all(isinstance(v, (int, float)) for v in weights.values())
    ):
        problems.append(f"loss_weights is {weights!r}, not an object of numbers")
    return problems


def read_entry(path: Path) -> ArtifactInfo:
    """What an edit file says about itself (:func:`dclip_cli.artifacts.read_artifact`), its metadata checked.

    Raises:
        CheckpointError: the file is unreadable, its metadata is not valid JSON or breaks the schema of
            :func:`metadata_problems`.
    """
    from dclip_cli.artifacts import read_artifact
    from dclip_cli.errors import CheckpointError

    try:
        info = read_artifact(path)
    except (OSError, ValueError) as exc:  # read_artifact's own errors are CheckpointErrors already
        raise CheckpointError(f"{path} cannot be read: {exc}.") from exc
    problems = metadata_problems(info.metadata) if info.kind == "dclip" else []
    if problems:
        raise CheckpointError(
            f"{path} is not a valid dclip edit: its metadata is damaged ({'; '.join(problems)}).",
            hint="Fine-tune it again, or copy a good file anew.",
        )
    return info


def entry_problem(path: Path) -> str | None:
    """Why the library entry ``path`` cannot be used (one line), or ``None`` when it reads fine."""
    from dclip_cli.errors import DclipError

    try:
        read_entry(path)
    except DclipError as exc:
        return exc.message
    return None


#: (path, mtime, size) of the entries already warned about in this process: one warning per bad file
_WARNED: set[tuple[str, float, int]] = set()


def warn_unreadable(reporter: Reporter, name: str, path: Path, problem: str) -> None:
    """Send the one warning about an unreadable library entry (once per file and process)."""
    try:
        st = path.stat()
        key = (str(path), st.st_mtime, st.st_size)
    except OSError:
        key = (str(path), 0.0, -1)
    if key in _WARNED:
        return
    _WARNED.add(key)
    reporter.warn(
        f"Skipped a damaged edit in the library: {problem} Remove it with 'dclip models rm {name}'."
    )


def find_match(
    preset: Preset,
    src_text: str,
    trg_text: str,
    *,
    base_sha256: str | None,
    t0: int | None,
    accept: Callable[[dict[str, Any]], bool] | None = None,
    progress: Reporter | ProgressCallback | None = None,
) -> Path | None:
    """The newest artifact in the edit library made for this preset's base with these texts and this t0.

    An artifact matches when its metadata records the same source and target text and the same t0 (any t0 when
    ``t0`` is ``None``), was made from the same base checkpoint (its SHA-256 when recorded, else the preset's
    checkpoint name), and ``accept(metadata)`` is true when given. An entry that cannot be read is skipped with one
    warning (to ``progress``) naming the file and ``dclip models rm``.
    """
    from dclip_cli.errors import DclipError

    reporter = Reporter.of(progress)
    matches: list[tuple[float, Path]] = []
    for name, path in cache.list_library():
        if not name.startswith(f"{preset.name}/"):
            continue
        try:
            info = read_entry(path)
            mtime = path.stat().st_mtime
        except DclipError as exc:
            warn_unreadable(reporter, name, path, exc.message)
            continue
        except OSError:  # removed while scanning
            continue
        meta = info.metadata
        if meta.get("src_text") != src_text or meta.get("trg_text") != trg_text:
            continue
        if meta.get("t0") is None or (t0 is not None and _whole(meta["t0"]) != t0):
            continue
        if accept is not None and not accept(meta):
            continue
        art_sha = meta.get("base_sha256")
        if art_sha and base_sha256:
            if art_sha != base_sha256:
                continue
        elif meta.get("base_checkpoint") not in (None, preset.checkpoint):
            continue
        matches.append((mtime, path))
    return max(matches)[1] if matches else None


@dataclass
class TrainingSettings:
    """How a library edit was trained, as its artifact records it (``None`` where not recorded)."""

    t0: int | None = None
    epochs: int | None = None
    n_train_images: int | None = None
    n_train_steps: int | None = None
    n_gen_steps: int | None = None
    mode: str | None = None
    src_text: str | None = None
    trg_text: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def summary(self) -> str:
        """``t0 401, 1 epoch, 8 images, 6 train steps, original`` (what is known)."""
        parts = []
        if self.t0 is not None:
            parts.append(f"t0 {self.t0}")
        if self.epochs is not None:
            parts.append(f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}")
        if self.n_train_images is not None:
            parts.append(f"{self.n_train_images} image{'s' if self.n_train_images != 1 else ''}")
        if self.n_train_steps is not None:
            parts.append(f"{self.n_train_steps} train steps")
        if self.mode:
            parts.append(self.mode)
        return ", ".join(parts)


def training_settings(info: ArtifactInfo) -> TrainingSettings:
    """The training settings an artifact records (for official files only the t0 of their name is known)."""
    meta = info.metadata

    def count(key: str) -> int | None:
        return _whole(meta.get(key)) if meta.get(key) is not None else None

    return TrainingSettings(
        t0=count("t0"),
        epochs=count("epochs"),
        n_train_images=count("n_train_images"),
        n_train_steps=count("n_train_steps"),
        n_gen_steps=count("n_gen_steps"),
        mode=meta.get("mode") if isinstance(meta.get("mode"), str) else None,
        src_text=meta.get("src_text") if isinstance(meta.get("src_text"), str) else None,
        trg_text=meta.get("trg_text") if isinstance(meta.get("trg_text"), str) else None,
    )


def free_name(preset: Preset, key: str, t0: int) -> str:
    """The library name for a new artifact of edit ``key``: ``<preset>/<key>``, or, when that name is taken (by an
    artifact with other settings), the first free ``<preset>/<key>_t<t0>[-n]``."""
    name = f"{preset.name}/{key}"
    if cache.find_library_file(name) is None:
        return name
    candidate, n = f"{name}_t{t0}", 2
    while cache.find_library_file(candidate) is not None:
        candidate, n = f"{name}_t{t0}-{n}", n + 1
    return candidate


def write_entry_meta(path: Path, name: str, origin: str = "finetune") -> None:
    """Record an artifact's SHA-256 beside it, as ``dclip models import`` does, so ``verify`` can check it."""
    from dclip_cli.fileio import sha256_file

    cache.write_meta(
        path, cache.FileMeta(sha256_file(path), path.stat().st_size, name, "dclip", origin, None, False)
    )


def run_index() -> dict[str, list[Path]]:
    """Fine-tuning run folders (``<data_dir>/runs/*``) by the artifacts their ``run.json`` lists (resolved paths)."""
    runs = cache.data_dir() / "runs"
    index: dict[str, list[Path]] = {}
    if not runs.is_dir():
        return index
    for doc in sorted(runs.glob("*/run.json")):
        try:
            listed = json.loads(doc.read_text(encoding="utf-8")).get("artifacts", [])
        except (OSError, ValueError, AttributeError):
            continue
        for artifact in listed if isinstance(listed, list) else []:
            if isinstance(artifact, str):
                index.setdefault(str(Path(artifact).resolve()), []).append(doc.parent)
    return index


def run_folders(path: Path, index: dict[str, list[Path]] | None = None) -> list[Path]:
    """The fine-tuning run folders whose ``run.json`` lists ``path`` as an artifact (``index``: a
    :func:`run_index` to reuse)."""
    if index is None:
        index = run_index()
    return list(index.get(str(path.resolve()), []))
