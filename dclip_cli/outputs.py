"""Output planning: every path a command will write, decided and checked before any work starts.

One planner serves the three kinds of outputs: edited images with their sidecars (``edit``, ``mix``,
``translate``), latents with their reconstructions (``invert``) and fine-tuned artifacts (``finetune``). Each naming
function turns the inputs and ``-o`` into paths; :func:`claim` then refuses, up front, two items writing one file,
an output replacing an input, an unwritable folder and (without ``overwrite``) an existing file.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dclip_cli.errors import ConfigError, OutputError, OutputExistsError

if TYPE_CHECKING:
    from dclip_cli.textedit import TextEdit

LATENT_SUFFIX = ".latent.safetensors"
RECON_SUFFIX = ".recon.png"


def output_is_directory(output: str | os.PathLike[str]) -> bool:
    """Whether ``-o`` names a directory: it is one, ends with a separator, or has no file extension."""
    text = os.fspath(output)
    path = Path(text)
    return path.is_dir() or text.endswith(("/", os.sep)) or path.suffix == ""


def split_output(
    output: str | os.PathLike[str] | None, n_items: int, *, suffix: str, what: str, verb: str
) -> tuple[Path | None, Path | None]:
    """Interpret ``-o``: ``(directory, None)``, ``(None, file)`` for a single item, or ``(None, None)``.

    Args:
        output: the ``-o`` value, or ``None`` (outputs go to their default place).
        n_items: how many inputs (or edits) the command got.
        suffix: the only file suffix ``-o`` may name (``.png``, ``.safetensors``).
        what: what the files are, for the message ("dclip writes PNG images").
        verb: what the command does to several items ("editing", "inverting").

    Raises:
        ConfigError: ``-o`` names a file with another suffix, or one file for several items.
    """
    if output is None:
        return None, None
    if output_is_directory(output):
        return Path(output).expanduser(), None
    out_file = Path(output).expanduser()
    if out_file.suffix.lower() != suffix:
        raise ConfigError(
            f"-o {out_file} does not end in {suffix}; {what}.",
            hint=f"Name the output file with {suffix}, or pass a directory.",
        )
    if n_items != 1:
        raise ConfigError(
            f"-o {out_file} names one file but {n_items} {'images were' if verb != 'training' else 'edits are'} "
            "given.",
            hint=f"Pass a directory with -o when {verb} several {'images' if verb != 'training' else 'edits'}.",
        )
    return None, out_file


def child_path(folder: Path, name: str) -> Path:
    """``folder / name``, refusing a ``name`` that is not a plain file name (a separator, ``..``, a leading dot),
    so that no name derived from an edit key, a text or a model file can leave the chosen folder.

    Raises:
        ConfigError: ``name`` would not be a file directly inside ``folder``.
    """
    if (
        name in ("", ".", "..")
        or "/" in name
        or "\\" in name
        or (os.altsep is not None and os.altsep in name)
        or Path(name).name != name
    ):
        raise ConfigError(
            f"The output name {name!r} would leave the folder {folder}.",
            hint="Edit keys and names may use letters, digits, '_' and '-' only; check the preset plugin or "
            "the name given.",
        )
    return folder / name


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p.parent != p:
        p = p.parent
    return p


def check_writable_dir(directory: Path) -> None:
    """Raise :class:`OutputError` unless ``directory`` exists and is writable or could be created."""
    existing = _nearest_existing(directory)
    if not existing.is_dir():
        raise OutputError(
            f"Cannot create the output directory {directory}: {existing} is a file.",
            hint="Choose another output location with -o.",
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(
            f"The output directory {directory} is not writable.",
            hint="Choose a writable output location with -o.",
        )


def claim(
    items: Sequence[tuple[object, Sequence[Path]]],
    *,
    overwrite: bool,
    inputs: Sequence[Path] = (),
    again: str = "edit them in separate runs with different -o",
) -> None:
    """Check the paths each item will write, before any work starts.

    Args:
        items: ``(owner, paths)`` per item; the owner (an input file, an edit key) names it in messages.
        overwrite: whether existing files may be replaced.
        inputs: input files no output may replace.
        again: how to avoid a clash, for the hint.

    Raises:
        ConfigError: two items map to one output, or an output would replace an input.
        OutputExistsError: an output exists and ``overwrite`` is false.
        OutputError: an output directory is not writable.
    """
    owner: dict[Path, object] = {}
    input_keys = {p.resolve() for p in inputs}
    for item, paths in items:
        for path in paths:
            key = path.resolve()
            if key in input_keys:
                raise ConfigError(
                    f"The output {path} would replace an input image.", hint="Choose another output with -o."
                )
            if key in owner and owner[key] != item:
                raise ConfigError(
                    f"{owner[key]} and {item} would both be written to {path}.",
                    hint=f"Give the inputs different names, or {again}.",
                )
            owner[key] = item
    every = [p for _, paths in items for p in paths]
    for directory in sorted({p.parent for p in every}):
        check_writable_dir(directory)
    if not overwrite:
        existing = [p for p in every if p.exists()]
        if existing:
            more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
            raise OutputExistsError(
                f"{existing[0]} already exists{more}.",
                hint="Pass --overwrite to replace it, or choose another output with -o.",
            )


# -- edited images ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputSet:
    """The files one input produces.

    Args:
        image: the edited PNG (for a sweep: the contact sheet).
        sidecar: the JSON manifest.
        compare: the input | reconstruction | edit sheet, when asked for.
        intermediates: one PNG per translation round, when asked for.
    """

    image: Path
    sidecar: Path
    compare: Path | None = None
    intermediates: tuple[Path, ...] = ()

    def all(self) -> list[Path]:
        paths = [self.image, self.sidecar, *self.intermediates]
        if self.compare is not None:
            paths.append(self.compare)
        return paths


def plan_images(
    inputs: Sequence[Path],
    tag: str,
    output: str | os.PathLike[str] | None = None,
    *,
    kind: str | None = None,
    compare: bool = False,
    intermediates: int = 0,
    overwrite: bool = False,
) -> list[OutputSet]:
    """The outputs of ``edit``, ``mix`` and ``translate``, one :class:`OutputSet` per input, checked by :func:`claim`.

    Naming: ``<stem>.<tag>.png`` next to the input (or in the ``-o`` directory), ``<stem>.<tag>.<kind>.png`` for a
    ``kind`` such as ``sweep``; the sidecar is the main image's name with ``.json`` (``<stem>.<tag>.json``,
    ``<stem>.<tag>.sweep.json``), so every main image has its own; ``<stem>.<tag>.compare.png`` for ``--compare``
    and ``<stem>.<tag>.round01.png``... for translation intermediates. ``-o`` naming a ``.png`` file (one input
    only) sets the main image's path; the other files take its stem.

    Raises:
        ConfigError: ``tag`` or ``kind`` would make a name that leaves the folder (see :func:`child_path`), two
            inputs map to one file, or an output would replace an input.
        OutputExistsError, OutputError: as :func:`claim`.
    """
    out_dir, out_file = split_output(
        output, len(inputs), suffix=".png", what="dclip writes PNG images", verb="editing"
    )
    plans: list[OutputSet] = []
    for src in inputs:
        if out_file is not None:
            image = out_file
            base = out_file.with_suffix("")
        else:
            folder = out_dir if out_dir is not None else src.parent
            base = child_path(folder, f"{src.stem}.{tag}")
            image = child_path(folder, f"{base.name}.{kind}.png" if kind else f"{base.name}.png")
        plans.append(
            OutputSet(
                image=image,
                sidecar=image.with_suffix(".json"),
                compare=base.with_name(f"{base.name}.compare.png") if compare else None,
                intermediates=tuple(
                    base.with_name(f"{base.name}.round{i:02d}.png") for i in range(1, intermediates + 1)
                ),
            )
        )
    claim(
        [(src, plan.all()) for src, plan in zip(inputs, plans, strict=True)],
        overwrite=overwrite,
        inputs=inputs,
    )
    return plans


def write_together(
    files: Sequence[tuple[Path, Callable[[Path], object]]], *, overwrite: bool = False
) -> list[Path]:
    """Write several files as one set: each writer fills a temporary file beside its destination, and only when
    every one of them is complete are they renamed into place. A failure (a full disk, an exception, Ctrl-C) before
    that leaves the previous files, if any, untouched and removes the temporary ones.

    Args:
        files: ``(destination, writer)`` pairs; ``writer(path)`` writes the content to ``path`` (a temporary name
            that keeps the destination's suffix, so format-by-suffix writers work).
        overwrite: whether existing destinations may be replaced.

    Returns:
        The destinations, in order.

    Raises:
        OutputExistsError: a destination exists and ``overwrite`` is false.
        OutputError: a folder cannot be created.
    """
    for dest, _ in files:
        if dest.exists() and not overwrite:
            raise OutputExistsError(
                f"{dest} already exists.",
                hint="Pass --overwrite to replace it, or choose another output with -o.",
            )
    temps: list[Path] = []
    try:
        for dest, write in files:
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(
                    f"Cannot create the output directory {dest.parent}: {exc.strerror or exc}.",
                    hint="Choose a writable output location with -o.",
                ) from exc
            tmp = dest.with_name(f"{dest.stem}.{uuid.uuid4().hex[:8]}.incomplete{dest.suffix}")
            temps.append(tmp)
            write(tmp)
            if not tmp.is_file():
                raise OutputError(f"Nothing was written for {dest}.")
        for dest, _ in files:
            if dest.exists() and not overwrite:
                raise OutputExistsError(
                    f"{dest} appeared while dclip was writing it.", hint="Pass --overwrite."
                )
        for (dest, _), tmp in zip(files, temps, strict=True):
            os.replace(tmp, dest)
    finally:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return [dest for dest, _ in files]


# -- latents ------------------------------------------------------------------------------------------------------


def plan_latents(
    inputs: Sequence[Path], output: str | os.PathLike[str] | None = None, *, overwrite: bool = False
) -> list[tuple[Path, Path]]:
    """The (latent, reconstruction) paths of ``invert``, checked by :func:`claim`.

    ``<stem>.latent.safetensors`` and ``<stem>.recon.png`` next to each input, or in the ``-o`` directory; ``-o``
    ending in ``.safetensors`` names the latent of a single input (its reconstruction takes the same stem).
    """
    out_dir, out_file = split_output(
        output, len(inputs), suffix=".safetensors", what="latents are written as safetensors files",
        verb="inverting",
    )  # fmt: skip
    plans: list[tuple[Path, Path]] = []
    for src in inputs:
        if out_file is not None:
            stem = out_file.name[: -len(".safetensors")]
            stem = stem[: -len(".latent")] if stem.endswith(".latent") else stem
            plans.append((out_file, out_file.with_name(stem + RECON_SUFFIX)))
        else:
            folder = out_dir if out_dir is not None else src.parent
            plans.append(
                (child_path(folder, src.stem + LATENT_SUFFIX), child_path(folder, src.stem + RECON_SUFFIX))
            )
    claim(
        [(src, plan) for src, plan in zip(inputs, plans, strict=True)], overwrite=overwrite,
        again="invert them into different -o directories",
    )  # fmt: skip
    return plans


# -- fine-tuned artifacts -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArtifactDest:
    """Where one fine-tuned edit is saved: ``path``, and ``library_name`` (``<preset>/<key>``) for library entries."""

    path: Path
    library_name: str | None = None


def plan_artifacts(
    preset: str,
    edits: Sequence[TextEdit],
    t0s: Sequence[int],
    *,
    output: str | os.PathLike[str] | None,
    library: bool,
    library_names: Sequence[str] | None = None,
    overwrite: bool = False,
) -> list[list[ArtifactDest]]:
    """Where each edit's artifact goes: the library entry ``<preset>/<key>`` and/or a file under ``output``.

    ``output`` ending in ``.safetensors`` is the file itself (one edit only); otherwise it is a folder that gets
    ``<preset>_<key>_t<t0>.safetensors`` (the ``_t{t0}`` part follows the official naming).

    Args:
        library_names: the library names to use instead of ``<preset>/<key>``.

    Raises:
        ConfigError: a ``.safetensors`` output with several edits, another suffix, or neither library nor output.
        OutputExistsError: an artifact exists and ``overwrite`` is false.
    """
    from dclip_cli.checkpoints.cache import library_path

    if output is None and not library:
        raise ConfigError(
            "The fine-tuned model would not be saved anywhere.", hint="Pass -o PATH or --library."
        )
    out = Path(output).expanduser() if output is not None else None
    if out is not None and out.suffix and out.suffix != ".safetensors" and not out.is_dir():
        raise ConfigError(
            f"-o {out} must be a folder or a .safetensors file.",
            hint="Fine-tuned models are saved as .safetensors.",
        )
    out_dir, out_file = split_output(
        out, len(edits), suffix=".safetensors", what="fine-tuned models are saved as .safetensors",
        verb="training",
    )  # fmt: skip
    names = list(library_names) if library_names is not None else [f"{preset}/{e.key}" for e in edits]
    dests: list[list[ArtifactDest]] = []
    for edit, t0, name in zip(edits, t0s, names, strict=True):
        paths: list[ArtifactDest] = []
        if library:
            paths.append(ArtifactDest(library_path(name), name))
        if out_file is not None:
            paths.append(ArtifactDest(out_file))
        elif out_dir is not None:
            paths.append(ArtifactDest(child_path(out_dir, f"{preset}_{edit.key}_t{t0}.safetensors")))
        dests.append(paths)
    claim(
        [(edit.key, [d.path for d in paths]) for edit, paths in zip(edits, dests, strict=True)],
        overwrite=overwrite, again="train them into different -o folders",
    )  # fmt: skip
    return dests
