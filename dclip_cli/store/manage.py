"""Managing the store: list, verify, remove and import checkpoints and library edits (``dclip models``).

Registered names live in the cache; fine-tuned edits that are not in the registry (``face/my-edit``) live in the
library (:func:`dclip_cli.checkpoints.cache.library_dir`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dclip_cli.checkpoints import cache
from dclip_cli.checkpoints.download import _mismatch, hash_file
from dclip_cli.checkpoints.registry import CheckpointSpec
from dclip_cli.errors import (
    CheckpointError,
    CheckpointNotCachedError,
    ChecksumMismatchError,
    ConfigError,
    IncompatibleModelError,
    UnknownCheckpointError,
)
from dclip_cli.fileio import atomic_path
from dclip_cli.presets.manager import get_registry
from dclip_cli.store.library import TrainingSettings, read_entry, run_folders, run_index, training_settings
from dclip_cli.store.specs import all_specs, find_spec, get_spec

# -- listing --------------------------------------------------------------------------------------------------


@dataclass
class ModelStatus:
    """One row of ``dclip models list``.

    Args:
        name: registry name (for a cached file no spec knows: its path inside the cache).
        filename: file name on disk.
        format: the format of the cached bytes when known, else the spec's.
        size: size in bytes of the cached file, else the registry's size (``None`` if unknown).
        approximate: ``size`` is the registry's approximate size (the file is not cached and its exact size is
            not published).
        cached: whether the file is in the cache.
        verified: ``True`` when the file was checked on arrival (SHA-256 recorded) and its size has not changed
            since, ``False`` when it has, ``None`` when nothing was recorded. ``verify`` re-hashes the file.
        path: the cache path (whether or not the file is there).
        sha256: the recorded SHA-256, else the pinned one.
        pinned: whether the registry pins a hash for it (``False`` for an entry imported with
            ``--allow-unpinned``).
        registered: ``False`` for files in the cache that no spec describes.
        downloadable: whether the spec has at least one URL.
        description: the spec's one-line description.
        partial: bytes of an interrupted download waiting to be resumed (``None`` when there is none).
        override: imported with ``--allow-unpinned`` although its bytes differ from the pinned hash.
    """

    name: str
    filename: str
    format: str | None
    size: int | None
    cached: bool
    verified: bool | None
    path: Path
    sha256: str | None
    pinned: bool
    registered: bool = True
    downloadable: bool = True
    description: str = ""
    approximate: bool = False
    partial: int | None = None
    override: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["path"] = str(self.path)
        return d


@dataclass
class EditStatus:
    """One fine-tuned edit in the library.

    Args:
        name: ``<preset>/<edit>``.
        path: the file.
        size: its size in bytes.
        training: how it was trained, as its metadata records it (``None`` when it cannot be read).
        problem: why it cannot be used (damaged metadata, unreadable file), else ``None``.
        runs: the fine-tuning run folders that produced it (previews, ``run.json``).
    """

    name: str
    path: Path
    size: int
    training: TrainingSettings | None = None
    problem: str | None = None
    runs: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "size": self.size,
            "training": self.training.to_dict() if self.training is not None else None,
            "problem": self.problem,
            "runs": [str(r) for r in self.runs],
        }


def _status(spec: CheckpointSpec, cache_root: str | os.PathLike[str] | None) -> ModelStatus:
    path = cache.checkpoint_path(spec, cache_root)
    cached = path.is_file()
    meta = cache.read_meta(path) if cached else None
    size, approximate = (path.stat().st_size, False) if cached else spec.display_size
    verified = None if meta is None else meta.size == size
    partial = [p.stat().st_size for p in cache.partial_paths(path)] if not cached else []
    override = bool(meta is not None and meta.override)
    return ModelStatus(
        name=spec.name,
        filename=spec.filename,
        format=(meta.format if meta and meta.format else spec.format),
        size=size,
        cached=cached,
        verified=verified,
        path=path,
        sha256=meta.sha256 if meta else spec.sha256,
        pinned=(spec.sha256 is not None or spec.md5 is not None) and not override,
        downloadable=bool(spec.urls),
        description=spec.description,
        approximate=approximate,
        partial=max(partial) if partial else None,
        override=override,
    )


def list_models(cache_dir: str | os.PathLike[str] | None = None) -> list[ModelStatus]:
    """Status of every registered checkpoint, then of cached files no spec describes, sorted by name."""
    specs = all_specs()
    rows = [_status(spec, cache_dir) for spec in specs.values()]
    known = {row.path for row in rows}
    for f in cache.list_cached(cache_dir):
        if f.path in known:
            continue
        verified = None if f.meta is None else f.meta.size == f.size
        rows.append(
            ModelStatus(
                name=f.relpath,
                filename=f.path.name,
                format=f.meta.format if f.meta else None,
                size=f.size,
                cached=True,
                verified=verified,
                path=f.path,
                sha256=f.meta.sha256 if f.meta else None,
                pinned=False,
                registered=False,
                downloadable=False,
                description="not in the registry",
            )
        )
    return sorted(rows, key=lambda r: (not r.registered, r.name))


def list_edits() -> list[EditStatus]:
    """The fine-tuned edits in the library, sorted by name, with how each was trained; an entry that cannot be
    read is listed with its ``problem`` instead (it never stops the listing)."""
    from dclip_cli.errors import DclipError

    out = []
    runs = run_index()
    for name, path in cache.list_library():
        try:
            size = path.stat().st_size
        except OSError:  # removed while listing
            continue
        try:
            status = EditStatus(name, path, size, training=training_settings(read_entry(path)))
        except DclipError as exc:
            status = EditStatus(name, path, size, problem=exc.message)
        status.runs = run_folders(path, runs)
        out.append(status)
    return out


# -- path, verify, remove -------------------------------------------------------------------------------------


def model_path(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the local file of a cached checkpoint or a library edit.

    Raises:
        CheckpointNotCachedError: the checkpoint is registered but not cached.
        UnknownCheckpointError: neither a registered checkpoint nor a library edit has that name.
    """
    spec = find_spec(name)
    if spec is None:
        found = cache.find_library_file(name)
        if found is not None:
            return found
        get_spec(name)  # raises UnknownCheckpointError with suggestions
    assert spec is not None
    path = cache.checkpoint_path(spec, cache_dir)
    if not path.is_file():
        raise CheckpointNotCachedError(
            f"The checkpoint {spec.name!r} ({spec.filename}) is not in the cache.",
            hint=f"Run 'dclip models fetch {spec.name}' to download it.",
        )
    return path


