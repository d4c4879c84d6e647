"""The web page's adapter to dclip's library: the only module of :mod:`dclip_cli.ui` that runs the applications.

Everything the page does goes through the functions below (and :mod:`.files` for uploads and the library), with
plain-Python inputs and outputs (paths, strings, numbers, dicts and the small frozen records of :mod:`.records`).
Library calls are imported inside the functions: importing this module imports neither torch nor Gradio.

Progress leaves through one callback, ``on_event(ProgressEvent)``, fed from the library's progress events
(:mod:`dclip_cli.progress`): the same events the CLI renders with Rich.

Errors: library failures leave as :class:`UserError` with dclip's one-line message and hint; a cancelled
fine-tuning job as :class:`Cancelled`.

Path safety: the page never names a path. Uploaded files are copied (checked for size and dimensions) into a
per-session folder under :attr:`Settings.uploads`; results are written only into a new run folder under
:attr:`Settings.outputs`; the library is changed only through the model store, with validated names.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import itertools
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from dclip_cli.ui.files import (
    delete_entry,
    drop_session,
    import_file,
    library_rows,
    safe_stem,
    session_folder,
    stage_uploads,
)
from dclip_cli.ui.records import (
    DEFAULT_ITERATIONS,
    DEFAULT_PREVIEWS,
    DEFAULT_SEED,
    DEFAULT_STRENGTH,
    DEFAULT_SWEEP,
    MAX_CHECKPOINT_MB,
    MAX_IMAGE_SIDE,
    MAX_IMAGES,
    MAX_ITERATIONS,
    MAX_UPLOAD_MB,
    METRIC_NAMES,
    Cancelled,
    Detection,
    EditInfo,
    FinetuneOutput,
    LibraryRow,
    OnEvent,
    OutputItem,
    PresetInfo,
    ProgressEvent,
    RunOutput,
    ScheduleCheck,
    Settings,
    UserError,
    user_errors,
)

__all__ = [
    "DEFAULT_ITERATIONS",
    "DEFAULT_PREVIEWS",
    "DEFAULT_SEED",
    "DEFAULT_STRENGTH",
    "DEFAULT_SWEEP",
    "MAX_CHECKPOINT_MB",
    "MAX_IMAGES",
    "MAX_IMAGE_SIDE",
    "MAX_ITERATIONS",
    "MAX_UPLOAD_MB",
    "METRIC_NAMES",
    "Cancelled",
    "Detection",
    "EditInfo",
    "FinetuneOutput",
    "LibraryRow",
    "OnEvent",
    "OutputItem",
    "PresetInfo",
    "ProgressEvent",
    "RunOutput",
    "ScheduleCheck",
    "Settings",
    "UserError",
    "default_outputs",
    "delete_entry",
    "detect_domain",
    "drop_session",
    "edit",
    "finetune_job",
    "forget_sessions",
    "format_losses",
    "import_file",
    "library_rows",
    "mix",
    "parse_metric_names",
    "parse_strengths",
    "plugin_warnings",
    "presets",
    "sample_image",
    "session_folder",
    "stage_uploads",
    "sweep",
    "translate",
    "validate_schedule",
]

# -- the device lock and the sessions -------------------------------------------------------------------------------

_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def _device(settings: Settings) -> Iterator[None]:
    """One job at a time per device (the page's queue does this too; API users of the page share it)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault(settings.device, threading.Lock())
    with lock:
        yield


_SESSIONS: dict[tuple[str, str, str, bool], Any] = {}

_LOSS_ORDER = ("clip", "l1", "id", "lpips", "total")


def format_losses(losses: dict[str, float] | None) -> str:
    """``clip 0.1234  total 0.5678`` in the CLI's order."""
    if not losses:
        return ""
    return "  ".join(f"{k} {losses[k]:.4f}" for k in _LOSS_ORDER if k in losses)


class _Events:
    """The library's progress events (:class:`dclip_cli.progress.Event`) turned into :class:`ProgressEvent`
    calls, the messages kept for the page; ``should_stop`` is polled at every event (cancel)."""

    def __init__(
        self,
        on_event: OnEvent | None,
        *,
        should_stop: Callable[[], bool] | None = None,
        previews: Path | None = None,
    ) -> None:
        self.on_event = on_event
        self.should_stop = should_stop
        self.previews = previews
        self.messages: list[str] = []
        self.preview_files: list[Path] = []

    def _emit(self, event: ProgressEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def __call__(self, event: Any) -> None:
        if self.should_stop is not None and self.should_stop():
            raise KeyboardInterrupt("cancelled from the page")
        if event.kind == "warning":
            self.messages.append(f"Warning: {event.message}")
            self._emit(ProgressEvent("warning", event.message))
        elif event.kind == "epoch_end":
            self._epoch_end(event)
        elif event.message:
            self.messages.append(event.message.strip())
            self._emit(ProgressEvent("status", event.message.strip()))
        if event.done is None:
            return
        if event.kind == "download":
            self._emit(
                ProgressEvent("progress", f"Downloading {event.label}", event.done, event.total, "bytes")
            )
        elif event.kind == "step":
            losses = format_losses(event.data.get("losses"))
            self._emit(ProgressEvent("progress", "Fine-tuning", event.done, event.total, losses))
        else:
            self._emit(ProgressEvent("progress", event.label, event.done, event.total, event.status))

    def _epoch_end(self, event: Any) -> None:
        data = event.data
        shot = None
        if data.get("preview") and self.previews is not None:
            shot = self.previews / f"epoch-{int(data['epoch']) + 1:03d}.png"
            shutil.copyfile(data["preview"], shot)
            self.preview_files.append(shot)
        message = f"epoch {int(data['epoch']) + 1}/{data['epochs']}: {format_losses(data['losses'])}"
        self.messages.append(message)
        self._emit(ProgressEvent("status", message, image=shot))


def _runtime(settings: Settings) -> Any:
    from dclip_cli.apps.config import Runtime

    return Runtime(
        device=settings.device, precision=settings.precision, compile=settings.compile,
        clip_model=settings.clip_model, batch_size=settings.batch_size,
    )  # fmt: skip


def _session(settings: Settings, events: _Events) -> Any:
    """The library session of these settings (CLIP, base models, metric networks loaded once), reporting to
    ``events`` for this job."""
    from dclip_cli.apps.session import Session
    from dclip_cli.progress import Reporter

    key = (settings.device, settings.clip_model, settings.precision, settings.compile)
    session = _SESSIONS.get(key)
    if session is None:
        session = Session(_runtime(settings))
        _SESSIONS[key] = session
    session.reporter = Reporter(events)
    return session


def forget_sessions() -> None:
    """Drop the loaded networks (tests; a page that changed its settings)."""
    _SESSIONS.clear()


def _config(
    settings: Settings,
    folder: Path,
    *,
    seed: int,
    compare: bool,
    t0: int | None = None,
    steps: int | None = None,
    reconstruction: bool = True,
) -> Any:
    """The ``RunConfig`` of one page job: the page's settings, this job's seed and sampling, output into ``folder``
    (a job without a reconstruction, a translation, leaves the page's PSNR out)."""
    from dclip_cli.apps.config import AutoFinetune, Outputs, RunConfig, Sampling

    metrics = settings.metrics
    if metrics is not None and not reconstruction:
        metrics = tuple(m for m in metrics if m != "psnr")
    return RunConfig(
        sampling=Sampling(t0=t0, steps=steps, seed=seed),
        outputs=Outputs(output=folder, compare=compare, metrics=metrics),
        runtime=_runtime(settings),
        auto=AutoFinetune(samples=settings.finetune_samples),
    )


# -- presets --------------------------------------------------------------------------------------------------------


def presets() -> list[PresetInfo]:
    """The installed presets (domains) and their named edits, sorted by name."""
    with user_errors():
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
                )  # fmt: skip
            )
        return out


