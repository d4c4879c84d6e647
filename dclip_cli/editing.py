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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

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
    "Write the schedule as THRESHOLD:W1,W2,...;...;0:W1,W2,... with thresholds descending to 0 and one weight per "
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


def parse_mix_schedule(
    text: str, n_members: int, *, member_names: Sequence[str] | None = None
) -> list[MixEntry]:
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
    members = (
        f"{n_members} model{'s' if n_members != 1 else ''} ({', '.join(names)})" if names else "0 models"
    )
    if n_members < 1:
        raise InvalidScheduleError(
            "There is nothing to mix: no models were given.", hint="Pass --to or --model."
        )
    raw = text.strip()
    if not raw:
        raise InvalidScheduleError("The mixing schedule is empty.", hint=SCHEDULE_FORMAT_HINT)
    entries: list[MixEntry] = []
    parts = raw.split(";")
    for index, part in enumerate(parts, start=1):
        chunk = part.strip()
        if not chunk:
            where = (
                "a trailing ';'"
                if index == len(parts)
                else "two ';' in a row"
                if index > 1
                else "a leading ';'"
            )
            raise InvalidScheduleError(
                f"Schedule entry {index} is empty ({where}).", hint=SCHEDULE_FORMAT_HINT
            )
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
                f"{label}: the weights sum to 0; at least one weight must be positive.",
                hint=SCHEDULE_FORMAT_HINT,
            )
        entries.append(MixEntry(threshold, tuple(weights)))
    if entries[-1].threshold != 0:
        last = parts[-1].strip()
        raise InvalidScheduleError(
            f"{_entry_label(len(entries), last)} has threshold {entries[-1].threshold}, but the last entry must have "
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
            raise ConfigError(
                f"--sweep value {index} is empty (two commas in a row or a trailing comma).", hint=hint
            )
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
        raise ConfigError(
            "--to is empty.", hint="Pass a named edit (see 'dclip presets show') or a target text."
        )
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


def split_output(
    output: str | os.PathLike[str] | None, n_inputs: int, *, suffix: str, what: str, verb: str
) -> tuple[Path | None, Path | None]:
    """Interpret ``-o``: ``(directory, None)``, ``(None, file)`` for a single input, or ``(None, None)``.

    Args:
        output: the ``-o`` value, or ``None`` (outputs go next to the inputs).
        n_inputs: how many inputs the command got.
        suffix: the only file suffix ``-o`` may name (``.png``, ``.safetensors``).
        what: what the files are, for the message ("dclip writes PNG images").
        verb: what the command does to several images ("editing", "inverting").

    Raises:
        ConfigError: ``-o`` names a file with another suffix, or one file for several inputs.
    """
    if output is None:
        return None, None
    if output_is_directory(output):
        return Path(output), None
    out_file = Path(output)
    if out_file.suffix.lower() != suffix:
        raise ConfigError(
            f"-o {out_file} does not end in {suffix}; {what}.",
            hint=f"Name the output file with {suffix}, or pass a directory.",
        )
    if n_inputs != 1:
        raise ConfigError(
            f"-o {out_file} names one file but {n_inputs} images were given.",
            hint=f"Pass a directory with -o when {verb} several images.",
        )
    return None, out_file


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
    out_dir, out_file = split_output(
        output, len(inputs), suffix=".png", what="dclip writes PNG images", verb="editing"
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
            intermediates=tuple(
                base.with_name(f"{base.name}.round{i:02d}.png") for i in range(1, intermediates + 1)
            ),
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


# ---------------------------------------------------------------------------------------------------------------
# reporting (the library stays silent; the CLI renders these with Rich)
# ---------------------------------------------------------------------------------------------------------------

DownloadCallback = Callable[[int, "int | None"], None]


class Reporter(Protocol):
    """Receives what the pipelines have to say (the CLI renders it with Rich; :class:`NullReporter` drops it).

    Subclass it to inherit do-nothing defaults, or implement the four methods in any class.

    Phases passed to :meth:`progress` are ``"fine-tuning"``, ``"inversion"``, ``"reconstruction"``,
    ``"generation"`` and ``"translation"``; ``total`` is the number of model calls of the phase.
    """

    def info(self, message: str) -> None:
        """A status line (which domain, which edit model, what was written)."""
        return None

    def warn(self, message: str) -> None:
        """Something the user should know that did not stop the run."""
        return None

    def progress(self, phase: str, *, advance: int = 1, total: int | None = None, status: str = "") -> None:
        """``advance`` more units of ``phase`` were done (``total`` sets or updates the length)."""
        return None

    def download(self, name: str) -> DownloadCallback | None:
        """An ``on_progress(done, total)`` callback for downloading checkpoint ``name``, or ``None``."""
        return None


class NullReporter(Reporter):
    """A reporter that ignores everything (the library default)."""


# ---------------------------------------------------------------------------------------------------------------
# settings and loaded models
# ---------------------------------------------------------------------------------------------------------------

DEFAULT_CLIP_MODEL = "ViT-B/16"
ALL_METRICS = ("clip", "lpips", "identity", "psnr")
DEFAULT_BATCH_SIZE = 4
#: size the inputs are prepared at for domain detection (CLIP resizes to its own input size anyway)
DETECTION_SIZE = 224


def parse_metrics(text: str) -> tuple[str, ...]:
    """Parse ``--metrics`` (``all``, ``none`` or a comma list of ``clip,lpips,identity,psnr``)."""
    value = text.strip().lower()
    if value in ("", "all"):
        return ALL_METRICS
    if value == "none":
        return ()
    chosen = []
    for index, part in enumerate(p.strip() for p in value.split(",")):
        if part not in ALL_METRICS:
            raise ConfigError(
                f'--metrics item {index + 1} "{part}" is not a metric.',
                hint=f"Use all, none, or a comma list of {', '.join(ALL_METRICS)}.",
            )
        if part not in chosen:
            chosen.append(part)
    return tuple(chosen)


@dataclass
class LoadedModel:
    """A diffusion model together with where it came from (for messages and the sidecar).

    Args:
        model: the eps-model (:class:`~dclip_cli.models.DiffusionModel`).
        role: ``base`` or ``edit``.
        name: registry name, library name or file name.
        path: file it was loaded from (``None`` for a model fine-tuned and not saved).
        sha256: SHA-256 of that file.
        source: how it was obtained: ``preset``, ``model-file``, ``model-name``, ``library``, ``official`` or
            ``finetuned``.
        t0: return step it was fine-tuned for, when known.
        src_text: source text it was fine-tuned with, when known.
        trg_text: target text, when known.
    """

    model: Any
    role: str
    name: str
    path: Path | None
    sha256: str | None
    source: str
    t0: int | None = None
    src_text: str | None = None
    trg_text: str | None = None

    def record(self, role: str | None = None) -> dict[str, Any]:
        from dclip_cli.manifest import model_record

        extra: dict[str, Any] = {"source": self.source}
        if self.role != "base":
            extra.update({"t0": self.t0, "src_text": self.src_text, "trg_text": self.trg_text})
        return model_record(role or self.role, self.name, path=self.path, sha256=self.sha256, **extra)


_SOURCE_WORDS = {
    "model-file": "the file given with --model",
    "model-name": "the model named with --model",
    "library": "your edit library",
    "official": "the official DiffusionCLIP checkpoint",
    "finetuned": "a model fine-tuned just now",
}


def describe_source(m: LoadedModel) -> str:
    """One sentence saying which edit model is used and where it came from."""
    where = _SOURCE_WORDS.get(m.source, m.source)
    path = f" ({m.path})" if m.path is not None else ""
    t0 = f", t0 {m.t0}" if m.t0 is not None else ""
    return f"Edit model: {where}{path}{t0}."


@dataclass(frozen=True)
class SamplingSettings:
    """Resolved DDIM settings of a run.

    Args:
        t0: return step.
        n_inv_steps: points of the inversion sequence.
        n_gen_steps: points of the generation sequence.
        eta: DDIM η of generation.
        seed: seed of the η noise and of translation's q-sample noise.
    """

    t0: int
    n_inv_steps: int
    n_gen_steps: int
    eta: float = 0.0
    seed: int = 0

    def generator(self, device: Any, offset: int = 0) -> Any:
        import torch

        return torch.Generator(device=device).manual_seed(self.seed + offset)

    def generators(self, device: Any, x: Any) -> list[Any]:
        """One generator per image of ``x`` (B, 3, S, S), seeded with ``seed`` plus a hash of that image, so an
        image's noise does not depend on the batch it is in or its position there."""
        from dclip_cli.latents import tensor_sha256

        return [
            self.generator(device, offset=int(tensor_sha256(x[i : i + 1])[:8], 16)) for i in range(x.shape[0])
        ]


# ---------------------------------------------------------------------------------------------------------------
# session: registry, device, lazily loaded networks
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class InputImage:
    """One readable input, prepared at the model size: ``x0`` is (1, 3, S, S) in [-1, 1]."""

    path: Path
    x0: Any
    info: dict[str, Any]


class Session:
    """What one command run shares: the preset registry, the device, and networks loaded once.

    Args:
        device: ``auto``, ``cpu``, ``cuda``, ... (see :func:`dclip_cli.device.resolve_device`).
        clip_model: CLIP name or file for detection, fine-tuning and metrics.
        reporter: where messages and progress go.
        require_face: with a face-aligning preset, treat an input without a detectable face as unreadable
            (reported and skipped) instead of centre-cropping it with a warning.
        precision: UNet compute precision for inversion and generation: ``"fp32"`` (the original's numerics,
            bit for bit), ``"auto"``, ``"bf16"`` or ``"fp16"`` (see :func:`dclip_cli.precision.resolve_precision`).
        compile: run the UNets through ``torch.compile``.
    """

    #: edit models whose fast wrappers a session keeps (mixes use several at once)
    KEEP_EDIT_MODELS = 4

    def __init__(
        self,
        *,
        device: str | None = "auto",
        clip_model: str = DEFAULT_CLIP_MODEL,
        reporter: Reporter | None = None,
        require_face: bool = False,
        precision: str = "fp32",
        compile: bool = False,
    ) -> None:
        from dclip_cli.device import resolve_device
        from dclip_cli.presets.manager import get_registry

        self.device = resolve_device(device)
        self.clip_model = clip_model
        self.require_face = require_face
        from dclip_cli.precision import resolve_precision

        self.precision_spec = precision
        self.precision = resolve_precision(precision, self.device)  # autocast dtype, or None for float32
        self.compile = compile
        self._fast: dict[
            int, tuple[Any, Any]
        ] = {}  # id(model) -> (model, wrapper), least recently used first
        self.reporter: Reporter = reporter or NullReporter()
        self.registry = get_registry()
        self._clip: Any = None
        self._bases: dict[str, LoadedModel] = {}
        self._lpips: Any = None
        self._identity: dict[str, Any] = {}
        self.extra_models: list[dict[str, Any]] = []

    # -- speed ---------------------------------------------------------------------------------------------------

    def fast(self, model: Any) -> Any:
        """The eps-model to run for inference: ``model`` itself in float32 (the original's numerics), else a
        wrapper running it in the session's precision (autocast, channels_last, optionally compiled).

        Wrappers are kept for the base models and the few most recently used edit models, so that a session reused
        for many edits does not keep every edit model (and its low-precision weight copy) alive.
        """
        if self.precision is None and not self.compile:
            return model
        hit = self._fast.pop(id(model), None)
        if hit is None or hit[0] is not model:
            from dclip_cli.precision import optimize_model

            hit = (
                model,
                optimize_model(model, precision=self.precision, device=self.device, compile=self.compile),
            )
        self._fast[id(model)] = hit  # most recently used last
        bases = {id(b.model) for b in self._bases.values()}
        others = [key for key in self._fast if key not in bases]
        for key in others[: max(0, len(others) - self.KEEP_EDIT_MODELS)]:
            del self._fast[key]
        return hit[1]

    def announce_estimate(self, model: Any, x: Any, n_calls: int) -> None:
        """Before a long CPU run, time one UNet call on ``x`` (one batch) and say how long ``n_calls`` will take."""
        if self.device.type == "cuda" or n_calls <= 0:
            return
        from dclip_cli.precision import (
            describe_precision,
            estimate_seconds,
            format_seconds,
            should_print_estimate,
        )

        seconds = estimate_seconds(self.fast(model), x, n_calls)
        if should_print_estimate(self.device, seconds):
            self.reporter.info(
                f"Estimated time: {format_seconds(seconds)} for {n_calls} UNet calls "
                f"({describe_precision(self.precision, self.device)}); use a GPU or fewer --steps to go faster."
            )

    def precision_name(self) -> str:
        """``fp32``, ``bf16`` or ``fp16``: what the UNets of this session compute in (for the sidecars)."""
        from dclip_cli.precision import precision_name

        return precision_name(self.precision)

    def latent_key(self, sha256: str) -> str:
        """The model part of latent-cache keys: latents made in low precision are kept apart from float32 ones."""
        if self.precision is None:
            return sha256
        from dclip_cli.precision import precision_name

        return f"{sha256}+{precision_name(self.precision)}"

    def training_precision(self) -> str:
        """The ``--precision`` value for on-the-fly fine-tuning (float16 has no place in training)."""
        return "auto" if self.precision_spec == "fp16" else self.precision_spec

    # -- files ---------------------------------------------------------------------------------------------------

    def fetch(self, name: str) -> Path:
        """Fetch a registry checkpoint (downloading with progress when needed)."""
        from dclip_cli.checkpoints import download

        return Path(download.fetch(name, on_progress=self.reporter.download(name)))

    def known_sha256(self, path: Path) -> str:
        """SHA-256 of a checkpoint: from the cache's record when there is one, else hashed (memoised)."""
        from dclip_cli.checkpoints import cache
        from dclip_cli.manifest import file_sha256

        meta = cache.read_meta(path)
        if meta is not None and meta.sha256 and meta.size == path.stat().st_size:
            return meta.sha256
        return file_sha256(path)

    # -- presets ------------------------------------------------------------------------------------------------

    def preset(self, name: str) -> Preset:
        return self.registry.preset(name)

    def presets(self) -> list[Preset]:
        return [
            self.registry.presets[n]
            for n in sorted(self.registry.presets)
            if n not in self.registry.duplicates
        ]

    # -- networks -----------------------------------------------------------------------------------------------

    def clip(self) -> Any:
        """The CLIP model (loaded on first use)."""
        if self._clip is None:
            from dclip_cli.losses.clip import load_clip

            self._clip = load_clip(self.clip_model, device=self.device)
            self.reporter.info(f"Loaded CLIP {self.clip_model}.")
        return self._clip

    def clip_record(self) -> dict[str, Any]:
        from dclip_cli.manifest import model_record

        path = Path(self.clip_model)
        if path.is_file():
            return model_record("clip", path.name, path=path)
        try:
            from dclip_cli.checkpoints import cache
            from dclip_cli.checkpoints.store import get_spec
            from dclip_cli.losses.clip import clip_registry_name

            spec = get_spec(clip_registry_name(self.clip_model))
            cached = cache.checkpoint_path(spec)
            if cached.is_file():
                return model_record("clip", spec.name, path=cached, sha256=self.known_sha256(cached))
            return model_record("clip", spec.name, sha256=spec.sha256)
        except Exception:  # the record is informative only
            return model_record("clip", self.clip_model)

    def base(self, preset: Preset) -> LoadedModel:
        """The preset's base diffusion model (fetched and loaded once per session)."""
        loaded = self._bases.get(preset.name)
        if loaded is None:
            from dclip_cli.models import load_diffusion_model

            path = self.fetch(preset.checkpoint)
            sha = self.known_sha256(path)
            model = load_diffusion_model(
                path, arch=preset.arch, config=preset.arch_config, device=self.device
            )
            model.sha256 = sha  # lets artifacts check that an edit model belongs to this base
            model.requires_grad_(False)
            loaded = LoadedModel(model, "base", preset.checkpoint, path, sha, "preset")
            self._bases[preset.name] = loaded
        return loaded

    def lpips(self) -> Any:
        if self._lpips is None:
            from dclip_cli.losses.lpips import LPIPSLoss, trunk_weights_path
            from dclip_cli.manifest import model_record

            # torchvision's own cached copy if there is one, else dclip's store (progress, offline, mirrors)
            trunk = trunk_weights_path("alex")
            if not trunk.is_file():
                trunk = self.fetch("lpips-alex")
            self._lpips = LPIPSLoss("alex", trunk_path=trunk).to(self.device)
            self.extra_models.append(model_record("lpips", "lpips-alex", path=trunk))
        return self._lpips

    def identity(self, preset: Preset) -> Any | None:
        """The preset's identity network (faces), or ``None`` when the preset has none."""
        name = preset.identity_model
        if not name:
            return None
        if name not in self._identity:
            ident = self.registry.identity_models.get(name)
            if ident is None:
                raise ConfigError(
                    f"Preset {preset.name!r} names the identity model {name!r}, which no plugin registers."
                )
            weights = self.fetch(ident.checkpoint)
            self._identity[name] = ident.build(weights, self.device)
            from dclip_cli.manifest import model_record

            self.extra_models.append(model_record("identity", ident.checkpoint, path=weights))
        return self._identity[name]

    def metric_models(self, preset: Preset | None, wanted: Sequence[str]) -> Any:
        """Load the networks for the ``wanted`` metrics; one that cannot be loaded is skipped with a warning."""
        from dclip_cli.errors import DclipError
        from dclip_cli.metrics import MetricModels

        models = MetricModels()
        if "clip" in wanted:
            try:
                models.clip = self.clip()
            except DclipError as exc:
                self.reporter.warn(f"CLIP metrics skipped: {exc.message}")
        if "lpips" in wanted:
            try:
                lp = self.lpips()
                models.lpips = lp.per_sample
            except DclipError as exc:
                self.reporter.warn(f"LPIPS skipped: {exc.message}")
        if "identity" in wanted and preset is not None:
            try:
                models.identity = self.identity(preset)
            except DclipError as exc:
                self.reporter.warn(f"Identity similarity skipped: {exc.message}")
        return models

    # -- inputs -------------------------------------------------------------------------------------------------

    def load_inputs(
        self, paths: Sequence[Path], size: int, preset: Preset | None = None, *, quiet: bool = False
    ) -> tuple[list[InputImage], list[tuple[Path, str]]]:
        """Load and prepare every input; unreadable ones are returned as ``(path, reason)`` instead.

        ``quiet`` drops preprocessing warnings (used for the detection probe, which is not the model input).
        """
        from dclip_cli import images

        aligner = None
        if preset is not None and preset.preprocess == "align" and preset.aligner:
            aligner = self.registry.aligners.get(preset.aligner)
            if aligner is None:
                self.reporter.warn(
                    f"Preset {preset.name!r} asks for the aligner {preset.aligner!r}, which no plugin registers; "
                    "using a centre crop."
                )
        ok: list[InputImage] = []
        failed: list[tuple[Path, str]] = []
        for path in paths:
            try:
                x0, info = images.load_and_prepare(
                    path, size, aligner=aligner, require_face=self.require_face and not quiet
                )
            except ImageError as exc:
                failed.append((path, exc.message))
                continue
            for w in [] if quiet else info.get("warnings", []):
                self.reporter.warn(w)
            ok.append(InputImage(path, x0, info))
        return ok, failed

    def choose_preset(
        self, domain: str | None, inputs: Sequence[InputImage], label: str
    ) -> tuple[Preset, Any]:
        """``--domain`` when given, else CLIP zero-shot detection over the installed presets' domain prompts."""
        from dclip_cli.detect import Detection, detect_domain

        if domain is not None:
            preset = self.preset(domain)
            return preset, Detection(preset.name, 1.0, {preset.name: 1.0}, method="requested")
        import torch

        presets = self.presets()
        clip = self.clip() if len(presets) > 1 else None
        x = torch.cat([inp.x0 for inp in inputs]).to(self.device) if inputs else None
        if x is None:
            raise ImageError("No readable input image was left to detect the domain from.")
        detection = detect_domain(clip, x, presets, label=label)
        self.reporter.info(f"Using {detection.describe()}.")
        return self.preset(detection.preset), detection


# ---------------------------------------------------------------------------------------------------------------
# edit-model resolution: --model -> library -> official checkpoint -> fine-tune now
# ---------------------------------------------------------------------------------------------------------------

#: samples drawn from the base model, beside the input images, by the quick on-the-fly fine-tuning
QUICK_SAMPLES = 8
#: at most this many input images join the quick on-the-fly fine-tuning
QUICK_MAX_IMAGES = 8

_MODEL_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")


def _is_plain_name(name: str) -> bool:
    """Whether ``name`` can be a library or registry name (``face/pixar``), not a path."""
    return (
        re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?", name) is not None
        and ".." not in name
    )


def _artifact_model(
    session: Session, path: Path, base: LoadedModel, *, name: str, source: str, sha256: str | None = None
) -> LoadedModel:
    from dclip_cli.artifacts import load_artifact

    model = load_artifact(path, base.model, base_sha256=base.sha256)
    model.requires_grad_(False)
    meta = getattr(getattr(model, "artifact", None), "metadata", {}) or {}
    t0 = meta.get("t0")
    return LoadedModel(
        model,
        "edit",
        name,
        path,
        sha256 or session.known_sha256(path),
        source,
        t0=int(t0) if t0 is not None else None,
        src_text=meta.get("src_text"),
        trg_text=meta.get("trg_text"),
    )


def find_library_match(
    preset: Preset, src_text: str, trg_text: str, *, base_sha256: str | None, t0: int
) -> Path | None:
    """The newest artifact in the edit library made for this preset's base with these texts and this t0.

    An artifact matches when its metadata records the same source and target text and the same t0, and was made
    from the same base checkpoint (its SHA-256 when recorded, else the preset's checkpoint name).
    """
    from dclip_cli.artifacts import read_artifact
    from dclip_cli.checkpoints import cache
    from dclip_cli.errors import DclipError

    matches: list[tuple[float, Path]] = []
    for name, path in cache.list_library():
        if not name.startswith(f"{preset.name}/"):
            continue
        try:
            info = read_artifact(path)
        except DclipError:
            continue
        meta = info.metadata
        if meta.get("src_text") != src_text or meta.get("trg_text") != trg_text:
            continue
        if meta.get("t0") is None or int(meta["t0"]) != t0:
            continue
        art_sha = meta.get("base_sha256")
        if art_sha and base_sha256:
            if art_sha != base_sha256:
                continue
        elif meta.get("base_checkpoint") not in (None, preset.checkpoint):
            continue
        matches.append((path.stat().st_mtime, path))
    return max(matches)[1] if matches else None


def _library_output(preset: Preset, key: str, t0: int) -> tuple[Path | None, bool]:
    """Where on-the-fly fine-tuning stores its artifact: ``<preset>/<key>`` in the library, or, when that name is
    taken by an artifact with other settings, a free ``<preset>/<key>_t<t0>[-n].safetensors`` beside it."""
    from dclip_cli.checkpoints import cache

    default = cache.library_path(f"{preset.name}/{key}")
    if not default.exists():
        return None, True
    candidate = default.with_name(f"{key}_t{t0}.safetensors")
    n = 2
    while candidate.exists():
        candidate = default.with_name(f"{key}_t{t0}-{n}.safetensors")
        n += 1
    return candidate, False


def resolve_edit_model(
    session: Session,
    preset: Preset,
    target: EditTarget,
    *,
    t0: int,
    n_inv_steps: int,
    n_gen_steps: int,
    model: str | None = None,
    allow_finetune: bool = True,
    finetune_images: Sequence[Path] = (),
    finetune_samples: int = QUICK_SAMPLES,
    seed: int = 0,
) -> LoadedModel:
    """Find or make the model that performs ``target`` on ``preset``'s base, in this order:

    1. ``model``: a file (dclip ``.safetensors`` artifact or official ``.pth``), a library name
       (``face/pixar``) or a registry name of a fine-tuned checkpoint;
    2. an artifact in the user's edit library with the same texts, t0 and base (:func:`find_library_match`);
    3. for a named edit with an official fine-tuned checkpoint: that checkpoint (downloaded);
    4. fine-tune now with the preset's recipe, quickly (one epoch on ``finetune_images`` plus
       ``finetune_samples`` samples of the base model), and store the result in the library, so the next edit with
       the same text is only inversion and generation.

    The path taken is reported through ``session.reporter`` and recorded in the result's ``source``.

    Raises:
        CheckpointError: ``model`` names no file, library entry or registry checkpoint; or an artifact does not fit
            the base (``IncompatibleModelError``).
        ConfigError: fine-tuning would be needed but ``allow_finetune`` is false.
    """
    from dclip_cli.errors import CheckpointError, DclipError, UnknownCheckpointError

    base = session.base(preset)
    reporter = session.reporter
    # 1. --model FILE|NAME
    if model is not None:
        path = Path(model).expanduser()
        if path.is_file():
            loaded = _artifact_model(session, path, base, name=path.name, source="model-file")
        elif path.is_dir():
            raise CheckpointError(f"--model {model} is a directory, not a model file.", hint="Pass the file.")
        elif model.lower().endswith(_MODEL_FILE_SUFFIXES) or model.startswith(("./", "../", "/", "~")):
            raise CheckpointError(
                f"The model file {model} does not exist.",
                hint="Check the path, or pass a library name such as face/pixar ('dclip models list').",
            )
        else:
            from dclip_cli.checkpoints import cache

            lib_name = model if "/" in model else f"{preset.name}/{model}"
            lib = cache.find_library_file(lib_name) if _is_plain_name(lib_name) else None
            if lib is not None:
                loaded = _artifact_model(session, lib, base, name=lib_name, source="model-name")
            else:
                try:
                    fetched = session.fetch(model)
                except UnknownCheckpointError as exc:
                    raise UnknownCheckpointError(
                        f"--model {model!r} is neither a file, an edit in your library, nor a registered checkpoint.",
                        hint="Run 'dclip models list' to see the library and the registry.",
                    ) from exc
                loaded = _artifact_model(session, fetched, base, name=model, source="model-name")
        reporter.info(describe_source(loaded))
        return loaded

    # 2. the edit library
    match = find_library_match(preset, target.src, target.trg, base_sha256=base.sha256, t0=t0)
    if match is not None:
        from dclip_cli.checkpoints import cache

        name = f"{preset.name}/{match.stem}"
        loaded = _artifact_model(session, match, base, name=name, source="library")
        reporter.info(describe_source(loaded))
        return loaded

    # 3. the official fine-tuned checkpoint of a named edit
    if target.edit is not None and target.edit.checkpoint:
        try:
            fetched = session.fetch(target.edit.checkpoint)
            loaded = _artifact_model(session, fetched, base, name=target.edit.checkpoint, source="official")
            if loaded.t0 is None:
                loaded.t0 = target.edit.t0
            loaded.src_text, loaded.trg_text = target.src, target.trg
            reporter.info(describe_source(loaded))
            return loaded
        except (CheckpointError, OSError) as exc:
            detail = exc.message if isinstance(exc, DclipError) else str(exc)
            if not allow_finetune:
                raise
            reporter.warn(
                f"The official model for {target.key!r} is not available ({detail}); fine-tuning instead."
            )

    # 4. fine-tune now and store in the library
    if not allow_finetune:
        raise ConfigError(
            f"No fine-tuned model for {target.label} on preset {preset.name!r} was found, and fine-tuning is "
            "switched off.",
            hint="Drop --no-finetune to fine-tune one now, run 'dclip finetune', or pass --model.",
        )
    return _finetune_now(
        session,
        preset,
        target,
        base,
        t0=t0,
        n_inv_steps=n_inv_steps,
        n_gen_steps=n_gen_steps,
        images=finetune_images,
        n_samples=finetune_samples,
        seed=seed,
    )


def _finetune_now(
    session: Session,
    preset: Preset,
    target: EditTarget,
    base: LoadedModel,
    *,
    t0: int,
    n_inv_steps: int,
    n_gen_steps: int,
    images: Sequence[Path],
    n_samples: int,
    seed: int,
) -> LoadedModel:
    """Path 4 of :func:`resolve_edit_model`, through :func:`dclip_cli.finetune.run_finetune`."""
    from dclip_cli.finetune import resolve_pairs, run_finetune
    from dclip_cli.losses.clip import DirectionalCLIPLoss

    reporter = session.reporter
    if target.key is not None:
        pair = resolve_pairs(preset, edits=[target.key])[0]
    else:
        pair = resolve_pairs(preset, texts=[target.trg], src_text=target.src)[0]
    output, to_library = _library_output(preset, pair.key, t0)
    images = list(images)[:QUICK_MAX_IMAGES]
    n_images = len(images) + n_samples
    reporter.info(
        f"No fine-tuned model for {target.label} yet: fine-tuning one now on {n_images} image(s) "
        f"(t0 {t0}, 1 epoch); it is saved to your edit library for next time."
    )
    totals: dict[str, int] = {}

    def on_event(event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind == "warning":
            reporter.warn(str(event.get("message")))
        elif kind == "status":
            reporter.info(str(event.get("message")))
        elif kind == "step":
            total = int(event.get("epochs", 1)) * int(event.get("batches", 1)) * int(event.get("steps", 1))
            losses = event.get("losses") or {}
            status = f"loss {losses['total']:.4f}" if "total" in losses else ""
            first = "fine-tuning" not in totals
            totals["fine-tuning"] = total
            reporter.progress("fine-tuning", total=total if first else None, status=status)
        elif kind == "progress":
            phase = f"fine-tuning: {event.get('phase')}"
            done, last = int(event.get("done", 0)), totals.get(phase, 0)
            totals[phase] = done
            if done > last:
                reporter.progress(phase, advance=done - last, total=event.get("total"))
        elif kind == "download":
            cb = reporter.download(str(event.get("name")))
            if cb is not None:
                cb(int(event.get("done", 0)), event.get("total"))

    result = run_finetune(
        preset,
        edits=[target.key] if target.key is not None else (),
        texts=[target.trg] if target.key is None else (),
        src_text=target.src if target.key is None else None,
        images=list(images) if images else None,
        n_samples=n_samples,
        overrides={
            "t0": t0,
            "n_inv_steps": n_inv_steps,
            "n_gen_steps": n_gen_steps,
            "epochs": 1,
            "seed": seed,
            "precision": session.training_precision(),
        },
        base_model=base.model,
        base_checkpoint=base.name,
        base_sha256=base.sha256,
        clip_model=session.clip_model,
        clip_loss=DirectionalCLIPLoss(session.clip()),
        device=session.device,
        output=output,
        library=to_library,
        n_preview=0,
        return_models=True,
        callback=on_event,
    )
    pair_result = result.pairs[0]
    path = pair_result.artifacts[0]
    tuned = pair_result.model
    if tuned is None:  # pragma: no cover - return_models=True keeps it
        from dclip_cli.artifacts import load_artifact

        tuned = load_artifact(path, base.model, base_sha256=base.sha256)
    tuned.requires_grad_(False)
    tuned.eval()
    loaded = LoadedModel(
        tuned,
        "edit",
        f"{preset.name}/{path.stem}",
        path,
        session.known_sha256(path),
        "finetuned",
        t0=pair_result.config.t0,
        src_text=pair.src_text,
        trg_text=pair.trg_text,
    )
    reporter.info(f"Fine-tuned in {pair_result.seconds:.1f} s and saved to {path}.")
    return loaded


# ---------------------------------------------------------------------------------------------------------------
# the pipelines
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ImageResult:
    """What one input produced.

    Args:
        input: the input file.
        outputs: the files written.
        metrics: metric values of the main output (see :mod:`dclip_cli.metrics`).
        manifest: the sidecar document.
    """

    input: Path
    outputs: OutputSet
    metrics: dict[str, float]
    manifest: dict[str, Any]


@dataclass
class RunReport:
    """The outcome of :func:`edit_images`, :func:`mix_images` or :func:`translate_images`.

    Args:
        results: one entry per input that was processed.
        failed: ``(input, reason)`` for each input that could not be read.
        preset: the preset (domain) used.
        detection: how the domain was chosen.
        models: the diffusion models used (base first).
    """

    results: list[ImageResult]
    failed: list[tuple[Path, str]]
    preset: str
    detection: Any
    models: list[LoadedModel]

    @property
    def ok(self) -> bool:
        return not self.failed


def _batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(
            f"--batch-size must be a positive integer, got {batch_size!r}.", hint="Use --batch-size 1."
        )
    return batch_size


def _prepare_run(
    session: Session,
    paths: Sequence[str | os.PathLike[str]],
    domain: str | None,
) -> tuple[Preset, Any, list[InputImage], list[tuple[Path, str]]]:
    """Expand the inputs, pick the preset (``--domain`` or detection) and load the inputs at its size.

    Unreadable inputs are reported and returned in the second list; if none is readable, the first problem is
    raised.
    """
    inputs = expand_inputs(paths)
    reporter = session.reporter
    if domain is not None:
        preset = session.preset(domain)
        detection = None
        ok, failed = session.load_inputs(inputs, preset.image_size, preset)
    else:
        probe, failed = session.load_inputs(inputs, DETECTION_SIZE, quiet=True)
        _raise_if_none_readable(probe, failed)
        label = str(inputs[0]) if len(inputs) == 1 else f"{len(probe)} images"
        preset, detection = session.choose_preset(None, probe, label)
        ok, more = session.load_inputs([p.path for p in probe], preset.image_size, preset)
        failed.extend(more)
    for path, reason in failed:
        reporter.warn(f"Skipping {path}: {reason}")
    _raise_if_none_readable(ok, failed)
    return preset, detection, ok, failed


def _raise_if_none_readable(ok: Sequence[InputImage], failed: Sequence[tuple[Path, str]]) -> None:
    if ok:
        return
    if len(failed) == 1:
        path, reason = failed[0]
        raise ImageError(reason, hint="Pass a PNG, JPEG or WebP image.")
    raise ImageError(
        f"None of the {len(failed)} inputs could be read.", hint="Pass PNG, JPEG or WebP images."
    )


def _settings_for(
    preset: Preset,
    *,
    t0: int | None,
    n_inv_steps: int | None,
    n_gen_steps: int | None,
    eta: float,
    seed: int,
) -> SamplingSettings:
    from dclip_cli.diffusion.schedule import validate_t0

    settings = SamplingSettings(
        t0=t0 if t0 is not None else preset.t0,
        n_inv_steps=n_inv_steps if n_inv_steps is not None else preset.n_inv_steps,
        n_gen_steps=n_gen_steps if n_gen_steps is not None else preset.n_gen_steps,
        eta=float(eta),
        seed=int(seed),
    )
    validate_t0(settings.t0, settings.n_inv_steps)
    validate_t0(settings.t0, settings.n_gen_steps)
    if not math.isfinite(settings.eta) or not 0 <= settings.eta <= 1:
        raise ConfigError(
            f"--eta must be between 0 and 1, got {eta}.",
            hint="Use --eta 0 for deterministic DDIM (at most 1).",
        )
    return settings


def _read_latent(path: Path, n_inputs: int) -> tuple[Any, dict[str, Any]]:
    from dclip_cli.latents import load_latent

    if n_inputs != 1:
        raise ConfigError(
            f"--latent gives the inversion of one image, but {n_inputs} images were given.",
            hint="Pass the one image the latent was inverted from.",
        )
    x_lat, meta = load_latent(path)
    if x_lat.dim() == 3:
        x_lat = x_lat.unsqueeze(0)
    return x_lat, dict(meta or {})


def _check_latent(
    path: Path,
    x_lat: Any,
    meta: dict[str, Any],
    base: LoadedModel,
    settings: SamplingSettings,
    inp: InputImage,
    preset: Preset,
    reporter: Reporter,
) -> None:
    """Refuse a ``--latent`` made with another model, t0, step count or image size; warn about another image."""
    from dclip_cli.latents import check_latent

    check_latent(meta, path=path, model_sha256=base.sha256, t0=settings.t0, steps=settings.n_inv_steps)
    if tuple(x_lat.shape[-3:]) != tuple(inp.x0.shape[-3:]):
        raise ConfigError(
            f"The latent {path} has shape {tuple(x_lat.shape)}, which does not fit the preset's "
            f"{preset.image_size}x{preset.image_size} images.",
            hint=f"Invert the image with 'dclip invert --domain {preset.name}'.",
        )
    image_sha = meta.get("image_sha256")
    if image_sha and image_sha != inp.info.get("image_sha256"):
        reporter.warn(f"The latent {path} was inverted from another image than {inp.path}.")


def _outputs_doc(plan: OutputSet) -> dict[str, Any]:
    """The ``outputs`` section of a sidecar: absolute paths."""
    doc: dict[str, Any] = {
        "image": str(plan.image.resolve()),
        "compare": str(plan.compare.resolve()) if plan.compare is not None else None,
        "sidecar": str(plan.sidecar.resolve()),
    }
    if plan.intermediates:
        doc["intermediates"] = [str(p.resolve()) for p in plan.intermediates]
    return doc


def _phase_callback(reporter: Reporter, phase: str, total: int) -> Callable[[dict[str, Any]], None]:
    state = {"first": True}

    def callback(info: dict[str, Any]) -> None:
        first = state["first"]
        state["first"] = False
        reporter.progress(phase, total=total if first else None, status=f"t = {info.get('t')}")

    return callback


def _clean(paths: Sequence[Path]) -> None:
    import contextlib

    for p in paths:
        with contextlib.suppress(OSError):
            p.unlink()


def _invert_and_reconstruct(
    session: Session,
    base: LoadedModel,
    x0: Any,
    settings: SamplingSettings,
    *,
    need_rec: bool,
    inv_total: int,
    rec_total: int,
    latent: Any = None,
    use_cache: bool = True,
) -> tuple[Any, Any]:
    """DDIM inversion with the base model (always the base model, η = 0; reference sections 5 and 7.1) and,
    when ``need_rec``, the base model's reconstruction generated with the run's settings.

    Inversions are kept in the content-keyed latent cache (image content, base SHA-256, t0, inversion steps;
    FIX 12); the cached reconstruction is reused when it is the same computation (same step count, η = 0).

    Returns:
        ``(x_lat, x_rec)``, both (B, 3, S, S) on the session's device; ``x_rec`` is ``None`` unless ``need_rec``.
    """
    import torch

    from dclip_cli.diffusion.ddim import invert

    reporter = session.reporter
    n = x0.shape[0]
    if latent is not None:
        x_lat = latent.to(session.device)
        x_rec = (
            _generate(session, session.fast(base.model), x_lat, settings, "reconstruction", rec_total)
            if need_rec
            else None
        )
        return x_lat, x_rec
    same = settings.n_gen_steps == settings.n_inv_steps and settings.eta == 0
    cache = None
    lat: list[Any] = [None] * n
    rec: list[Any] = [None] * n
    if use_cache and base.sha256:
        from dclip_cli.checkpoints.cache import cache_dir
        from dclip_cli.latents import LatentCache

        cache = LatentCache(cache_dir() / "latents")
        for i in range(n):
            hit = cache.get_latent(
                x0[i : i + 1].detach().cpu(),
                session.latent_key(base.sha256),
                settings.t0,
                settings.n_inv_steps,
            )
            if hit is not None:
                lat[i] = hit[0].to(session.device)
                rec[i] = hit[1].to(session.device) if same and hit[1] is not None else None
    misses = [i for i in range(n) if lat[i] is None]
    had_rec = [r is not None for r in rec]
    if misses:
        x_miss = invert(
            session.fast(base.model),
            x0[misses],
            t0=settings.t0,
            n_steps=settings.n_inv_steps,
            callback=_phase_callback(reporter, "inversion", inv_total),
        )
        for j, i in enumerate(misses):
            lat[i] = x_miss[j : j + 1]
    else:
        reporter.progress("inversion", advance=settings.n_inv_steps - 1, total=inv_total, status="cached")
    x_lat = torch.cat(lat)
    x_rec = None
    if need_rec:
        if all(r is not None for r in rec):
            x_rec = torch.cat(rec)
            reporter.progress(
                "reconstruction", advance=settings.n_gen_steps, total=rec_total, status="cached"
            )
        else:
            x_rec = _generate(session, session.fast(base.model), x_lat, settings, "reconstruction", rec_total)
    if cache is not None:
        # every new latent is stored; its reconstruction too when it is the same computation (N steps, η = 0)
        keep_rec = x_rec is not None and same
        for i in range(n):
            if i in misses or (keep_rec and not had_rec[i]):
                cache.put(
                    x0[i : i + 1].detach().cpu(), session.latent_key(str(base.sha256)), settings.t0,
                    settings.n_inv_steps, x_lat[i : i + 1],
                    x_rec[i : i + 1] if keep_rec and x_rec is not None else None,
                )  # fmt: skip
    return x_lat, x_rec


def _generate(
    session: Session, model: Any, x_lat: Any, settings: SamplingSettings, phase: str, total: int
) -> Any:
    """DDIM generation from ``x_lat``; η noise from per-image generators seeded with ``settings.seed`` and the
    latent's content at every call, so the base reconstruction and a strength-0 edit are the same computation and
    no result depends on the batch size."""
    import torch

    from dclip_cli.diffusion.ddim import generate

    generator = settings.generators(session.device, x_lat) if settings.eta > 0 else None
    with torch.no_grad():
        return generate(
            model,
            x_lat,
            t0=settings.t0,
            n_steps=settings.n_gen_steps,
            eta=settings.eta,
            generator=generator,
            callback=_phase_callback(session.reporter, phase, total),
        )


def _strength_label(strength: float) -> str:
    return f"strength {strength:g}"


def edit_images(
    paths: Sequence[str | os.PathLike[str]],
    *,
    to: str,
    src: str | None = None,
    domain: str | None = None,
    model: str | None = None,
    strength: float = 1.0,
    sweep: Sequence[float] | None = None,
    t0: int | None = None,
    n_inv_steps: int | None = None,
    n_gen_steps: int | None = None,
    eta: float = 0.0,
    seed: int = 0,
    latent: str | os.PathLike[str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    compare: bool = False,
    output: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    metrics: Sequence[str] = ALL_METRICS,
    allow_finetune: bool = True,
    finetune_samples: int = QUICK_SAMPLES,
    device: str | None = "auto",
    clip_model: str = DEFAULT_CLIP_MODEL,
    reporter: Reporter | None = None,
    session: Session | None = None,
    precision: str = "fp32",
    compile: bool = False,
    require_face: bool = False,
) -> RunReport:
    """Edit images with text: invert with the base model, generate with the edit model (reference 11.1).

    Args:
        paths: image files and/or directories of images.
        to: a named edit of the preset (``smiling``) or free target text.
        src: source text for free text (default: the preset's ``source_text``).
        domain: preset name; detected with CLIP zero-shot when ``None``.
        model: edit model file or name (skips the library, official checkpoint and fine-tuning).
        strength: r in ε = r·ε_edit + (1 - r)·ε_base (the original's ``model_ratio``): 0 gives the base model's
            reconstruction, 1 the full edit.
        sweep: several strengths; writes one contact sheet per input instead of the edited image.
        t0: return step (default: the edit model's, the named edit's, or the preset's).
        n_inv_steps: inversion sequence points (default: the preset's).
        n_gen_steps: generation sequence points (default: the preset's).
        eta: DDIM η of generation.
        seed: seed of the η noise (and of on-the-fly fine-tuning's samples).
        latent: a latent file from ``dclip invert`` (one input only), skipping inversion.
        batch_size: images per batch.
        compare: also write ``input | reconstruction | edit`` side by side.
        output: output file (one input) or directory; default: next to each input.
        overwrite: replace existing outputs.
        metrics: which metrics to compute (``clip``, ``lpips``, ``identity``, ``psnr``).
        allow_finetune: fine-tune a model now when none is found (else raise).
        finetune_samples: base-model samples added to the inputs for on-the-fly fine-tuning.
        device: compute device.
        clip_model: CLIP name or file.
        reporter: receives messages and progress.
        session: reuse a :class:`Session` (its device, CLIP and reporter win).
        require_face: skip (and report) inputs in which the preset's face aligner finds no face, instead of
            centre-cropping them.
        precision: UNet compute precision (``fp32``, ``auto``, ``bf16``, ``fp16``); see :class:`Session`.
        compile: ``torch.compile`` the UNets.

    Returns:
        A :class:`RunReport`; ``report.failed`` lists unreadable inputs (the others were edited).
    """
    import time

    import torch

    from dclip_cli import images
    from dclip_cli.diffusion.mixing import blend
    from dclip_cli.manifest import Timings, build_manifest, input_record
    from dclip_cli.metrics import compute_metrics

    # 1. everything that can be checked without a model
    check_strength(strength)
    strengths = list(sweep) if sweep else [strength]
    for s in strengths:
        check_strength(s)
    if sweep and compare:
        raise ConfigError(
            "--compare cannot be combined with --sweep.",
            hint="The sweep's contact sheet already shows the input and the reconstruction.",
        )
    _check_batch_size(batch_size)
    metrics = tuple(metrics)
    session = session or Session(
        device=device,
        clip_model=clip_model,
        reporter=reporter,
        require_face=require_face,
        precision=precision,
        compile=compile,
    )
    reporter = session.reporter
    started = time.perf_counter()

    # 2. inputs, domain, target, outputs (before any diffusion model is loaded)
    preset, detection, inputs, failed = _prepare_run(session, paths, domain)
    target = resolve_target(preset, to, src)
    latent_x: Any = None
    latent_meta: dict[str, Any] = {}
    if latent is not None:
        latent_x, latent_meta = _read_latent(Path(latent), len(inputs))
    plans = plan_outputs(
        [inp.path for inp in inputs],
        target.tag,
        output,
        kind="sweep" if sweep else None,
        compare=compare,
        overwrite=overwrite,
    )
    lat_t0 = latent_meta.get("t0")
    if lat_t0 is not None and t0 is not None and int(lat_t0) != t0:
        raise ConfigError(
            f"The latent {latent} was inverted to t0 = {lat_t0}, but --t0 {t0} was given.",
            hint="Drop --t0 (the latent's t0 is used), or invert again with 'dclip invert --t0'.",
        )
    # t0: --t0, else the latent's, else the edit model's (read after resolution), else the named edit's, else the
    # preset's; the provisional value is what the library lookup and on-the-fly fine-tuning use
    wanted_t0 = t0 if t0 is not None else (int(lat_t0) if lat_t0 is not None else None)
    edit_t0 = target.edit.t0 if target.edit is not None else None
    lat_steps = latent_meta.get("steps")
    provisional = _settings_for(
        preset,
        t0=wanted_t0 if wanted_t0 is not None else edit_t0,
        n_inv_steps=n_inv_steps if n_inv_steps is not None else (int(lat_steps) if lat_steps else None),
        n_gen_steps=n_gen_steps,
        eta=eta,
        seed=seed,
    )

    # 3. the models
    timings = Timings()
    with timings.measure("model"):
        base = session.base(preset)
        edit_model = resolve_edit_model(
            session,
            preset,
            target,
            t0=provisional.t0,
            n_inv_steps=provisional.n_inv_steps,
            n_gen_steps=provisional.n_gen_steps,
            model=model,
            allow_finetune=allow_finetune,
            finetune_images=[inp.path for inp in inputs],
            finetune_samples=finetune_samples,
            seed=seed,
        )
    settings = provisional
    if wanted_t0 is None and edit_model.t0 is not None and edit_model.t0 != provisional.t0:
        settings = _settings_for(
            preset, t0=edit_model.t0, n_inv_steps=provisional.n_inv_steps, n_gen_steps=provisional.n_gen_steps,
            eta=eta, seed=seed,
        )  # fmt: skip
    if latent_x is not None:
        _check_latent(Path(latent), latent_x, latent_meta, base, settings, inputs[0], preset, reporter)  # type: ignore[arg-type]
    with timings.measure("model"):
        metric_models = session.metric_models(preset, metrics)
    need_rec = "psnr" in metrics or compare or bool(sweep)

    # 4. invert, reconstruct, generate, score and write, batch by batch
    batch_list = _batches(list(zip(inputs, plans, strict=True)), batch_size)
    n_batches = len(batch_list)
    inv_total = (settings.n_inv_steps - 1) * n_batches if latent_x is None else 0
    gen_total = settings.n_gen_steps * n_batches * len(strengths)
    rec_total = settings.n_gen_steps * n_batches if need_rec else 0
    first = torch.cat([inp.x0 for inp, _ in batch_list[0]]).to(session.device)
    session.announce_estimate(base.model, first, inv_total + gen_total + rec_total)
    base_model = base.model
    main_index = len(strengths) - 1
    results: list[ImageResult] = []
    for batch in batch_list:
        batch_timings = Timings()
        x0 = torch.cat([inp.x0 for inp, _ in batch]).to(session.device)
        with batch_timings.measure("inversion"):
            x_lat, x_rec = _invert_and_reconstruct(
                session, base, x0, settings, need_rec=need_rec, inv_total=inv_total, rec_total=rec_total,
                latent=latent_x,
            )  # fmt: skip
        edits: list[Any] = []
        with batch_timings.measure("generation"):
            for s in strengths:
                edit_eps = session.fast(edit_model.model)
                eps_model = edit_eps if s == 1.0 else blend(session.fast(base_model), edit_eps, s)
                edits.append(_generate(session, eps_model, x_lat, settings, "generation", gen_total))
        with batch_timings.measure("metrics"):
            rows_by_strength = [
                compute_metrics(
                    metric_models,
                    x_src=x0,
                    x_edit=x_edit,
                    src_text=target.src,
                    trg_text=target.trg,
                    x_rec=x_rec if "psnr" in metrics else None,
                )
                for x_edit in edits
            ]
        for i, (inp, plan) in enumerate(batch):
            row = rows_by_strength[main_index][i]

            def build(
                inp: InputImage = inp, plan: OutputSet = plan, row: dict[str, float] = row, i: int = i,
                batch_timings: Timings = batch_timings, rows_by_strength: list[Any] = rows_by_strength,
            ) -> dict[str, Any]:  # fmt: skip
                run_settings = {
                    "domain": preset.name,
                    "domain_detection": _detection_dict(detection),
                    "to": to,
                    "edit": target.key,
                    "src_text": target.src,
                    "trg_text": target.trg,
                    "strength": strengths[main_index] if sweep else strength,
                    "sweep": list(strengths) if sweep else None,
                    "t0": settings.t0,
                    "n_inv_steps": settings.n_inv_steps,
                    "n_gen_steps": settings.n_gen_steps,
                    "eta": settings.eta,
                    "batch_size": batch_size,
                    "precision": session.precision_name(),
                    "latent": str(Path(latent).resolve()) if latent is not None else None,
                    "edit_model_source": edit_model.source,
                    "clip_model": session.clip_model,
                    "metrics": list(metrics),
                    "device": str(session.device),
                    "preprocess": {k: v for k, v in inp.info.items() if k not in ("path", "image_sha256")},
                }
                models_doc = [base.record(), edit_model.record()]
                if metric_models.clip is not None:
                    models_doc.append(session.clip_record())
                models_doc.extend(session.extra_models)
                extra = {}
                if sweep:
                    extra["sweep"] = [
                        {"strength": s, "metrics": rows_by_strength[k][i]} for k, s in enumerate(strengths)
                    ]
                return build_manifest(
                    command="edit",
                    inputs=[input_record(inp.path)],
                    outputs=_outputs_doc(plan),
                    settings=run_settings,
                    seed=seed,
                    models=models_doc,
                    timings={
                        **timings.phases,
                        **batch_timings.phases,
                        "total": time.perf_counter() - started,
                    },
                    metrics=row,
                    device=str(session.device),
                    extra=extra,
                )

            if sweep:
                panels = [x0[i], x_rec[i]] + [e[i] for e in edits]  # type: ignore[index]
                labels = ["input", "reconstruction"] + [_strength_label(s) for s in strengths]
                main: Any = images.image_grid(panels, labels)
            else:
                main = edits[0][i]
            compare_panels = None
            if x_rec is not None and plan.compare is not None:
                suffix = f" ({_strength_label(strength)})" if strength != 1 else ""
                compare_panels = (
                    [x0[i], x_rec[i], edits[0][i]],
                    ["input", "reconstruction", f"edit: {target.tag}{suffix}"],
                )
            doc = _save_outputs(
                plan=plan, main=main, compare_panels=compare_panels, intermediates=(), doc_builder=build,
                overwrite=overwrite,
            )  # fmt: skip
            results.append(ImageResult(inp.path, plan, row, doc))
    return RunReport(results, failed, preset.name, detection, [base, edit_model])


def _detection_dict(detection: Any) -> dict[str, Any] | None:
    if detection is None:
        return {"method": "requested"}
    return {"method": detection.method, "confidence": detection.confidence, "scores": detection.scores}


def _save_outputs(
    *,
    plan: OutputSet,
    main: Any,
    compare_panels: tuple[list[Any], list[str]] | None,
    intermediates: Sequence[Any],
    doc_builder: Callable[[], dict[str, Any]],
    overwrite: bool,
) -> dict[str, Any]:
    """Write one input's image, optional compare sheet and intermediates, then its sidecar; on any failure remove
    what was written for it, so no partial set is left."""
    from dclip_cli import images
    from dclip_cli.manifest import write_manifest

    written: list[Path] = []
    try:
        images.save_image(main, plan.image, overwrite=overwrite)
        written.append(plan.image)
        if plan.compare is not None and compare_panels is not None:
            grid = images.image_grid(compare_panels[0], compare_panels[1])
            images.save_image(grid, plan.compare, overwrite=overwrite)
            written.append(plan.compare)
        for path, x in zip(plan.intermediates, intermediates, strict=True):
            images.save_image(x, path, overwrite=overwrite)
            written.append(path)
        doc = doc_builder()
        write_manifest(plan.sidecar, doc, overwrite=overwrite)
        written.append(plan.sidecar)
    except BaseException:
        _clean(written)
        raise
    return doc


def mix_images(
    paths: Sequence[str | os.PathLike[str]],
    *,
    to: Sequence[str] = (),
    models: Sequence[str] = (),
    with_base: bool = False,
    schedule: str | Sequence[MixEntry] | None = None,
    src: str | None = None,
    domain: str | None = None,
    t0: int | None = None,
    n_inv_steps: int | None = None,
    n_gen_steps: int | None = None,
    eta: float = 0.0,
    seed: int = 0,
    latent: str | os.PathLike[str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    compare: bool = False,
    output: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    metrics: Sequence[str] = ALL_METRICS,
    allow_finetune: bool = True,
    finetune_samples: int = QUICK_SAMPLES,
    device: str | None = "auto",
    clip_model: str = DEFAULT_CLIP_MODEL,
    reporter: Reporter | None = None,
    session: Session | None = None,
    precision: str = "fp32",
    compile: bool = False,
    require_face: bool = False,
) -> RunReport:
    """Multi-attribute editing by noise combination (reference section 7.2, dclip's fixed version).

    The members, in order: one edit model per ``to`` (resolved as in :func:`edit_images`), then one per
    ``models`` entry (a file or name), then the base model when ``with_base``. At each generation step the
    members' noise predictions are combined with the weights of the schedule entry whose threshold is the first
    one <= t (weights normalised). The schedule is validated before any model is loaded.

    Args:
        schedule: a ``--schedule`` string (``"300:0.5,0.5;0:0.3,0.7"``), parsed entries, or ``None`` for equal
            weights at every step.
        Other arguments: as for :func:`edit_images`.
    """
    import time

    import torch

    from dclip_cli.diffusion.mixing import mix
    from dclip_cli.manifest import Timings, build_manifest, input_record
    from dclip_cli.metrics import compute_metrics

    # 1. the schedule, before anything is loaded
    names = [*to, *(Path(m).name for m in models), *(["base"] if with_base else [])]
    if not to and not models:
        raise ConfigError("dclip mix needs at least one --to or --model.", hint="Pass --to A --to B.")
    if isinstance(schedule, str):
        entries = parse_mix_schedule(schedule, len(names), member_names=names)
    elif schedule is None:
        entries = default_mix_schedule(len(names))
    else:
        entries = list(schedule)
        if any(len(e.weights) != len(names) for e in entries):
            raise InvalidScheduleError(
                f"Every schedule entry needs {len(names)} weights ({', '.join(names)})."
            )
    _check_batch_size(batch_size)
    metrics = tuple(metrics)
    session = session or Session(
        device=device,
        clip_model=clip_model,
        reporter=reporter,
        require_face=require_face,
        precision=precision,
        compile=compile,
    )
    reporter = session.reporter
    started = time.perf_counter()

    # 2. inputs, domain, targets, outputs
    preset, detection, inputs, failed = _prepare_run(session, paths, domain)
    targets = [resolve_target(preset, t, src) for t in to]
    tag = "mix-" + "+".join([*(t.tag for t in targets), *(slugify(Path(m).stem) for m in models)])
    if with_base:
        tag += "+base"
    latent_x: Any = None
    latent_meta: dict[str, Any] = {}
    if latent is not None:
        latent_x, latent_meta = _read_latent(Path(latent), len(inputs))
    plans = plan_outputs([inp.path for inp in inputs], tag, output, compare=compare, overwrite=overwrite)
    lat_t0 = latent_meta.get("t0")
    if lat_t0 is not None and t0 is not None and int(lat_t0) != t0:
        raise ConfigError(
            f"The latent {latent} was inverted to t0 = {lat_t0}, but --t0 {t0} was given.",
            hint="Drop --t0 (the latent's t0 is used).",
        )
    wanted_t0 = t0 if t0 is not None else (int(lat_t0) if lat_t0 is not None else None)
    if wanted_t0 is None:
        edit_t0s = {t.edit.t0 for t in targets if t.edit is not None and t.edit.t0 is not None}
        if len(edit_t0s) == 1:
            wanted_t0 = edit_t0s.pop()
    lat_steps = latent_meta.get("steps")
    settings = _settings_for(
        preset,
        t0=wanted_t0,
        n_inv_steps=n_inv_steps if n_inv_steps is not None else (int(lat_steps) if lat_steps else None),
        n_gen_steps=n_gen_steps,
        eta=eta,
        seed=seed,
    )

    # 3. the members
    timings = Timings()
    members: list[LoadedModel] = []
    with timings.measure("model"):
        base = session.base(preset)
        for target in targets:
            members.append(
                resolve_edit_model(
                    session, preset, target, t0=settings.t0, n_inv_steps=settings.n_inv_steps,
                    n_gen_steps=settings.n_gen_steps, allow_finetune=allow_finetune,
                    finetune_images=[inp.path for inp in inputs], finetune_samples=finetune_samples, seed=seed,
                )
            )  # fmt: skip
        for m in models:
            placeholder = EditTarget(
                key=None, src=src or preset.source_text, trg=m, tag=slugify(Path(m).stem)
            )
            members.append(
                resolve_edit_model(
                    session, preset, placeholder, t0=settings.t0, n_inv_steps=settings.n_inv_steps,
                    n_gen_steps=settings.n_gen_steps, model=m,
                )
            )  # fmt: skip
        eps_models = [session.fast(m.model) for m in members] + (
            [session.fast(base.model)] if with_base else []
        )
        mixed = mix(eps_models, [(e.threshold, list(e.weights)) for e in entries])
        metric_models = session.metric_models(preset, metrics)
    if latent_x is not None:
        _check_latent(Path(latent), latent_x, latent_meta, base, settings, inputs[0], preset, reporter)  # type: ignore[arg-type]
    reporter.info(f"Mixing {', '.join(names)} with the schedule {format_mix_schedule(entries)}.")
    if wanted_t0 is None:
        member_t0s = {m.t0 for m in members if m.t0 is not None}
        if len(member_t0s) > 1:
            reporter.warn(
                f"The edit models were fine-tuned at different t0 ({', '.join(map(str, sorted(member_t0s)))}); "
                f"using t0 = {settings.t0}. Pass --t0 to choose."
            )
        elif len(member_t0s) == 1 and (member_t0 := member_t0s.pop()) != settings.t0:
            # every member was fine-tuned at one t0: use it, as dclip edit does with its edit model
            settings = _settings_for(
                preset, t0=member_t0, n_inv_steps=settings.n_inv_steps, n_gen_steps=settings.n_gen_steps,
                eta=eta, seed=seed,
            )  # fmt: skip
    need_rec = "psnr" in metrics or compare

    # 4. batches
    batch_list = _batches(list(zip(inputs, plans, strict=True)), batch_size)
    n_batches = len(batch_list)
    inv_total = (settings.n_inv_steps - 1) * n_batches if latent_x is None else 0
    gen_total = settings.n_gen_steps * n_batches
    rec_total = settings.n_gen_steps * n_batches if need_rec else 0
    first = torch.cat([inp.x0 for inp, _ in batch_list[0]]).to(session.device)
    session.announce_estimate(base.model, first, len(eps_models) * gen_total + inv_total + rec_total)
    # texts for the CLIP metrics: the combined target of the --to edits
    src_text = targets[0].src if targets else (src or preset.source_text)
    trg_text = " and ".join(t.trg for t in targets) if targets else None
    results: list[ImageResult] = []
    for batch in batch_list:
        batch_timings = Timings()
        x0 = torch.cat([inp.x0 for inp, _ in batch]).to(session.device)
        with batch_timings.measure("inversion"):
            x_lat, x_rec = _invert_and_reconstruct(
                session, base, x0, settings, need_rec=need_rec, inv_total=inv_total, rec_total=rec_total,
                latent=latent_x,
            )  # fmt: skip
        with batch_timings.measure("generation"):
            x_mix = _generate(session, mixed, x_lat, settings, "generation", gen_total)
        with batch_timings.measure("metrics"):
            rows = compute_metrics(
                metric_models, x_src=x0, x_edit=x_mix, src_text=src_text, trg_text=trg_text,
                x_rec=x_rec if "psnr" in metrics else None,
            )  # fmt: skip
        for i, (inp, plan) in enumerate(batch):

            def build(
                inp: InputImage = inp, plan: OutputSet = plan, row: dict[str, float] = rows[i],
                batch_timings: Timings = batch_timings,
            ) -> dict[str, Any]:  # fmt: skip
                member_records = [m.record("mix-member") for m in members]
                if with_base:
                    member_records.append(base.record("mix-member"))
                models_doc = [base.record(), *member_records]
                if metric_models.clip is not None:
                    models_doc.append(session.clip_record())
                models_doc.extend(session.extra_models)
                return build_manifest(
                    command="mix",
                    inputs=[input_record(inp.path)],
                    outputs=_outputs_doc(plan),
                    settings={
                        "domain": preset.name,
                        "domain_detection": _detection_dict(detection),
                        "members": names,
                        "to": list(to),
                        "models": [str(m) for m in models],
                        "with_base": with_base,
                        "schedule": format_mix_schedule(entries),
                        "schedule_normalized": [
                            {"threshold": e.threshold, "weights": list(e.normalized)} for e in entries
                        ],
                        "src_text": src_text,
                        "trg_text": trg_text,
                        "t0": settings.t0,
                        "n_inv_steps": settings.n_inv_steps,
                        "n_gen_steps": settings.n_gen_steps,
                        "eta": settings.eta,
                        "batch_size": batch_size,
                        "precision": session.precision_name(),
                        "latent": str(Path(latent).resolve()) if latent is not None else None,
                        "clip_model": session.clip_model,
                        "metrics": list(metrics),
                        "device": str(session.device),
                    },
                    seed=seed,
                    models=models_doc,
                    timings={
                        **timings.phases,
                        **batch_timings.phases,
                        "total": time.perf_counter() - started,
                    },
                    metrics=row,
                    device=str(session.device),
                )

            compare_panels = None
            if x_rec is not None:
                compare_panels = (
                    [x0[i], x_rec[i], x_mix[i]],
                    ["input", "reconstruction", f"mix: {', '.join(names)}"],
                )
            doc = _save_outputs(
                plan=plan, main=x_mix[i], compare_panels=compare_panels, intermediates=(), doc_builder=build,
                overwrite=overwrite,
            )  # fmt: skip
            results.append(ImageResult(inp.path, plan, rows[i], doc))
    return RunReport(results, failed, preset.name, detection, [base, *members])


#: points of the projection's DDIM sequence in unseen-domain translation (hard-coded in the original, section 11.3)
TRANSLATION_STEPS = 6
#: default number of noise-and-project rounds (the README asks for more than 8)
DEFAULT_ITERATIONS = 10


def translate_images(
    paths: Sequence[str | os.PathLike[str]],
    *,
    to: str | None = None,
    src: str | None = None,
    domain: str | None = None,
    model: str | None = None,
    iterations: int = DEFAULT_ITERATIONS,
    save_intermediates: bool = False,
    strength: float = 1.0,
    t0: int | None = None,
    n_inv_steps: int | None = None,
    n_gen_steps: int | None = None,
    eta: float = 0.0,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    compare: bool = False,
    output: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    metrics: Sequence[str] = ALL_METRICS,
    allow_finetune: bool = True,
    finetune_samples: int = QUICK_SAMPLES,
    device: str | None = "auto",
    clip_model: str = DEFAULT_CLIP_MODEL,
    reporter: Reporter | None = None,
    session: Session | None = None,
    precision: str = "fp32",
    compile: bool = False,
) -> RunReport:
    """Unseen-domain and stroke-to-image translation (reference section 11.3, parity KEEP 13 and FIX 11).

    ``iterations`` rounds of: noise the current image to t0 with the q-sample using ᾱ[t0] (consistent with the
    first generation step; the original used ᾱ[t0 - 1]), then project it with a 6-step DDIM (η = 0) of the base
    model. With ``to``, the projection is then DDIM-inverted with the base model and generated with the edit model
    (blended by ``strength``). Without ``to`` the projection is the result.

    Args:
        iterations: rounds K >= 1.
        save_intermediates: write every round's image (``<stem>.<tag>.round01.png``, ...).
        Other arguments: as for :func:`edit_images`. Fine-tuning on the fly (with ``to``) uses base-model samples
        only, never the unseen-domain inputs.
    """
    import time

    import torch

    from dclip_cli.diffusion.ddim import generate, q_sample
    from dclip_cli.diffusion.mixing import blend
    from dclip_cli.manifest import Timings, build_manifest, input_record
    from dclip_cli.metrics import compute_metrics

    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ConfigError(
            f"--iterations must be a positive integer, got {iterations!r}.", hint="Use --iterations 10."
        )
    check_strength(strength)
    _check_batch_size(batch_size)
    if to is None and model is not None:
        raise ConfigError(
            "--model needs --to with dclip translate.", hint="Pass --to TEXT with the model's edit."
        )
    metrics = tuple(metrics)
    session = session or Session(
        device=device, clip_model=clip_model, reporter=reporter, precision=precision, compile=compile
    )
    reporter = session.reporter
    started = time.perf_counter()

    preset, detection, inputs, failed = _prepare_run(session, paths, domain)
    target = resolve_target(preset, to, src) if to is not None else None
    tag = "translate" if target is None else f"translate-{target.tag}"
    plans = plan_outputs(
        [inp.path for inp in inputs],
        tag,
        output,
        compare=compare,
        intermediates=iterations if save_intermediates else 0,
        overwrite=overwrite,
    )
    wanted_t0 = t0
    edit_t0 = target.edit.t0 if target is not None and target.edit is not None else None
    settings = _settings_for(
        preset,
        t0=wanted_t0 if wanted_t0 is not None else edit_t0,
        n_inv_steps=n_inv_steps,
        n_gen_steps=n_gen_steps,
        eta=eta,
        seed=seed,
    )

    timings = Timings()
    edit_model: LoadedModel | None = None
    with timings.measure("model"):
        base = session.base(preset)
        if target is not None:
            edit_model = resolve_edit_model(
                session, preset, target, t0=settings.t0, n_inv_steps=settings.n_inv_steps,
                n_gen_steps=settings.n_gen_steps, model=model, allow_finetune=allow_finetune,
                finetune_images=(), finetune_samples=max(finetune_samples, 1), seed=seed,
            )  # fmt: skip
            if wanted_t0 is None and edit_model.t0 is not None and edit_model.t0 != settings.t0:
                settings = _settings_for(
                    preset,
                    t0=edit_model.t0,
                    n_inv_steps=n_inv_steps,
                    n_gen_steps=n_gen_steps,
                    eta=eta,
                    seed=seed,
                )
        metric_models = session.metric_models(preset, metrics)

    batch_list = _batches(list(zip(inputs, plans, strict=True)), batch_size)
    n_batches = len(batch_list)
    proj_total = TRANSLATION_STEPS * iterations * n_batches
    inv_total = (settings.n_inv_steps - 1) * n_batches if target is not None else 0
    gen_total = settings.n_gen_steps * n_batches if target is not None else 0
    first = torch.cat([inp.x0 for inp, _ in batch_list[0]]).to(session.device)
    session.announce_estimate(base.model, first, proj_total + inv_total + gen_total)
    results: list[ImageResult] = []
    for batch in batch_list:
        batch_timings = Timings()
        x0 = torch.cat([inp.x0 for inp, _ in batch]).to(session.device)
        generator = settings.generators(session.device, x0)  # per image: independent of the batching
        rounds: list[Any] = []
        x = x0
        with batch_timings.measure("translation"), torch.no_grad():
            for _ in range(iterations):
                # 1. noise to t0 with ᾱ[t0] (FIX 11); 2. 6-step DDIM with the base model, η = 0 (KEEP 13)
                x_t = q_sample(x, settings.t0, generator=generator)
                x = generate(
                    session.fast(base.model), x_t, t0=settings.t0, n_steps=TRANSLATION_STEPS,
                    callback=_phase_callback(reporter, "translation", proj_total),
                )  # fmt: skip
                rounds.append(x)
        x_proj = x
        x_out = x_proj
        if target is not None and edit_model is not None:
            with batch_timings.measure("inversion"):
                x_lat, _ = _invert_and_reconstruct(
                    session, base, x_proj, settings, need_rec=False, inv_total=inv_total, rec_total=0,
                    use_cache=False,
                )  # fmt: skip
            edit_eps = session.fast(edit_model.model)
            eps_model = edit_eps if strength == 1.0 else blend(session.fast(base.model), edit_eps, strength)
            with batch_timings.measure("generation"):
                x_out = _generate(session, eps_model, x_lat, settings, "generation", gen_total)
        with batch_timings.measure("metrics"):
            if target is not None:
                rows = compute_metrics(
                    metric_models, x_src=x_proj, x_edit=x_out, src_text=target.src, trg_text=target.trg
                )
            else:
                rows = compute_metrics(metric_models, x_src=x0, x_edit=x_out, trg_text=preset.domain_prompt)
        for i, (inp, plan) in enumerate(batch):

            def build(
                inp: InputImage = inp, plan: OutputSet = plan, row: dict[str, float] = rows[i],
                batch_timings: Timings = batch_timings,
            ) -> dict[str, Any]:  # fmt: skip
                models_doc = [base.record()]
                if edit_model is not None:
                    models_doc.append(edit_model.record())
                if metric_models.clip is not None:
                    models_doc.append(session.clip_record())
                models_doc.extend(session.extra_models)
                return build_manifest(
                    command="translate",
                    inputs=[input_record(inp.path)],
                    outputs=_outputs_doc(plan),
                    settings={
                        "domain": preset.name,
                        "domain_detection": _detection_dict(detection),
                        "to": to,
                        "edit": target.key if target is not None else None,
                        "src_text": target.src if target is not None else None,
                        "trg_text": target.trg if target is not None else None,
                        "iterations": iterations,
                        "translation_steps": TRANSLATION_STEPS,
                        "q_sample_alpha_bar": "alpha_bar[t0]",
                        "strength": strength if target is not None else None,
                        "t0": settings.t0,
                        "n_inv_steps": settings.n_inv_steps if target is not None else None,
                        "n_gen_steps": settings.n_gen_steps if target is not None else None,
                        "eta": settings.eta if target is not None else 0.0,
                        "batch_size": batch_size,
                        "precision": session.precision_name(),
                        "edit_model_source": edit_model.source if edit_model is not None else None,
                        "clip_model": session.clip_model,
                        "metrics": list(metrics),
                        "device": str(session.device),
                    },
                    seed=seed,
                    models=models_doc,
                    timings={
                        **timings.phases,
                        **batch_timings.phases,
                        "total": time.perf_counter() - started,
                    },
                    metrics=row,
                    device=str(session.device),
                )

            panels = [x0[i], x_proj[i]] + ([x_out[i]] if target is not None else [])
            labels = ["input", f"projection ({iterations} rounds)"] + (
                [f"edit: {target.tag}"] if target else []
            )
            doc = _save_outputs(
                plan=plan, main=x_out[i], compare_panels=(panels, labels),
                intermediates=[r[i] for r in rounds] if save_intermediates else (), doc_builder=build,
                overwrite=overwrite,
            )  # fmt: skip
            results.append(ImageResult(inp.path, plan, rows[i], doc))
    models_used = [base] + ([edit_model] if edit_model is not None else [])
    return RunReport(results, failed, preset.name, detection, models_used)


def score_images(
    source: str | os.PathLike[str],
    edited: str | os.PathLike[str],
    *,
    src: str,
    trg: str,
    domain: str | None = None,
    size: int | None = None,
    metrics: Sequence[str] = ALL_METRICS,
    device: str | None = "auto",
    clip_model: str = DEFAULT_CLIP_MODEL,
    reporter: Reporter | None = None,
    session: Session | None = None,
) -> dict[str, float]:
    """The edit metrics for any pair of images (``dclip score``).

    Both images are centre-cropped and resized to ``size`` (the preset's size and aligner with ``domain``). The
    identity similarity needs ``domain`` naming a preset with an identity model; ``psnr`` is between the two images.

    Returns:
        ``{"clip_directional", "clip_target", "lpips", "identity", "psnr"}`` (those that could be computed).
    """
    from dclip_cli import images
    from dclip_cli.metrics import compute_metrics, psnr

    session = session or Session(device=device, clip_model=clip_model, reporter=reporter)
    preset = session.preset(domain) if domain is not None else None
    if size is None:
        size = preset.image_size if preset is not None else 256
    aligner = None
    if preset is not None and preset.preprocess == "align" and preset.aligner:
        aligner = session.registry.aligners.get(preset.aligner)
    x_src, _ = images.load_and_prepare(source, size, aligner=aligner)
    x_edit, _ = images.load_and_prepare(edited, size, aligner=aligner)
    metrics = tuple(metrics)
    models = session.metric_models(preset, [m for m in metrics if m != "psnr"])
    row = compute_metrics(
        models, x_src=x_src.to(session.device), x_edit=x_edit.to(session.device), src_text=src, trg_text=trg
    )[0]
    if "psnr" in metrics:
        row["psnr"] = float(psnr(x_edit, x_src)[0])
    return row
