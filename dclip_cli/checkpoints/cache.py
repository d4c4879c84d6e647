"""Where checkpoints live on disk, and what is known about each cached file.

Layout (``cache_dir()`` is ``--cache-dir`` > ``DCLIP_CACHE`` > ``platformdirs.user_cache_dir("dclip")``)::

    <cache_dir>/
      CACHEDIR.TAG                      # marks the tree as a cache for backup tools
      checkpoints/
        celeba_hq.ckpt                  # registry name "celeba_hq", original file name kept
        celeba_hq.ckpt.meta.json        # sidecar: sha256, size, url, format, source, time
        face/human_pixar_t601.pth       # names with a "/" get a sub-folder (no clashes between presets)
        clip/ViT-B-16.pt.1a2b3c4d.incomplete            # a download in progress or interrupted (resumable)
        clip/ViT-B-16.pt.1a2b3c4d.incomplete.meta.json  # its source URL and expected size
        .locks/celeba_hq.ckpt.lock      # one lock per file (filelock)

Fine-tuned edits made or imported by the user live outside the cache, in the library
(``library_dir()``: ``DCLIP_DATA`` > ``platformdirs.user_data_dir("dclip")``, then ``edits/``) as
``<preset>/<edit>.safetensors``, because deleting a cache must never delete someone's training result.

The sidecar records the SHA-256 of the first verified download (or import), so ``dclip models verify`` can detect
later corruption even for files whose hash is not pinned in the registry.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import platformdirs

from dclip_cli.checkpoints.registry import CheckpointSpec, is_valid_filename, is_valid_name
from dclip_cli.errors import ConfigError
from dclip_cli.fileio import atomic_path

CHECKPOINTS = "checkpoints"
LOCKS = ".locks"
META_SUFFIX = ".meta.json"
INCOMPLETE_SUFFIX = ".incomplete"
LIBRARY_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt")

_CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by dclip.\n"
    "# For information about cache directory tags, see https://bford.info/cachedir/\n"
)

_override: Path | None = None


def set_cache_dir_override(path: str | os.PathLike[str] | None) -> None:
    """Set (or clear, with ``None``) the cache directory chosen by the CLI's global ``--cache-dir``."""
    global _override
    _override = Path(path).expanduser() if path is not None else None


def cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return the cache root: ``explicit`` > ``--cache-dir`` > ``DCLIP_CACHE`` > the platform user cache.

    The directory is not created here; writers create it (and its ``CACHEDIR.TAG``) when they first write.
    """
    if explicit is not None:
        return Path(explicit).expanduser()
    if _override is not None:
        return _override
    env = os.environ.get("DCLIP_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("dclip", appauthor=False))


def data_dir() -> Path:
    """Return the user data root: ``DCLIP_DATA`` > ``platformdirs.user_data_dir("dclip")``."""
    env = os.environ.get("DCLIP_DATA")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("dclip", appauthor=False))


def library_dir() -> Path:
    """Return the library of fine-tuned edits, ``<data_dir>/edits`` (``<preset>/<edit>.safetensors`` inside)."""
    return data_dir() / "edits"


def ensure_cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Create the cache root with its ``CACHEDIR.TAG`` if needed and return it."""
    root = cache_dir(explicit)
    root.mkdir(parents=True, exist_ok=True)
    tag = root / "CACHEDIR.TAG"
    if not tag.exists():
        with contextlib.suppress(OSError):  # a read-only cache still works for reading
            with atomic_path(tag, overwrite=True) as tmp:
                tmp.write_text(_CACHEDIR_TAG, encoding="ascii")
    return root


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid checkpoint name (``celeba_hq``, ``face/pixar``), else raise.

    Names become paths inside the cache, so anything that could escape it (``..``, absolute paths, backslashes,
    more than one ``/``) is refused.

    Raises:
        ConfigError: the name is not valid.
    """
    if not is_valid_name(name):
        raise ConfigError(
            f"{name!r} is not a valid checkpoint name.",
            hint="Names are letters, digits, '.', '_' and '-', with at most one '/' (for example celeba_hq "
            "or face/pixar).",
        )
    return name


def validate_filename(filename: str) -> str:
    """Return ``filename`` if it is a plain file name (no directories, no ``..``), else raise ConfigError."""
    if not is_valid_filename(filename):
        raise ConfigError(f"{filename!r} is not a plain file name.")
    return filename


def checkpoints_dir(cache: str | os.PathLike[str] | None = None) -> Path:
    """Return ``<cache_dir>/checkpoints``."""
    return cache_dir(cache) / CHECKPOINTS


def _relative(spec: CheckpointSpec) -> Path:
    validate_name(spec.name)
    validate_filename(spec.filename)
    folder, _, _ = spec.name.rpartition("/")
    return Path(folder, spec.filename) if folder else Path(spec.filename)


def checkpoint_path(spec: CheckpointSpec, cache: str | os.PathLike[str] | None = None) -> Path:
    """Return where ``spec``'s file lives in the cache (whether or not it is there)."""
    return checkpoints_dir(cache) / _relative(spec)