def _key(edit: Any) -> str:
    return str(edit.key)


def parse_metric_names(text: str) -> tuple[str, ...] | None:
    """``--metrics`` (``all``, ``none`` or ``clip,lpips,identity,psnr``), with the CLI's messages."""
    with user_errors():
        from dclip_cli.apps.config import parse_metrics

        return parse_metrics(text)


def default_outputs() -> Path:
    """Where the page writes results unless ``dclip ui --outputs`` says otherwise: ``<data dir>/outputs``."""
    from dclip_cli.checkpoints import cache

    return cache.data_dir() / "outputs"


def plugin_warnings() -> list[str]:
    """Warnings of preset plugins that failed to load."""
    with user_errors():
        from dclip_cli.presets.manager import get_registry

        return list(get_registry().warnings)


def sample_image() -> Path:
    """The sample face shipped with dclip (a public-domain NASA portrait)."""
    with user_errors():
        from dclip_cli.images import sample_image_path

        return sample_image_path()


# -- runs -----------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _run_folder(settings: Settings, command: str, tag: str) -> Iterator[Path]:
    """A new, empty folder ``<outputs>/<date-time>-<command>-<tag>[-n]`` for one run; removed again when the run
    fails before writing any file."""
    settings.outputs.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}-{command}" + (f"-{safe_stem(tag)}" if tag else "")
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