@dataclass
class VerifyResult:
    """The outcome of re-hashing one file.

    Args:
        name: registry or edit name.
        path: the file checked (``None`` when missing).
        status: ``"ok"``, ``"mismatch"``, ``"missing"`` or ``"unchecked"`` (nothing to compare against).
        sha256: the SHA-256 computed now.
        expected: what was expected, in words (``sha256 ab12...``), for mismatches.
        actual: what was found, in words, for mismatches.
        checked: what the file was compared with (``pinned sha256``, ``recorded sha256``, ``pinned md5``).
    """

    name: str
    path: Path | None
    status: str
    sha256: str | None = None
    expected: str | None = None
    actual: str | None = None
    checked: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["path"] = str(self.path) if self.path else None
        return d


def _pins(spec: CheckpointSpec, meta: cache.FileMeta | None) -> tuple[str | None, str | None, int | None]:
    """The pinned (sha256, md5, size) that apply to the cached bytes (those of the mirror that served them)."""
    if meta is not None and meta.override:  # imported with --allow-unpinned: only its recorded hash applies
        return None, None, None
    if meta is not None and meta.url:
        for mirror in spec.mirrors():
            if mirror.url == meta.url:
                return mirror.sha256, mirror.md5, mirror.size
    if meta is not None and meta.format and meta.format != spec.format:
        return None, None, None
    return spec.sha256, spec.md5, spec.size


def verify_path(
    path: Path,
    name: str,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
) -> VerifyResult:
    """Re-hash ``path`` and compare it with pinned values and the SHA-256 recorded beside it."""
    if not path.is_file():
        return VerifyResult(name, None, "missing")
    meta = cache.read_meta(path)
    got_size = path.stat().st_size
    got_sha256, got_md5 = hash_file(path, md5=md5 is not None)
    checked = [
        label
        for label, value in (("pinned size", size), ("pinned sha256", sha256), ("pinned md5", md5))
        if value is not None
    ]
    problem = _mismatch(sha256, md5, size, got_sha256, got_md5, got_size)
    if problem is None and meta is not None:
        checked.append("recorded sha256")
        problem = _mismatch(meta.sha256, None, meta.size, got_sha256, None, got_size)
    if problem is not None:
        return VerifyResult(name, path, "mismatch", got_sha256, problem[0], problem[1], ", ".join(checked))
    status = "ok" if checked else "unchecked"
    return VerifyResult(name, path, status, got_sha256, checked=", ".join(checked))


