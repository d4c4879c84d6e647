"""The web page's adapter to dclip's library: the only module of :mod:`dclip_cli.ui` that calls it.

Everything the page does goes through the functions below, with plain-Python inputs and outputs (paths, strings,
numbers, dicts and the small frozen records defined here), so that a change of the library's API (the
application / config / progress-protocol reorganisation) means rewriting this file only. Library calls are
imported inside the functions: importing this module imports neither torch nor Gradio.

Progress leaves through one callback, ``on_event(ProgressEvent)``: a kind (``progress``, ``status``,
``warning``), a label and done/total, fed from the library's ``Reporter`` (edit, mix, translate) and from
``run_finetune``'s event dicts (fine-tuning), the same events the CLI renders with Rich.

Errors: library failures leave as :class:`UserError` with dclip's one-line message and hint; a cancelled
fine-tuning job as :class:`Cancelled`.

Path safety: the page never names a path. Uploaded files are copied (checked for size and dimensions) into a
per-session folder under :attr:`Settings.uploads`; results are written only into a new run folder under
:attr:`Settings.outputs`; the library is changed only through the checkpoint store, with validated names.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import itertools
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

# -- records ------------------------------------------------------------------------------------------------------

#: CLI defaults the page shows (``dclip edit --help`` and friends)
DEFAULT_STRENGTH = 1.0
DEFAULT_SEED = 0
DEFAULT_SWEEP = "0,0.25,0.5,0.75,1"
DEFAULT_ITERATIONS = 10
DEFAULT_PREVIEWS = 4
MAX_ITERATIONS = 50
METRIC_NAMES = ("clip", "lpips", "identity", "psnr")

#: what the page accepts
MAX_UPLOAD_MB = 20
MAX_IMAGE_SIDE = 4096
MAX_IMAGES = 16
MAX_CHECKPOINT_MB = 4096


@dataclass(frozen=True)
class Settings:
    """What ``dclip ui`` fixes for every job of the page (the flags of the compute commands).

    Args:
        outputs: folder that receives one sub-folder per run.
        uploads: folder that receives one sub-folder per browser session (copies of the uploads).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (UNet compute precision).
        compile: ``torch.compile`` the UNets.
        clip_model: CLIP name or file (detection, fine-tuning, metrics).
        metrics: metrics computed for each output (``clip``, ``lpips``, ``identity``, ``psnr``).
        batch_size: images per batch for edit, mix and translate.
        finetune_samples: base-model samples of the quick fine-tuning an edit runs when it has no model yet.
        max_upload_mb: largest accepted image upload, in MB.
        max_image_side: largest accepted image width or height, in pixels.
        max_images: most images in one job.
        max_checkpoint_mb: largest accepted checkpoint upload (library import), in MB.
    """

    outputs: Path
    uploads: Path
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    clip_model: str = "ViT-B/16"
    metrics: tuple[str, ...] = METRIC_NAMES
    batch_size: int = 4
    finetune_samples: int = 8
    max_upload_mb: int = MAX_UPLOAD_MB
    max_image_side: int = MAX_IMAGE_SIDE
    max_images: int = MAX_IMAGES
    max_checkpoint_mb: int = MAX_CHECKPOINT_MB


@dataclass(frozen=True)
class ProgressEvent:
    """One progress event: ``kind`` ``progress`` (``label`` advanced to ``done`` of ``total``), ``status`` or
    ``warning`` (``label`` is the message). ``image`` carries a preview written into the outputs folder."""

    kind: Literal["progress", "status", "warning"]
    label: str
    done: float = 0.0
    total: float | None = None
    detail: str = ""
    image: Path | None = None


OnEvent = Callable[[ProgressEvent], None]


class UserError(Exception):
    """A failure to show on the page: dclip's one-line message and its hint."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message + (f" Hint: {self.hint}" if self.hint else "")


class Cancelled(Exception):
    """A job stopped on request; nothing partial was saved."""


@dataclass(frozen=True)
class EditInfo:
    key: str
    src: str
    trg: str
    official: bool


@dataclass(frozen=True)
class PresetInfo:
    """What the page shows of a preset."""

    name: str
    description: str
    image_size: int
    t0: int
    n_inv_steps: int
    n_gen_steps: int
    source_text: str
    finetune_mode: str
    epochs: int
    n_train_images: int
    edits: tuple[EditInfo, ...]