def _output(report: Any, folder: Path, events: _Events, caption: Callable[[Any], str]) -> RunOutput:
    det = report.detection
    detection = None
    if det is not None:
        detection = {
            "domain": det.preset,
            "confidence": det.confidence,
            "method": det.method,
            "scores": det.scores,
        }
    items = tuple(
        OutputItem(
            input=r.input,
            image=r.outputs.image,
            sidecar=r.outputs.sidecar,
            caption=caption(r),
            metrics=dict(r.metrics),
            compare=r.outputs.compare,
            intermediates=tuple(r.outputs.intermediates),
        )  # fmt: skip
        for r in report.results
    )
    skipped = tuple((str(p.name), why) for p, why in report.failed)
    return RunOutput(report.preset, folder, items, skipped, tuple(events.messages), detection)


def detect_domain(settings: Settings, images: Sequence[Path], on_event: OnEvent | None = None) -> Detection:
    """Which installed preset the images belong to, with CLIP's confidence (as ``dclip edit`` without
    ``--domain``). ``sure`` is false below the CLI's threshold; the page then asks for a domain."""
    with user_errors(), _device(settings):
        import torch

        from dclip_cli.apps.inputs import DETECTION_SIZE, load_inputs
        from dclip_cli.detect import MIN_CONFIDENCE
        from dclip_cli.detect import detect_domain as _detect
        from dclip_cli.images import expand_inputs

        session = _session(settings, _Events(on_event))
        presets_ = session.presets()
        probe, failed = load_inputs(session, expand_inputs(images), DETECTION_SIZE, quiet=True)
        if not probe:
            if failed:
                exc = failed[0][1]
                raise UserError(exc.message, exc.hint or "Upload a PNG, JPEG or WebP image.")
            raise UserError("No image was given.", "Upload a PNG, JPEG or WebP image.")
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
    with user_errors(), _device(settings), _run_folder(settings, "edit", to) as folder:
        from dclip_cli.apps.edit import edit_images

        events = _Events(on_event)
        report = edit_images(
            list(images), to=to, domain=_domain(domain), strength=strength,
            config=_config(settings, folder, seed=seed, compare=compare, t0=t0, steps=steps),
            session=_session(settings, events),
        )  # fmt: skip
        caption = f"{to} (strength {strength:g})" if strength != 1 else to
        return _output(report, folder, events, lambda r: f"{r.input.stem}: {caption}")


def parse_strengths(text: str) -> list[float]:
    """``dclip edit --sweep`` values (``0,0.25,0.5``), with the CLI's messages."""
    with user_errors():
        from dclip_cli.apps.config import parse_sweep

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
    with user_errors(), _device(settings), _run_folder(settings, "sweep", to) as folder:
        from dclip_cli.apps.config import check_strength
        from dclip_cli.apps.edit import edit_images

        for s in strengths:
            check_strength(s)
        if not strengths:
            raise UserError("No strengths to sweep.", "Give strengths such as 0,0.25,0.5,0.75,1.")
        events = _Events(on_event)
        items: list[OutputItem] = []
        out = None
        for s in strengths:
            target = folder / f"strength-{s:g}"
            target.mkdir()  # a directory (its name has a dot, which -o would take for a file suffix)
            report = edit_images(
                list(images), to=to, domain=_domain(domain) or (out.domain if out else None), strength=s,
                config=_config(settings, target, seed=seed, compare=False, t0=t0, steps=steps),
                session=_session(settings, events),
            )  # fmt: skip
            run = _output(report, folder, events, functools.partial(_strength_caption, strength=s))
            out = RunOutput(
                run.domain, folder, (), run.skipped, (), (out.detection if out else None) or run.detection
            )
            items += run.items
        assert out is not None
        return RunOutput(out.domain, folder, tuple(items), out.skipped, tuple(events.messages), out.detection)