def verify(name: str, cache_dir: str | os.PathLike[str] | None = None) -> VerifyResult:
    """Re-hash a cached checkpoint (or a library edit) and compare it with what is known about it."""
    spec = find_spec(name)
    if spec is None:
        found = cache.find_library_file(name)
        if found is None:
            get_spec(name)  # raises UnknownCheckpointError
        assert found is not None
        return verify_path(found, name)
    path = cache.checkpoint_path(spec, cache_dir)
    if not path.is_file():
        return VerifyResult(spec.name, None, "missing")
    sha256, md5, size = _pins(spec, cache.read_meta(path))
    return verify_path(path, spec.name, sha256=sha256, md5=md5, size=size)


def verify_cached(cache_dir: str | os.PathLike[str] | None = None) -> list[VerifyResult]:
    """Verify every cached checkpoint (registered or not) and every library edit."""
    results = []
    for row in list_models(cache_dir):
        if not row.cached:
            continue
        if row.registered:
            results.append(verify(row.name, cache_dir))
        else:
            results.append(verify_path(row.path, row.name))
    results.extend(verify_path(e.path, e.name) for e in list_edits())
    return results


@dataclass
class Removal:
    """What :func:`remove` deletes for one name.

    Args:
        name: registry or edit name.
        kind: ``"checkpoint"`` (a cached download: it can be fetched again) or ``"edit"`` (a library edit: a
            training result that exists nowhere else).
        files: the files (with their sidecars and partial downloads) that exist.
        folders: fine-tuning run folders that belong only to this edit (previews, ``run.json``).
        size: bytes freed.
    """

    name: str
    kind: str
    files: list[Path]
    folders: list[Path] = field(default_factory=list)
    size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "files": [str(p) for p in self.files],
            "folders": [str(p) for p in self.folders],
            "size": self.size,
        }


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def plan_removal(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Removal:
    """What removing ``name`` would delete (nothing is deleted here).

    Raises:
        UnknownCheckpointError: neither a registered checkpoint nor a library edit has that name.
    """
    spec = find_spec(name)
    if spec is None:
        found = cache.find_library_file(name)
        if found is None:
            get_spec(name)  # raises UnknownCheckpointError with suggestions
        assert found is not None
        files = [p for p in (found, cache.meta_path(found)) if p.is_file()]
        folders = []
        for folder in run_folders(found):
            doc = folder / "run.json"
            try:
                listed = [Path(a) for a in json.loads(doc.read_text(encoding="utf-8")).get("artifacts", [])]
            except (OSError, ValueError, AttributeError):
                continue
            if all(a.resolve() == found.resolve() or not a.exists() for a in listed):
                folders.append(folder)  # a run whose only surviving result is this edit
        removal = Removal(name, "edit", files, folders)
    else:
        path = cache.checkpoint_path(spec, cache_dir)
        files = [p for p in (path, cache.meta_path(path)) if p.is_file()]
        for partial in cache.partial_paths(path):
            files += [p for p in (partial, cache.meta_path(partial)) if p.is_file()]
        removal = Removal(spec.name, "checkpoint", files)
    removal.size = sum(_tree_size(p) for p in [*removal.files, *removal.folders])
    return removal


def remove(name: str, cache_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Delete a cached checkpoint (with its sidecar and partial downloads) or a library edit (with its sidecar and
    the fine-tuning run folders that belong only to it); return the removed paths (may be empty).

    Raises:
        UnknownCheckpointError: neither a registered checkpoint nor a library edit has that name.
    """
    plan = plan_removal(name, cache_dir)
    removed = []
    for path in plan.files:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    for folder in plan.folders:
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(folder)
    return removed


# -- import ---------------------------------------------------------------------------------------------------

#: Key markers of each format family, used to recognise a hand-downloaded file.
_MARKERS: dict[str, tuple[str, ...]] = {
    "ddpm": ("temb.dense.0.weight", "conv_in.weight"),
    "adm": ("time_embed.0.weight", "input_blocks.0.0.weight"),
    "diffusers-ddpm": ("time_embedding.linear_1.weight", "conv_in.weight"),
    "openai-clip": ("visual.conv1.weight", "positional_embedding"),
    "facenet": ("conv2d_1a.conv.weight", "last_linear.weight"),
    "torchvision": ("features.0.weight",),
}


def _load_state_dict(path: Path) -> dict[str, Any]:
    from dclip_cli.models.io import load_state_dict_file

    return load_state_dict_file(path)


def detect_format(state_dict: dict[str, Any]) -> str | None:
    """The format family whose marker keys the state dict has (``ddpm``, ``adm``, ...), else ``None``."""
    for fmt, markers in _MARKERS.items():
        if all(key in state_dict for key in markers):
            return fmt
    return None


def check_file(path: Path, spec: CheckpointSpec | None) -> str | None:
    """Load ``path`` safely and check that it holds what ``spec`` describes; return the detected format family.

    Without a spec (a fine-tuned edit for the library) the file must hold a diffusion state dict (DDPM or ADM).
    With a spec and a known architecture, the keys must be exactly those of that architecture when the model
    builder is available.

    Raises:
        UnsafeCheckpointError: the file needs arbitrary code to load.
        CheckpointError: the file holds no state dict, or one of another format.
        StateDictMismatchError: the keys do not fit the spec's architecture.
    """
    state_dict = _load_state_dict(path)
    found = detect_format(state_dict)
    want: tuple[str | None, ...]
    if spec is None:
        want = ("ddpm", "adm")
    elif spec.format in ("finetuned", "dclip"):
        want = (spec.arch,) if spec.arch else ("ddpm", "adm")
    elif spec.format in ("ddpm", "diffusers-ddpm"):
        want = ("ddpm", "diffusers-ddpm")  # a diffusers copy of a DDPM checkpoint is accepted and converted
    else:
        want = (spec.format,)
    if found not in want:
        what = f"a {found} checkpoint" if found else "no checkpoint format dclip recognises"
        target = f"{spec.name!r} ({spec.format})" if spec else "a fine-tuned edit (a DDPM or ADM state dict)"
        sample = ", ".join(sorted(state_dict)[:3])
        raise CheckpointError(
            f"{path} holds {what} (first keys: {sample}), not {target}.",
            hint="Check that you downloaded the right file.",
        )
    if spec is not None and spec.arch and spec.arch_config and found in ("ddpm", "adm"):
        from dclip_cli.models.build import check_arch_keys

        check_arch_keys(state_dict, spec.arch, spec.arch_config, what=f"{path} ({spec.name!r})")
    return found


def import_file(
    path: str | os.PathLike[str],
    name: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    check: bool = True,
    allow_unpinned: bool = False,
) -> Path:
    """Copy a hand-downloaded file into the cache (registered ``name``) or the library (a new ``preset/edit``).

    The file is loaded safely and its format (and, for diffusion models, its keys and shapes) checked. For a
    registered name with a pinned hash, only bytes with that hash are accepted: an unpinned mirror of the same
    format does not open the door to other bytes (``allow_unpinned`` does, and records the entry as unpinned). An
    edit for the library must have valid dclip metadata (see :func:`dclip_cli.store.library.metadata_problems`)
    and the keys and shapes of its preset's base model. The SHA-256 is recorded beside the stored copy so
    ``verify`` can detect later corruption.

    Args:
        path: the file the user downloaded.
        name: a registered checkpoint name (``celeba_hq``, ``face/pixar``) or, for a fine-tuned edit of your
            own, ``<preset>/<edit>``.
        cache_dir: cache root for registered names.
        overwrite: replace a file already stored under that name.
        check: load the file and check its format and keys (set ``False`` for files dclip cannot parse yet; the
            metadata of a dclip edit is checked all the same).
        allow_unpinned: import a registered checkpoint whose bytes differ from its pinned hash (a copy you trust,
            re-saved or converted); it is recorded as unpinned and ``verify`` then checks only its recorded hash.

    Returns:
        The path of the stored copy.

    Raises:
        CheckpointError: the file is missing, of the wrong format or an edit with damaged metadata;
        ChecksumMismatchError: it does not match a pinned hash; StateDictMismatchError: its keys or shapes do not fit
        the architecture; OutputExistsError: a file is already stored under ``name`` and ``overwrite`` is false.
    """
    src = Path(path).expanduser()
    if not src.is_file():
        raise CheckpointError(f"{src} is not a file.", hint="Pass the path of the file you downloaded.")
    cache.validate_name(name)
    spec = find_spec(name)
    if spec is None:
        return _import_edit(src, name, overwrite=overwrite, check=check)

    found = check_file(src, spec) if check else None
    # a diffusers copy of a DDPM checkpoint is a different file: only the pins of diffusers mirrors apply to it
    arrived = "diffusers-ddpm" if found == "diffusers-ddpm" else spec.format
    candidates = [(spec.sha256, spec.md5, spec.size)] if arrived == spec.format else []
    candidates += [(m.sha256, m.md5, m.size) for m in spec.mirrors() if m.format == arrived]
    size = src.stat().st_size
    sha256, md5 = hash_file(src, md5=any(c[1] for c in candidates))
    hashed = [c for c in candidates if c[0] is not None or c[1] is not None]
    if hashed:  # a pinned hash: those bytes, and no others, unless the user overrides it
        checks = hashed
    elif any(c == (None, None, None) for c in candidates) or not candidates:
        checks = []
    else:  # only sizes are known
        checks = candidates
    problems = [_mismatch(s, m, z, sha256, md5, size) for s, m, z in checks]
    pinned = bool(hashed) and not all(problems)
    override = bool(checks) and all(problems)
    if override and not allow_unpinned:
        expected, actual = problems[0]  # type: ignore[misc]
        pin = "pinned " if hashed else ""
        raise ChecksumMismatchError(
            f"The file {src} does not match the {pin}registry entry {spec.name!r}: expected {expected}, got "
            f"{actual}. Nothing was imported.",
            hint="The download may be truncated or another version of the file; download it again and retry. "
            "If it is a copy you trust (for example the same weights re-saved), import it with --allow-unpinned: "
            "it is then recorded as unpinned.",
        )
    dest = cache.checkpoint_path(spec, cache_dir)
    cache.ensure_cache_dir(cache_dir)
    _copy(src, dest, overwrite=overwrite, name=spec.name)
    cache.write_meta(
        dest,
        cache.FileMeta(
            sha256, size, spec.name, arrived, "import", src.resolve().as_uri(), pinned, md5, override=override
        ),
    )
    return dest


def check_edit_file(src: Path, preset: Any, *, load: bool = True) -> None:
    """Check that ``src`` can join the edit library of ``preset``: readable, valid dclip metadata (a
    ``.safetensors``), made for the preset's architecture, and (``load``) the exact keys and shapes of the
    preset's base model.

    Raises:
        CheckpointError: unreadable file or damaged metadata; IncompatibleModelError: made for another
        architecture; StateDictMismatchError: keys or shapes that do not fit.
    """

    info = read_entry(src)  # checks the metadata schema of dclip artifacts, without loading tensors
    arch = info.metadata.get("arch")
    if info.kind == "dclip" and arch and arch != preset.arch:
        raise IncompatibleModelError(
            f"{src} was fine-tuned from a {str(arch).upper()} model, but preset {preset.name!r} uses "
            f"{preset.arch.upper()}.",
            hint="Import it under the preset of the base model it was fine-tuned from.",
        )
    if not load:
        return
    check_file(src, None)
    if preset.arch in ("ddpm", "adm") and preset.arch_config:
        from dclip_cli.models.build import check_arch_keys

        check_arch_keys(
            _load_state_dict(src), preset.arch, preset.arch_config, what=f"{src} (for preset {preset.name!r})"
        )


def _import_edit(src: Path, name: str, *, overwrite: bool, check: bool) -> Path:
    if "/" not in name:
        raise UnknownCheckpointError(
            f"No checkpoint named {name!r} is registered.",
            hint="Import a registered checkpoint under its name (see 'dclip models list'), or a fine-tuned edit of "
            "your own as <preset>/<edit>, for example face/my-edit.",
        )
    preset = get_registry().preset(
        name.split("/", 1)[0]
    )  # raises UnknownPresetError with the installed names
    suffix = src.suffix.lower()
    if suffix not in cache.LIBRARY_SUFFIXES:
        raise ConfigError(
            f"{src.name} does not look like a checkpoint (its suffix is {suffix or 'empty'}).",
            hint=f"Fine-tuned edits are {', '.join(cache.LIBRARY_SUFFIXES)} files.",
        )
    check_edit_file(src, preset, load=check)
    existing = cache.find_library_file(name)
    dest = cache.library_path(name, suffix)
    if existing is not None and existing != dest and overwrite:
        cache.remove_file(existing)
    elif existing is not None and existing != dest:
        dest = existing  # let atomic_path report the clash under its real name
    _copy(src, dest, overwrite=overwrite, name=name)
    sha256, _ = hash_file(dest)
    cache.write_meta(
        dest, cache.FileMeta(sha256, dest.stat().st_size, name, None, "import", src.resolve().as_uri(), False)
    )
    return dest


def _copy(src: Path, dest: Path, *, overwrite: bool, name: str) -> None:
    from dclip_cli.errors import OutputExistsError

    try:
        with atomic_path(dest, overwrite=overwrite) as tmp:
            shutil.copyfile(src, tmp)
    except OutputExistsError as exc:
        raise OutputExistsError(
            f"{name!r} is already stored at {dest}.",
            hint=f"Pass --overwrite to replace it, or remove it first with 'dclip models rm {name}'.",
        ) from exc