@dataclass(frozen=True)
class Detection:
    """Which domain the images look like: ``sure`` when the confidence reaches the CLI's threshold."""

    domain: str
    confidence: float
    scores: dict[str, float]
    method: str
    sure: bool
    description: str


@dataclass(frozen=True)
class OutputItem:
    """One output image with its sidecar (and compare sheet, intermediates) and its metrics."""

    input: Path
    image: Path
    sidecar: Path
    caption: str
    metrics: dict[str, float]
    compare: Path | None = None
    intermediates: tuple[Path, ...] = ()


@dataclass(frozen=True)
class RunOutput:
    """The outcome of an edit, sweep, mix or translation."""

    domain: str
    folder: Path
    items: tuple[OutputItem, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    messages: tuple[str, ...] = ()
    detection: dict[str, Any] | None = None


@dataclass(frozen=True)
class ScheduleCheck:
    """The verdict on a mix schedule: ``ok`` with a summary, or dclip's message and hint."""

    ok: bool
    message: str
    hint: str | None = None


@dataclass(frozen=True)
class FinetuneOutput:
    """A finished fine-tuning job: the library names and files it added."""

    names: tuple[str, ...]
    artifacts: tuple[Path, ...]
    seconds: float
    losses: dict[str, float]
    previews: tuple[Path, ...] = ()
    messages: tuple[str, ...] = ()


@dataclass(frozen=True)
class LibraryRow:
    """One entry of the library tab: a cached checkpoint or a fine-tuned edit."""

    name: str
    kind: Literal["edit", "checkpoint"]
    size: int
    src_text: str = ""
    trg_text: str = ""
    t0: int | None = None
    base: str = ""
    description: str = ""


# -- errors and the device lock -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the library's errors into :class:`UserError` (message and hint, never a traceback)."""
    from dclip_cli.errors import DclipError

    try:
        yield
    except (UserError, Cancelled):
        raise
    except DclipError as exc:
        raise UserError(exc.message, exc.hint) from exc
    except MemoryError as exc:
        raise UserError(
            "Out of memory.", "Use fewer images, --precision bf16/fp16, or --device cpu for 'dclip ui'."
        ) from exc
    except OSError as exc:
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        raise UserError(f"{exc.strerror or exc}{where}.", "Check the path and its permissions.") from exc
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":
            raise UserError(
                "The device ran out of memory.", "Use fewer images, or start 'dclip ui --precision bf16'."
            ) from exc
        raise UserError(
            f"Unexpected error: {type(exc).__name__}: {exc}",
            "This is a bug in dclip; run 'dclip ui' with DCLIP_DEBUG=1 and report the traceback it prints.",
        ) from exc


_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def _device(settings: Settings) -> Iterator[None]:
    """One job at a time per device (the page's queue does this too; API users of the page share it)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault(settings.device, threading.Lock())
    with lock:
        yield


# -- sessions: networks loaded once per page ----------------------------------------------------------------------

_SESSIONS: dict[tuple[str, str, str, bool], Any] = {}

_PHASE_LABELS = {
    "fine-tuning": "Fine-tuning",
    "fine-tuning: load": "Loading training images",
    "fine-tuning: sample": "Drawing samples",
    "fine-tuning: invert": "Inverting training images",
    "inversion": "Inverting",
    "reconstruction": "Reconstructing",
    "generation": "Generating",
    "translation": "Projecting",
}


class _Reporter:
    """The library's ``Reporter`` (duck-typed) turned into :class:`ProgressEvent` calls."""

    def __init__(self, on_event: OnEvent | None, messages: list[str]) -> None:
        self.on_event = on_event
        self.messages = messages
        self.done: dict[str, float] = {}
        self.totals: dict[str, float | None] = {}

    def _emit(self, event: ProgressEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def info(self, message: str) -> None:
        self.messages.append(message)
        self._emit(ProgressEvent("status", message))

    def warn(self, message: str) -> None:
        self.messages.append(f"Warning: {message}")
        self._emit(ProgressEvent("warning", message))

    def progress(self, phase: str, *, advance: int = 1, total: int | None = None, status: str = "") -> None:
        if total is not None:
            self.totals[phase] = total
        self.done[phase] = self.done.get(phase, 0) + advance
        label = _PHASE_LABELS.get(phase, phase)
        self._emit(ProgressEvent("progress", label, self.done[phase], self.totals.get(phase), status))

    def download(self, name: str) -> Callable[[int, int | None], None]:
        def on_progress(done: int, total: int | None) -> None:
            self._emit(ProgressEvent("progress", f"Downloading {name}", done, total, "bytes"))

        return on_progress


def _session(settings: Settings, reporter: _Reporter) -> Any:
    """The library session of these settings (CLIP, base models, metric networks loaded once), reporting to
    ``reporter`` for this job."""
    from dclip_cli.editing import Session

    key = (settings.device, settings.clip_model, settings.precision, settings.compile)
    session = _SESSIONS.get(key)
    if session is None:
        session = Session(
            device=settings.device,
            clip_model=settings.clip_model,
            reporter=reporter,
            precision=settings.precision,
            compile=settings.compile,
        )
        _SESSIONS[key] = session
    session.reporter = reporter
    return session


def forget_sessions() -> None:
    """Drop the loaded networks (tests; a page that changed its settings)."""
    _SESSIONS.clear()


# -- presets --------------------------------------------------------------------------------------------------


def presets() -> list[PresetInfo]:
    """The installed presets (domains) and their named edits, sorted by name."""
    with _user_errors():
        from dclip_cli.presets.manager import get_registry

        registry = get_registry()
        out = []
        for name in sorted(registry.presets):
            if name in registry.duplicates:
                continue
            p = registry.presets[name]
            edits = tuple(
                EditInfo(e.key, e.src, e.trg, bool(e.checkpoint)) for e in sorted(p.edits.values(), key=_key)
            )
            out.append(
                PresetInfo(
                    name=p.name,
                    description=p.description,
                    image_size=p.image_size,
                    t0=p.t0,
                    n_inv_steps=p.n_inv_steps,
                    n_gen_steps=p.n_gen_steps,
                    source_text=p.source_text,
                    finetune_mode=p.finetune_mode,
                    epochs=p.epochs,
                    n_train_images=p.n_train_images,
                    edits=edits,
                )
            )
        return out


def _key(edit: Any) -> str:
    return str(edit.key)


def parse_metric_names(text: str) -> tuple[str, ...]:
    """``--metrics`` (``all``, ``none`` or ``clip,lpips,identity,psnr``), with the CLI's messages."""
    with _user_errors():
        from dclip_cli.editing import parse_metrics

        return parse_metrics(text)


def default_outputs() -> Path:
    """Where the page writes results unless ``dclip ui --outputs`` says otherwise: ``<data dir>/outputs``."""
    from dclip_cli.checkpoints import cache

    return cache.data_dir() / "outputs"


def plugin_warnings() -> list[str]:
    """Warnings of preset plugins that failed to load."""
    with _user_errors():
        from dclip_cli.presets.manager import get_registry

        return list(get_registry().warnings)


def sample_image() -> Path:
    """The sample face shipped with dclip (a public-domain NASA portrait)."""
    with _user_errors():
        from dclip_cli.images import sample_image_path

        return sample_image_path()


# -- uploads ------------------------------------------------------------------------------------------------------

_SESSION_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SUFFIX_RE = re.compile(r"^\.[A-Za-z0-9]{1,12}$")
_counter = itertools.count(1)


def _safe_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(name).stem).strip("-_")[:48]
    return stem or "image"


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    resolved = path.resolve()
    for root in roots:
        r = root.resolve()
        if resolved == r or r in resolved.parents:
            return True
    return False


def session_folder(settings: Settings, session_id: str) -> Path:
    """The upload folder of one browser session (created)."""
    if not _SESSION_RE.match(session_id or ""):
        raise UserError("This browser session has no valid id.", "Reload the page.")
    folder = settings.uploads / session_id
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def drop_session(settings: Settings, session_id: str) -> None:
    """Delete a browser session's uploads (the tab was closed)."""
    if _SESSION_RE.match(session_id or ""):
        shutil.rmtree(settings.uploads / session_id, ignore_errors=True)


def stage_uploads(
    settings: Settings,
    session_id: str,
    paths: Sequence[str | os.PathLike[str]],
    *,
    allowed_roots: Sequence[Path],
    what: str = "image",
) -> list[Path]:
    """Copy uploaded files into a new folder of the session, after checking where they are and how big.

    Args:
        paths: the files the page received (its own upload folder, or the sample image).
        allowed_roots: where those files may be (anything else is refused).
        what: ``image`` (size and pixel dimensions checked) or ``checkpoint`` (size checked).

    Raises:
        UserError: no file, too many, a file outside ``allowed_roots``, too large, not an image, too many pixels.
    """
    files = [Path(p) for p in paths if p]
    if not files:
        raise UserError(f"No {what} was given.", f"Upload an {what} first." if what == "image" else None)
    if what == "image" and len(files) > settings.max_images:
        raise UserError(
            f"{len(files)} images were given; the page takes at most {settings.max_images} per job.",
            "Edit a folder of many images with the CLI: dclip edit photos/ --to ... -o edited/.",
        )
    limit_mb = settings.max_upload_mb if what == "image" else settings.max_checkpoint_mb
    folder = session_folder(settings, session_id) / f"{time.strftime('%H%M%S')}-{next(_counter)}"
    folder.mkdir(parents=True)
    staged: list[Path] = []
    used: set[str] = set()
    for src in files:
        if not _inside(src, allowed_roots) or not src.is_file():
            raise UserError(f"{src.name} is not a file uploaded to this page.", "Upload the file again.")
        size = src.stat().st_size
        if size > limit_mb * 1_000_000:
            raise UserError(
                f"{src.name} is {size / 1e6:.1f} MB; the page accepts {what}s up to {limit_mb} MB.",
                "Downscale or compress it, or start 'dclip ui' with a larger --max-upload-mb."
                if what == "image"
                else "Import it with 'dclip models import FILE --as NAME' instead.",
            )
        if what == "image":
            _check_image(src, settings.max_image_side)
        stem = _safe_stem(src.name)
        name = stem
        n = 2
        while name in used:
            name = f"{stem}-{n}"
            n += 1
        used.add(name)
        suffix = src.suffix.lower() if _SUFFIX_RE.match(src.suffix) else ""
        dest = folder / f"{name}{suffix}"
        shutil.copyfile(src, dest)
        staged.append(dest)
    return staged


def _check_image(path: Path, max_side: int) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:  # reads the header only
            width, height = im.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise UserError(
            f"{path.name} is not an image file that Pillow can read.", "Upload a PNG, JPEG or WebP image."
        ) from None
    if max(width, height) > max_side:
        raise UserError(
            f"{path.name} is {width}x{height} pixels; the page accepts images up to {max_side} pixels on a side.",
            "Downscale it first (the models work at 256x256), or start 'dclip ui' with a larger --max-image-side.",
        )


# -- runs ---------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _run_folder(settings: Settings, command: str, tag: str) -> Iterator[Path]:
    """A new, empty folder ``<outputs>/<date-time>-<command>-<tag>[-n]`` for one run; removed again when the run
    fails before writing any file."""
    settings.outputs.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}-{command}" + (f"-{_safe_stem(tag)}" if tag else "")
    for n in itertools.count(1):
        folder = settings.outputs / (base if n == 1 else f"{base}-{n}")
        try:
            folder.mkdir()
            break
        except FileExistsError:
            continue
    try:
        yield folder
    except BaseException:
        if not any(p.is_file() for p in folder.rglob("*")):
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _domain(value: str | None) -> str | None:
    return value if value and value != "auto" else None


