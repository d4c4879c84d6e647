"""The editing applications: ``edit``, ``mix`` and ``translate`` as library functions.

This module turns the method pieces (inversion, generation, fine-tuning, noise mixing) into the three things users
do with DiffusionCLIP (reference sections 7 and 11):

* **edit**: invert an image with the base model, generate from the latent with an edit model (optionally blended
  with the base by ``strength``, the original's ``model_ratio``);
* **mix**: generate with several edit models whose noise predictions are combined by a timestep schedule;
* **translate**: project an image of an unseen domain (strokes, paintings) onto the preset's domain by rounds of
  noising to t0 and a 6-step DDIM with the base model, then optionally edit the result.

It also holds the pure pieces the CLI validates before anything is loaded: the ``--schedule`` and ``--sweep``
parsers, the resolution of ``--to`` into a (source, target) pair, and output naming.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dclip_cli.errors import (
    ConfigError,
    ImageError,
    InvalidScheduleError,
    OutputError,
    OutputExistsError,
    UnknownEditError,
)

if TYPE_CHECKING:
    from dclip_cli.presets.preset import Edit, Preset

#: file extensions picked up when a directory is given as input
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")

SCHEDULE_FORMAT_HINT = (
    'Write the schedule as THRESHOLD:W1,W2,...;...;0:W1,W2,... with thresholds descending to 0 and one weight per '
    'model, e.g. "300:0.5,0.5;0:0.3,0.7".'
)


# ---------------------------------------------------------------------------------------------------------------
# --schedule
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MixEntry:
    """One schedule entry: for timesteps t >= ``threshold`` (down to the next entry's threshold), mix the members'
    noise predictions with ``weights`` (raw, as written; :attr:`normalized` sums to 1)."""

    threshold: int
    weights: tuple[float, ...]

    @property
    def normalized(self) -> tuple[float, ...]:
        total = sum(self.weights)
        return tuple(w / total for w in self.weights)


def _entry_label(index: int, text: str) -> str:
    return f'Schedule entry {index} "{text}"'


def parse_mix_schedule(text: str, n_members: int, *, member_names: Sequence[str] | None = None) -> list[MixEntry]:
    """Parse a ``--schedule`` string such as ``"300:0.5,0.5;0:0.3,0.7"``.

    Entries are separated by ``;``; each is ``THRESHOLD:W1,W2,...``. An entry applies to timesteps t with
    t >= THRESHOLD that no earlier entry claimed, so thresholds must be strictly descending and end at 0
    (reference section 7.2; dclip validates what the original left to crash). Each entry needs one weight per
    member, every weight >= 0 and a positive sum; weights are normalised when used.

    Args:
        text: the schedule string.
        n_members: number of models being mixed.
        member_names: labels of the members, used in messages.

    Returns:
        The entries in order, thresholds strictly descending, the last one 0.

    Raises:
        InvalidScheduleError: naming the entry and the part of it that is wrong.
    """
    names = list(member_names) if member_names is not None else [f"model {i + 1}" for i in range(n_members)]
    members = f"{n_members} model{'s' if n_members != 1 else ''} ({', '.join(names)})" if names else "0 models"
    if n_members < 1:
        raise InvalidScheduleError("There is nothing to mix: no models were given.", hint="Pass --to or --model.")
    raw = text.strip()
    if not raw:
        raise InvalidScheduleError("The mixing schedule is empty.", hint=SCHEDULE_FORMAT_HINT)
    entries: list[MixEntry] = []
    parts = raw.split(";")
    for index, part in enumerate(parts, start=1):
        chunk = part.strip()
        if not chunk:
            where = "a trailing ';'" if index == len(parts) else "two ';' in a row" if index > 1 else "a leading ';'"
            raise InvalidScheduleError(f"Schedule entry {index} is empty ({where}).", hint=SCHEDULE_FORMAT_HINT)
        label = _entry_label(index, chunk)
        if chunk.count(":") != 1:
            problem = "has no ':'" if ":" not in chunk else "has more than one ':'"
            raise InvalidScheduleError(
                f"{label} {problem}; each entry is THRESHOLD:WEIGHTS.", hint=SCHEDULE_FORMAT_HINT
            )
        threshold_text, weights_text = (s.strip() for s in chunk.split(":"))
        if not re.fullmatch(r"[+-]?\d+", threshold_text):
            raise InvalidScheduleError(
                f'{label}: the threshold "{threshold_text}" is not a whole number.', hint=SCHEDULE_FORMAT_HINT
            )
        threshold = int(threshold_text)
        if not 0 <= threshold <= 999:
            raise InvalidScheduleError(
                f"{label}: the threshold {threshold} is outside 0..999 (the timesteps of the schedule).",
                hint=SCHEDULE_FORMAT_HINT,
            )
        if entries and threshold >= entries[-1].threshold:
            raise InvalidScheduleError(
                f"{label}: the threshold {threshold} is not below the previous one ({entries[-1].threshold}); "
                "thresholds must be strictly descending.",
                hint=SCHEDULE_FORMAT_HINT,
            )
        weight_parts = [w.strip() for w in weights_text.split(",")] if weights_text else []
        if len(weight_parts) != n_members:
            got = f"{len(weight_parts)} weight{'s' if len(weight_parts) != 1 else ''}"
            raise InvalidScheduleError(
                f"{label} gives {got} for {members}; give exactly one weight per model.",
                hint=SCHEDULE_FORMAT_HINT,
            )
        weights: list[float] = []
        for w_index, w_text in enumerate(weight_parts, start=1):
            try:
                w = float(w_text)
            except ValueError:
                raise InvalidScheduleError(
                    f'{label}: weight {w_index} "{w_text}" is not a number.', hint=SCHEDULE_FORMAT_HINT
                ) from None
            if not math.isfinite(w):
                raise InvalidScheduleError(
                    f'{label}: weight {w_index} "{w_text}" is not a finite number.', hint=SCHEDULE_FORMAT_HINT
                )
            if w < 0:
                raise InvalidScheduleError(
                    f"{label}: weight {w_index} ({w_text}) is negative; weights must be >= 0.",
                    hint=SCHEDULE_FORMAT_HINT,
                )
            weights.append(w)
        if sum(weights) <= 0:
            raise InvalidScheduleError(
                f"{label}: the weights sum to 0; at least one weight must be positive.", hint=SCHEDULE_FORMAT_HINT
            )
        entries.append(MixEntry(threshold, tuple(weights)))
    if entries[-1].threshold != 0:
        last = parts[-1].strip()
        raise InvalidScheduleError(
            f'{_entry_label(len(entries), last)} has threshold {entries[-1].threshold}, but the last entry must have '
            "threshold 0 so that every timestep down to 0 has weights.",
            hint=SCHEDULE_FORMAT_HINT,
        )
    return entries


def default_mix_schedule(n_members: int) -> list[MixEntry]:
    """Equal weights at every timestep: ``0:1,1,...``."""
    return [MixEntry(0, tuple(1.0 for _ in range(n_members)))]


def format_mix_schedule(entries: Sequence[MixEntry]) -> str:
    """The inverse of :func:`parse_mix_schedule` (``"300:0.5,0.5;0:0.3,0.7"``)."""
    return ";".join(f"{e.threshold}:" + ",".join(f"{w:g}" for w in e.weights) for e in entries)


# ---------------------------------------------------------------------------------------------------------------
# --sweep and --strength
# ---------------------------------------------------------------------------------------------------------------


def parse_sweep(text: str) -> list[float]:
    """Parse ``--sweep 0,0.25,0.5,0.75,1`` into strengths in [0, 1], in the given order.

    Raises:
        ConfigError: naming the value that is not a number, out of range or repeated.
    """
    hint = "Pass comma-separated strengths between 0 and 1, e.g. --sweep 0,0.25,0.5,0.75,1."
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or all(not p for p in parts):
        raise ConfigError("--sweep is empty.", hint=hint)
    values: list[float] = []
    for index, part in enumerate(parts, start=1):
        if not part:
            raise ConfigError(f"--sweep value {index} is empty (two commas in a row or a trailing comma).", hint=hint)
        try:
            value = float(part)
        except ValueError:
            raise ConfigError(f'--sweep value {index} "{part}" is not a number.', hint=hint) from None
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"--sweep value {index} ({part}) is outside 0..1.", hint=hint)
        if value in values:
            raise ConfigError(f"--sweep value {index} ({part}) is listed twice.", hint=hint)
        values.append(value)
    return values


def check_strength(strength: float) -> float:
    """Return ``strength`` if it lies in [0, 1], else raise :class:`ConfigError`."""
    if not math.isfinite(strength) or not 0.0 <= strength <= 1.0:
        raise ConfigError(
            f"--strength must be between 0 and 1, got {strength}.",
            hint="0 reproduces the base model's reconstruction, 1 is the full edit.",
        )
    return float(strength)


# ---------------------------------------------------------------------------------------------------------------
# --to: named edit or free text
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EditTarget:
    """What an edit is asked to do.

    Args:
        key: the preset's named edit key, or ``None`` for free text.
        src: source text of the CLIP direction.
        trg: target text.
        tag: the file-name tag (``smiling`` or a slug of the free text).
        edit: the preset's :class:`~dclip_cli.presets.preset.Edit` for a named edit.
    """

    key: str | None
    src: str
    trg: str
    tag: str
    edit: Edit | None = None

    @property
    def label(self) -> str:
        return self.key if self.key is not None else f'"{self.src}" -> "{self.trg}"'


def slugify(text: str, *, max_len: int = 48) -> str:
    """File-name tag of free text: lower case, runs of other characters become ``-`` (``"with curly hair"`` ->
    ``with-curly-hair``)."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if len(slug) > max_len:
        slug = slug[:max_len].rstrip("-")
    return slug or "edit"


def resolve_target(preset: Preset, to: str, src: str | None = None) -> EditTarget:
    """Resolve ``--to`` (and ``--src``) against a preset.

    ``to`` is a named edit key of the preset (``smiling``) or free text (``"face with curly hair"``), whose source
    text is ``src`` or the preset's ``source_text``. A single word that looks like a mistyped key (it contains
    ``_`` or is close to a key) is an error rather than silently becoming free text.

    Raises:
        UnknownEditError: ``to`` looks like a key the preset does not have.
        ConfigError: ``to`` is empty, or ``src`` was given with a named edit.
    """
    to = to.strip()
    if not to:
        raise ConfigError("--to is empty.", hint="Pass a named edit (see 'dclip presets show') or a target text.")
    if to in preset.edits:
        edit = preset.edits[to]
        if src is not None and src.strip() != edit.src:
            raise ConfigError(
                f"--src cannot be combined with the named edit {to!r}, which has its own source text "
                f"({edit.src!r}).",
                hint=f'Drop --src, or pass the target as free text: --to "{edit.trg}" --src "{src}".',
            )
        return EditTarget(key=to, src=edit.src, trg=edit.trg, tag=to, edit=edit)
    if not re.search(r"\s", to):
        close = difflib.get_close_matches(to, list(preset.edits), n=3, cutoff=0.75)
        if close or ("_" in to and preset.edits):
            suggestion = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownEditError(
                f"Preset {preset.name!r} has no edit named {to!r}.{suggestion}",
                hint=f"Run 'dclip presets show {preset.name}' for the named edits, or write free text with spaces, "
                'e.g. --to "face with curly hair".',
            )
    source = (src if src is not None else preset.source_text).strip()
    if not source:
        raise ConfigError("--src is empty.", hint="Pass the source text, e.g. --src face.")
    return EditTarget(key=None, src=source, trg=to, tag=slugify(to))


# ---------------------------------------------------------------------------------------------------------------
# inputs and outputs
# ---------------------------------------------------------------------------------------------------------------


def expand_inputs(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand directories into the image files directly inside them (sorted); files are kept as given.

    Raises:
        ImageError: a path does not exist, or a directory holds no images.
    """
    result: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ImageError(
                    f"The directory {path} contains no images.",
                    hint=f"Supported extensions: {', '.join(IMAGE_SUFFIXES)}.",
                )
            result.extend(found)
        elif path.exists():
            result.append(path)
        else:
            raise ImageError(f"The input {path} does not exist.", hint="Check the path.")
    seen: set[Path] = set()
    unique = []
    for p in result:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


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


def output_is_directory(output: str | os.PathLike[str]) -> bool:
    """Whether ``-o`` names a directory: it is one, ends with a separator, or has no file extension."""
    text = os.fspath(output)
    path = Path(text)
    return path.is_dir() or text.endswith(("/", os.sep)) or path.suffix == ""


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


def plan_outputs(
    inputs: Sequence[Path],
    tag: str,
    output: str | os.PathLike[str] | None = None,
    *,
    kind: str | None = None,
    compare: bool = False,
    intermediates: int = 0,
    overwrite: bool = False,
) -> list[OutputSet]:
    """Decide every output path before any work starts, and refuse collisions up front.

    Naming: ``<stem>.<tag>.png`` next to the input (or in the ``-o`` directory), with ``<stem>.<tag>.json`` as the
    sidecar, ``<stem>.<tag>.compare.png`` for ``--compare``, ``<stem>.<tag>.<kind>.png`` for a ``kind`` such as
    ``sweep``, and ``<stem>.<tag>.round01.png``... for translation intermediates. ``-o`` naming a ``.png`` file (one
    input only) sets the main image's path; the other files take its stem.

    Raises:
        ConfigError: ``-o`` is a file for several inputs or not a ``.png``; two inputs map to one output; an
            output would replace an input.
        OutputExistsError: an output exists and ``overwrite`` is false.
        OutputError: the output directory is not writable.
    """
    out_dir: Path | None = None
    out_file: Path | None = None
    if output is not None:
        if output_is_directory(output):
            out_dir = Path(output)
        else:
            out_file = Path(output)
            if out_file.suffix.lower() != ".png":
                raise ConfigError(
                    f"-o {out_file} does not end in .png; dclip writes PNG images.",
                    hint="Name the output file with .png, or pass a directory.",
                )
            if len(inputs) != 1:
                raise ConfigError(
                    f"-o {out_file} names one file but {len(inputs)} images were given.",
                    hint="Pass a directory with -o when editing several images.",
                )
    plans: list[OutputSet] = []
    owner: dict[Path, Path] = {}
    input_keys = {p.resolve() for p in inputs}
    for src in inputs:
        if out_file is not None:
            image = out_file
            base = out_file.with_suffix("")
        else:
            folder = out_dir if out_dir is not None else src.parent
            base = folder / f"{src.stem}.{tag}"
            image = base.with_name(f"{base.name}.{kind}.png") if kind else base.with_name(f"{base.name}.png")
        plan = OutputSet(
            image=image,
            sidecar=base.with_name(f"{base.name}.json"),
            compare=base.with_name(f"{base.name}.compare.png") if compare else None,
            intermediates=tuple(base.with_name(f"{base.name}.round{i:02d}.png") for i in range(1, intermediates + 1)),
        )
        for path in plan.all():
            key = path.resolve()
            if key in input_keys:
                raise ConfigError(
                    f"The output {path} would replace an input image.", hint="Choose another output with -o."
                )
            if key in owner:
                raise ConfigError(
                    f"{owner[key]} and {src} would both be written to {path}.",
                    hint="Give the inputs different names, or edit them in separate runs with different -o.",
                )
            owner[key] = src
        plans.append(plan)
    for directory in sorted({p.parent for plan in plans for p in plan.all()}):
        check_writable_dir(directory)
    if not overwrite:
        existing = [p for plan in plans for p in plan.all() if p.exists()]
        if existing:
            more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
            raise OutputExistsError(
                f"{existing[0]} already exists{more}.",
                hint="Pass --overwrite to replace it, or choose another output with -o.",
            )
    return plans