def lock_path(spec: CheckpointSpec, cache: str | os.PathLike[str] | None = None) -> Path:
    """Return the lock file guarding ``spec``'s file."""
    rel = _relative(spec)
    return checkpoints_dir(cache) / LOCKS / rel.parent / f"{rel.name}.lock"


def meta_path(path: Path) -> Path:
    """Return the sidecar path of a cached or library file."""
    return path.with_name(path.name + META_SUFFIX)


def library_path(name: str, suffix: str = ".safetensors") -> Path:
    """Return the library path of a fine-tuned edit ``<preset>/<edit>`` (``face/pixar``)."""
    validate_name(name)
    if "/" not in name:
        raise ConfigError(
            f"{name!r} is not a valid name for a fine-tuned edit.",
            hint="Name edits <preset>/<edit>, for example face/pixar.",
        )
    if suffix not in LIBRARY_SUFFIXES:
        raise ConfigError(f"{suffix!r} is not a checkpoint suffix; use one of {', '.join(LIBRARY_SUFFIXES)}.")
    return library_dir() / f"{name}{suffix}"


def find_library_file(name: str) -> Path | None:
    """Return the library file of edit ``name`` (any known suffix), or ``None``."""
    validate_name(name)
    if "/" not in name:
        return None
    for suffix in LIBRARY_SUFFIXES:
        path = library_dir() / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


@dataclass
class FileMeta:
    """What dclip recorded about a file when it was downloaded, imported or first verified.

    Args:
        sha256: SHA-256 of the file as verified.
        size: size in bytes.
        name: registry name.
        format: format of the bytes that arrived (a mirror may serve another format than the spec's).
        source: ``"download"``, ``"import"`` or ``"found"`` (file placed in the cache by hand).
        url: where it came from (downloads).
        pinned: whether the sha256 (or md5) was checked against a pinned registry value.
        md5: MD5, when a pinned MD5 was checked.
        time: UNIX time of the record.
        override: imported with ``--allow-unpinned`` although its bytes differ from the pinned hash (the entry is
            unpinned: ``verify`` compares it with its recorded SHA-256 only).
    """

    sha256: str
    size: int
    name: str = ""
    format: str | None = None
    source: str = "download"
    url: str | None = None
    pinned: bool = False
    md5: str | None = None
    time: float = 0.0
    override: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_meta(path: Path, meta: FileMeta) -> Path:
    """Write the sidecar of ``path`` atomically and return its path."""
    if not meta.time:
        meta.time = time.time()
    dest = meta_path(path)
    with atomic_path(dest, overwrite=True) as tmp:
        tmp.write_text(json.dumps(meta.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return dest


def read_meta(path: Path) -> FileMeta | None:
    """Read the sidecar of ``path``; ``None`` when there is none or it is unreadable."""
    try:
        data = json.loads(meta_path(path).read_text(encoding="utf-8"))
        fields = FileMeta.__dataclass_fields__
        return FileMeta(**{k: v for k, v in data.items() if k in fields})
    except (OSError, ValueError, TypeError):
        return None


@dataclass
class CachedFile:
    """One file found under ``<cache_dir>/checkpoints``.

    Args:
        relpath: path relative to the checkpoints folder, with ``/`` separators (``face/human_pixar_t601.pth``).
        path: absolute path.
        size: size in bytes.
        meta: the sidecar record, when present.
    """

    relpath: str
    path: Path
    size: int
    meta: FileMeta | None


def _is_aux(name: str) -> bool:
    return name.endswith((META_SUFFIX, INCOMPLETE_SUFFIX, ".lock")) or name.startswith(".")


def list_cached(cache: str | os.PathLike[str] | None = None) -> list[CachedFile]:
    """List the checkpoint files in the cache (sidecars, locks and partial downloads left out), sorted."""
    root = checkpoints_dir(cache)
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] == LOCKS or _is_aux(path.name) or not path.is_file():
            continue
        out.append(CachedFile(rel.as_posix(), path, path.stat().st_size, read_meta(path)))
    return out


_PARTIAL_RE = re.compile(r"(?P<file>.+)\.[0-9a-f]{8}" + re.escape(INCOMPLETE_SUFFIX))


@dataclass
class Partial:
    """A download that did not finish: ``<file>.<uuid8>.incomplete`` with the bytes received so far.

    Args:
        path: the partial file.
        relpath: path of the final file relative to the checkpoints folder (``face/pixar_t601.pth``).
        size: bytes received.
        name: registry name, when recorded.
        url: the source the bytes came from, when recorded (a later download resumes only from that source).
        total: the file's full size, when known.
        validator: the server's ``ETag`` or ``Last-Modified``, sent as ``If-Range`` when resuming.
        mtime: when bytes last arrived.
    """

    path: Path
    relpath: str
    size: int
    name: str | None = None
    url: str | None = None
    total: int | None = None
    validator: str | None = None
    mtime: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def partial_paths(dest: Path) -> list[Path]:
    """The partial downloads of the cache file ``dest`` (``<dest>.<uuid8>.incomplete``), oldest first."""
    if not dest.parent.is_dir():
        return []
    found = []
    for p in dest.parent.glob(f"{dest.name}.*{INCOMPLETE_SUFFIX}"):
        m = _PARTIAL_RE.fullmatch(p.name)
        if m and m.group("file") == dest.name and p.is_file():
            found.append(p)
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))