def _items(report: Any, captions: Callable[[Any], str]) -> list[OutputItem]:
    return [
        OutputItem(
            input=r.input,
            image=r.outputs.image,
            sidecar=r.outputs.sidecar,
            caption=captions(r),
            metrics=dict(r.metrics),
            compare=r.outputs.compare,
            intermediates=tuple(r.outputs.intermediates),
        )
        for r in report.results
    ]


def _detection_doc(report: Any) -> dict[str, Any] | None:
    det = report.detection
    if det is None:
        return None
    return {"domain": det.preset, "confidence": det.confidence, "method": det.method, "scores": det.scores}


def detect_domain(settings: Settings, images: Sequence[Path], on_event: OnEvent | None = None) -> Detection:
    """Which installed preset the images belong to, with CLIP's confidence (as ``dclip edit`` without
    ``--domain``). ``sure`` is false below the CLI's threshold; the page then asks for a domain."""
    with _user_errors(), _device(settings):
        import torch

        from dclip_cli.detect import MIN_CONFIDENCE
        from dclip_cli.detect import detect_domain as _detect
        from dclip_cli.editing import DETECTION_SIZE, expand_inputs

        session = _session(settings, _Reporter(on_event, []))
        presets_ = session.presets()
        probe, failed = session.load_inputs(expand_inputs(images), DETECTION_SIZE, quiet=True)
        if not probe:
            reason = failed[0][1] if failed else "no image"
            raise UserError(reason, "Upload a PNG, JPEG or WebP image.")
        clip = session.clip() if len(presets_) > 1 else None
        x = torch.cat([p.x0 for p in probe]).to(session.device)
        label = probe[0].path.name if len(probe) == 1 else f"{len(probe)} images"
        det = _detect(clip, x, presets_, min_confidence=0.0, label=label)
        sure = det.method != "clip" or det.confidence >= MIN_CONFIDENCE
        return Detection(det.preset, det.confidence, dict(det.scores), det.method, sure, det.describe())