def _strength_caption(result: Any, *, strength: float) -> str:
    return f"{result.input.stem}: strength {strength:g}"


def validate_schedule(text: str, members: Sequence[str], *, with_base: bool = False) -> ScheduleCheck:
    """Check a mix schedule with ``dclip mix --schedule``'s parser and messages (nothing is loaded)."""
    from dclip_cli.apps.schedule import format_mix_schedule, parse_mix_schedule
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
    with user_errors(), _device(settings), _run_folder(settings, "mix", "+".join(members)) as folder:
        from dclip_cli.apps.mix import mix_images

        names = members + (["base"] if with_base else [])
        events = _Events(on_event)
        report = mix_images(
            list(images), to=members, with_base=with_base, schedule=schedule if schedule.strip() else None,
            domain=_domain(domain), config=_config(settings, folder, seed=seed, compare=compare),
            session=_session(settings, events),
        )  # fmt: skip
        caption = " + ".join(names)
        return _output(report, folder, events, lambda r: f"{r.input.stem}: {caption}")


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
    with user_errors(), _device(settings), _run_folder(settings, "translate", to or "") as folder:
        from dclip_cli.apps.translate import translate_images

        events = _Events(on_event)
        report = translate_images(
            list(images), to=to or None, domain=_domain(domain), iterations=int(iterations),
            save_intermediates=True, strength=strength, config=_config(settings, folder, seed=seed, compare=True, reconstruction=False),
            session=_session(settings, events),
        )  # fmt: skip
        what = f"translated, then {to}" if to else f"translated ({iterations} rounds)"
        return _output(report, folder, events, lambda r: f"{r.input.stem}: {what}")


# -- fine-tuning ----------------------------------------------------------------------------------------------------


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
    ``Fine-tuning`` progress over all training steps, the losses of each epoch with its preview image).
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
    with user_errors(), _device(settings), _run_folder(settings, "finetune", edit or trg or "") as folder:
        from dclip_cli.checkpoints import cache
        from dclip_cli.losses.clip import DirectionalCLIPLoss
        from dclip_cli.training import run_finetune

        events = _Events(on_event, should_stop=should_stop, previews=folder)
        session = _session(settings, events)
        preset = session.preset(domain)
        base = session.base(preset)
        precision = "auto" if settings.precision == "fp16" else settings.precision
        try:
            result = run_finetune(
                preset, edits=[edit] if edit else (), texts=[trg] if trg else (), src_text=src,
                images=list(images) or None, n_samples=samples,
                overrides={"mode": mode or None, "epochs": epochs, "seed": seed, "precision": precision},
                base_model=base.model, base_checkpoint=base.name, base_sha256=base.sha256,
                clip_model=settings.clip_model, clip_loss=DirectionalCLIPLoss(session.clip()),
                device=session.device, overwrite=overwrite, n_preview=previews, progress=session.reporter,
            )  # fmt: skip
        except KeyboardInterrupt:
            raise Cancelled("Fine-tuning was cancelled; nothing was saved.") from None
        library = cache.library_dir().resolve()
        names = []
        for path in result.artifacts:
            rel = path.resolve().relative_to(library) if library in path.resolve().parents else None
            names.append(f"{rel.parent.as_posix()}/{path.stem}" if rel is not None else path.name)
        events.messages += [f"Saved {name} to the edit library." for name in names]
        last = result.pairs[-1].losses if result.pairs else {}
        return FinetuneOutput(
            tuple(names), tuple(result.artifacts), result.seconds, dict(last), tuple(events.preview_files),
            tuple(events.messages),
        )  # fmt: skip