def write_partial_meta(
    partial: Path, *, name: str, url: str | None, total: int | None, validator: str | None = None
) -> None:
    """Record where a partial download's bytes come from (beside it, as ``<partial>.meta.json``)."""
    data = {"name": name, "url": url, "total": total, "validator": validator}
    with atomic_path(meta_path(partial), overwrite=True) as tmp:
        tmp.write_text(json.dumps(data, sort_keys=True) + "\n", encoding="utf-8")


def read_partial(partial: Path, root: Path | None = None) -> Partial:
    """What is known about a partial download (its sidecar may be missing: then only its size)."""
    st = partial.stat()
    m = _PARTIAL_RE.fullmatch(partial.name)
    final = partial.with_name(m.group("file")) if m else partial
    try:
        rel = final.relative_to(root).as_posix() if root is not None else final.name
    except ValueError:
        rel = final.name
    info = Partial(partial, rel, st.st_size, mtime=st.st_mtime)
    try:
        data = json.loads(meta_path(partial).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return info
    if isinstance(data, dict):
        info.name = data.get("name") if isinstance(data.get("name"), str) else None
        info.url = data.get("url") if isinstance(data.get("url"), str) else None
        info.total = data.get("total") if isinstance(data.get("total"), int) else None
        info.validator = data.get("validator") if isinstance(data.get("validator"), str) else None
    return info


def list_partial(cache: str | os.PathLike[str] | None = None) -> list[Partial]:
    """The partial downloads in the cache (left by interrupted or killed downloads, or in progress), sorted."""
    root = checkpoints_dir(cache)
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.rglob(f"*{INCOMPLETE_SUFFIX}")
        if p.is_file()
        and LOCKS not in p.parts
        and META_SUFFIX + "." not in p.name  # not a sidecar being written
    ]
    out = []
    for p in sorted(found):
        try:
            out.append(read_partial(p, root))
        except FileNotFoundError:  # finished or removed while listing
            continue
    return out


def list_library() -> list[tuple[str, Path]]:
    """List the fine-tuned edits in the library as ``(name, path)`` pairs, ``name`` being ``<preset>/<edit>``."""
    root = library_dir()
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.glob("*/*")):
        if path.is_file() and path.suffix in LIBRARY_SUFFIXES and not _is_aux(path.name):
            name = f"{path.parent.name}/{path.stem}"
            if is_valid_name(name):
                out.append((name, path))
    return out


def remove_file(path: Path) -> list[Path]:
    """Remove a cached or library file and its sidecar; return what was removed."""
    removed = []
    for p in (path, meta_path(path)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    return removed