def edit(
    settings: Settings,
    images: Sequence[Path],
    *,
    to: str,
    domain: str | None = None,
    strength: float = DEFAULT_STRENGTH,
    seed: int = DEFAULT_SEED,
    compare: bool = True,
    t0: int | None = None,
    steps: int | None = None,
    on_event: OnEvent | None = None,
) -> RunOutput:
    """``dclip edit IMAGES --to TO [--domain D] --strength S --seed N [--compare] -o <new run folder>``."""
    with _user_errors(), _device(settings), _run_folder(settings, "edit", to) as folder:
        from dclip_cli.editing import edit_images

        messages: list[str] = []
        reporter = _Reporter(on_event, messages)
        report = edit_images(
            list(images),
            to=to,
            domain=_domain(domain),
            strength=strength,
            t0=t0,
            n_gen_steps=steps,
            seed=seed,
            compare=compare,
            output=folder,
            metrics=settings.metrics,
            batch_size=settings.batch_size,
            finetune_samples=settings.finetune_samples,
            session=_session(settings, reporter),
        )
        caption = f"{to} (strength {strength:g})" if strength != 1 else to
        return RunOutput(
            domain=report.preset,
            folder=folder,
            items=tuple(_items(report, lambda r: f"{r.input.stem}: {caption}")),
            skipped=tuple((str(p.name), why) for p, why in report.failed),
            messages=tuple(messages),
            detection=_detection_doc(report),
        )


def parse_strengths(text: str) -> list[float]:
    """``dclip edit --sweep`` values (``0,0.25,0.5``), with the CLI's messages."""
    with _user_errors():
        from dclip_cli.editing import parse_sweep

        return parse_sweep(text)


def sweep(
    settings: Settings,
    images: Sequence[Path],
    *,
    to: str,
    strengths: Sequence[float],
    domain: str | None = None,
    seed: int = DEFAULT_SEED,
    t0: int | None = None,
    steps: int | None = None,
    on_event: OnEvent | None = None,
) -> RunOutput:
    """One edit per strength, each image with its own sidecar, so the page can show a gallery of strengths.

    The latent cache makes every strength after the first cost only its generation, as ``dclip edit --sweep``
    does (which writes one contact sheet instead).
    """
    with _user_errors(), _device(settings), _run_folder(settings, "sweep", to) as folder:
        from dclip_cli.editing import check_strength, edit_images

        for s in strengths:
            check_strength(s)
        if not strengths:
            raise UserError("No strengths to sweep.", "Give strengths such as 0,0.25,0.5,0.75,1.")
        messages: list[str] = []
        reporter = _Reporter(on_event, messages)
        items: list[OutputItem] = []
        skipped: tuple[tuple[str, str], ...] = ()
        domain_used, detection = "", None
        for s in strengths:
            target = folder / f"strength-{s:g}"
            target.mkdir()  # a directory (its name has a dot, which -o would take for a file suffix)
            report = edit_images(
                list(images),
                to=to,
                domain=_domain(domain) or (domain_used or None),
                strength=s,
                t0=t0,
                n_gen_steps=steps,
                seed=seed,
                output=target,
                metrics=settings.metrics,
                batch_size=settings.batch_size,
                finetune_samples=settings.finetune_samples,
                session=_session(settings, reporter),
            )
            domain_used = report.preset
            detection = detection or _detection_doc(report)
            skipped = tuple((str(p.name), why) for p, why in report.failed)
            items += _items(report, functools.partial(_strength_caption, strength=s))
        return RunOutput(domain_used, folder, tuple(items), skipped, tuple(messages), detection)


def _strength_caption(result: Any, *, strength: float) -> str:
    return f"{result.input.stem}: strength {strength:g}"


def validate_schedule(text: str, members: Sequence[str], *, with_base: bool = False) -> ScheduleCheck:
    """Check a mix schedule with ``dclip mix --schedule``'s parser and messages (nothing is loaded)."""
    from dclip_cli.editing import format_mix_schedule, parse_mix_schedule
    from dclip_cli.errors import DclipError

    names = [m for m in members if m.strip()] + (["base"] if with_base else [])
    if not names:
        return ScheduleCheck(
            False, "Choose at least one edit to mix.", "Pick edits from the list or type them."
        )
    if not text.strip():
        return ScheduleCheck(True, f"Equal weights for {', '.join(names)} at every timestep (no schedule).")
    try:
        entries = parse_mix_schedule(text, len(names), member_names=names)
    except DclipError as exc:
        return ScheduleCheck(False, exc.message, exc.hint)
    parts = []
    upper = 999
    for e in entries:
        weights = ", ".join(f"{n} {w:.2f}" for n, w in zip(names, e.normalized, strict=True))
        parts.append(f"t {e.threshold}..{upper}: {weights}")
        upper = e.threshold - 1
    return ScheduleCheck(True, f"{format_mix_schedule(entries)} ({'; '.join(parts)})")


def mix(
    settings: Settings,
    images: Sequence[Path],
    *,
    to: Sequence[str],
    schedule: str = "",
    with_base: bool = False,
    domain: str | None = None,
    seed: int = DEFAULT_SEED,
    compare: bool = True,
    on_event: OnEvent | None = None,
) -> RunOutput:
    """``dclip mix IMAGES --to A --to B [--with-base] [--schedule S] --compare -o <new run folder>``."""
    check = validate_schedule(schedule, to, with_base=with_base)
    if not check.ok:
        raise UserError(check.message, check.hint)
    members = [m.strip() for m in to if m.strip()]
    with _user_errors(), _device(settings), _run_folder(settings, "mix", "+".join(members)) as folder:
        from dclip_cli.editing import mix_images, parse_mix_schedule

        names = members + (["base"] if with_base else [])
        entries = parse_mix_schedule(schedule, len(names), member_names=names) if schedule.strip() else None
        messages: list[str] = []
        reporter = _Reporter(on_event, messages)
        report = mix_images(
            list(images),
            to=members,
            with_base=with_base,
            schedule=entries,
            domain=_domain(domain),
            seed=seed,
            compare=compare,
            output=folder,
            metrics=settings.metrics,
            batch_size=settings.batch_size,
            finetune_samples=settings.finetune_samples,
            session=_session(settings, reporter),
        )
        caption = " + ".join(names)
        return RunOutput(
            domain=report.preset,
            folder=folder,
            items=tuple(_items(report, lambda r: f"{r.input.stem}: {caption}")),
            skipped=tuple((str(p.name), why) for p, why in report.failed),
            messages=tuple(messages),
            detection=_detection_doc(report),
        )


def translate(
    settings: Settings,
    images: Sequence[Path],
    *,
    domain: str | None = None,
    iterations: int = DEFAULT_ITERATIONS,
    to: str | None = None,
    strength: float = DEFAULT_STRENGTH,
    seed: int = DEFAULT_SEED,
    on_event: OnEvent | None = None,
) -> RunOutput:
    """``dclip translate IMAGES [--domain D] --iterations K [--to T] --save-intermediates --compare -o <run>``."""
    with _user_errors(), _device(settings), _run_folder(settings, "translate", to or "") as folder:
        from dclip_cli.editing import translate_images

        messages: list[str] = []
        reporter = _Reporter(on_event, messages)
        report = translate_images(
            list(images),
            to=to or None,
            domain=_domain(domain),
            iterations=int(iterations),
            save_intermediates=True,
            strength=strength,
            seed=seed,
            compare=True,
            output=folder,
            metrics=settings.metrics,
            batch_size=settings.batch_size,
            finetune_samples=settings.finetune_samples,
            session=_session(settings, reporter),
        )
        what = f"translated, then {to}" if to else f"translated ({iterations} rounds)"
        return RunOutput(
            domain=report.preset,
            folder=folder,
            items=tuple(_items(report, lambda r: f"{r.input.stem}: {what}")),
            skipped=tuple((str(p.name), why) for p, why in report.failed),
            messages=tuple(messages),
            detection=_detection_doc(report),
        )


# -- fine-tuning ----------------------------------------------------------------------------------------------------

_LOSS_ORDER = ("clip", "l1", "id", "lpips", "total")
_FT_PHASES = {"load": "Loading training images", "sample": "Drawing samples", "invert": "Inverting images"}


def format_losses(losses: dict[str, float] | None) -> str:
    """``clip 0.1234  total 0.5678`` in the CLI's order."""
    if not losses:
        return ""
    return "  ".join(f"{k} {losses[k]:.4f}" for k in _LOSS_ORDER if k in losses)


def finetune_job(
    settings: Settings,
    *,
    domain: str,
    edit: str | None = None,
    src: str | None = None,
    trg: str | None = None,
    mode: str | None = None,
    epochs: int | None = None,
    images: Sequence[Path] = (),
    samples: int | None = None,
    previews: int = DEFAULT_PREVIEWS,
    seed: int = DEFAULT_SEED,
    overwrite: bool = False,
    on_event: OnEvent | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FinetuneOutput:
    """``dclip finetune --domain D (--edit E | --src S --trg T) [--mode M] [--epochs N] [--images DIR]
    [--samples N] --previews P --seed N [--overwrite]``: the result goes into the edit library.

    ``on_event`` receives the same events the CLI shows (status lines, download/sampling/inversion progress, one
    ``Fine-tuning <edit>`` progress over all training steps, the losses of each epoch with its preview image).
    ``should_stop`` is polled at every event; when it returns true the job stops with :class:`Cancelled`, and
    nothing is saved (finished epochs stay resumable with ``dclip finetune --resume``).
    """
    edit = (edit or "").strip() or None
    trg = (trg or "").strip() or None
    src = (src or "").strip() or None
    if edit is None and trg is None:
        raise UserError(
            "Choose a named edit, or give a target text.", "For example: smiling, or 'gothic church'."
        )
    if edit is not None and (trg is not None or src is not None):
        raise UserError(
            "Give either a named edit or source/target texts, not both.", "Clear the texts or the named edit."
        )
    with _user_errors(), _device(settings), _run_folder(settings, "finetune", edit or trg or "") as folder:
        from dclip_cli.checkpoints import cache
        from dclip_cli.finetune import run_finetune
        from dclip_cli.losses.clip import DirectionalCLIPLoss

        messages: list[str] = []
        reporter = _Reporter(on_event, messages)
        session = _session(settings, reporter)
        preset = session.preset(domain)
        previews_out: list[Path] = []
        clock: dict[str, float] = {}

        def emit(event: ProgressEvent) -> None:
            if on_event is not None:
                on_event(event)

        def on_ft_event(ev: dict[str, Any]) -> None:
            if should_stop is not None and should_stop():
                raise KeyboardInterrupt("cancelled from the page")
            kind = ev.get("kind")
            if kind == "status":
                reporter.info(str(ev["message"]))
            elif kind == "warning":
                reporter.warn(str(ev["message"]))
            elif kind == "download":
                emit(ProgressEvent("progress", f"Downloading {ev['name']}", ev["done"], ev["total"], "bytes"))
            elif kind == "progress":
                label = _FT_PHASES.get(str(ev["phase"]), str(ev["phase"]))
                emit(ProgressEvent("progress", label, ev["done"], ev["total"]))
            elif kind == "pair_start":
                pair, cfg = ev["pair"], ev["config"]
                clock["start"] = time.perf_counter()
                reporter.info(
                    f"Edit {ev['index'] + 1}/{ev['pairs']} {pair.key}: {pair.src_text!r} -> {pair.trg_text!r} "
                    f"(t0 {cfg.t0}, {cfg.n_train_steps} steps, {cfg.mode}, lr {cfg.lr:g}, {cfg.epochs} epoch(s))"
                )
            elif kind == "step":
                per_epoch = int(ev["batches"]) * int(ev["steps"])
                done = int(ev["epoch"]) * per_epoch + int(ev["batch"]) * int(ev["steps"]) + int(ev["step"])
                emit(
                    ProgressEvent(
                        "progress",
                        "Fine-tuning",
                        done,
                        int(ev["epochs"]) * per_epoch,
                        format_losses(ev.get("losses")),
                    )
                )
            elif kind == "epoch_end":
                shot = None
                if ev.get("preview"):
                    shot = folder / f"epoch-{int(ev['epoch']) + 1:03d}.png"
                    shutil.copyfile(ev["preview"], shot)
                    previews_out.append(shot)
                message = f"epoch {int(ev['epoch']) + 1}/{ev['epochs']}: {format_losses(ev['losses'])}"
                messages.append(message)
                emit(ProgressEvent("status", message, image=shot))

        base = session.base(preset)
        precision = "auto" if settings.precision == "fp16" else settings.precision
        try:
            result = run_finetune(
                preset,
                edits=[edit] if edit else (),
                texts=[trg] if trg else (),
                src_text=src,
                images=list(images) or None,
                n_samples=samples,
                overrides={"mode": mode or None, "epochs": epochs, "seed": seed, "precision": precision},
                base_model=base.model,
                base_checkpoint=base.name,
                base_sha256=base.sha256,
                clip_model=settings.clip_model,
                clip_loss=DirectionalCLIPLoss(session.clip()),
                device=session.device,
                overwrite=overwrite,
                n_preview=previews,
                callback=on_ft_event,
            )
        except KeyboardInterrupt:
            raise Cancelled("Fine-tuning was cancelled; nothing was saved.") from None
        library = cache.library_dir().resolve()
        names = []
        for path in result.artifacts:
            rel = path.resolve().relative_to(library) if library in path.resolve().parents else None
            names.append(f"{rel.parent.as_posix()}/{path.stem}" if rel is not None else path.name)
        for name in names:
            messages.append(f"Saved {name} to the edit library.")
        last = result.pairs[-1].losses if result.pairs else {}
        return FinetuneOutput(
            tuple(names),
            tuple(result.artifacts),
            result.seconds,
            dict(last),
            tuple(previews_out),
            tuple(messages),
        )


# -- the library ------------------------------------------------------------------------------------------------------


def library_rows() -> list[LibraryRow]:
    """The fine-tuned edits of the library, then the cached checkpoints (``dclip models list``)."""
    with _user_errors():
        from dclip_cli.artifacts import read_artifact
        from dclip_cli.checkpoints.store import find_spec, list_edits, list_models
        from dclip_cli.errors import DclipError
        from dclip_cli.presets.manager import get_registry

        registry = get_registry()
        texts: dict[str, tuple[str, str]] = {}
        for p in registry.presets.values():
            for named in p.edits.values():
                if named.checkpoint:
                    texts[named.checkpoint] = (named.src, named.trg)
        rows: list[LibraryRow] = []
        for e in list_edits():
            meta: dict[str, Any] = {}
            with contextlib.suppress(DclipError, OSError):
                meta = read_artifact(e.path).metadata
            t0 = meta.get("t0")
            rows.append(
                LibraryRow(
                    name=e.name,
                    kind="edit",
                    size=e.size,
                    src_text=str(meta.get("src_text") or ""),
                    trg_text=str(meta.get("trg_text") or ""),
                    t0=int(t0) if t0 is not None else None,
                    base=str(meta.get("base_checkpoint") or ""),
                    description="fine-tuned edit",
                )
            )
        for m in list_models():
            if not m.cached:
                continue
            spec = find_spec(m.name) if m.registered else None
            src, trg = texts.get(m.name, ("", ""))
            rows.append(
                LibraryRow(
                    name=m.name,
                    kind="checkpoint",
                    size=int(m.size or 0),
                    src_text=src,
                    trg_text=trg,
                    t0=spec.t0 if spec is not None else None,
                    base=(spec.base or "") if spec is not None else "",
                    description=m.description,
                )
            )
        return rows


def delete_entry(name: str) -> list[str]:
    """Delete a library edit or cached checkpoint listed by :func:`library_rows` (``dclip models rm NAME``).

    Returns the names of the removed files.

    Raises:
        UserError: ``name`` is not one of the listed entries.
    """
    with _user_errors():
        from dclip_cli.checkpoints import cache
        from dclip_cli.checkpoints.store import remove

        cache.validate_name(name)
        if name not in {r.name for r in library_rows()}:
            raise UserError(
                f"{name!r} is not in the library.", "Refresh the list and choose an entry from it."
            )
        return [p.name for p in remove(name)]


def import_file(path: Path, name: str, *, overwrite: bool = False, remove_source: bool = False) -> Path:
    """Add a checkpoint file to the cache (registered name) or the library (``preset/edit``), after the store's
    format and hash checks (``dclip models import FILE --as NAME``). ``path`` is a staged upload, deleted
    afterwards with ``remove_source``."""
    with _user_errors():
        from dclip_cli.checkpoints import cache
        from dclip_cli.checkpoints.store import import_file as _import

        try:
            name = name.strip()
            cache.validate_name(name)
            return _import(path, name, overwrite=overwrite)
        finally:
            if remove_source:
                path.unlink(missing_ok=True)
