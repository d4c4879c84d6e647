"""The Gradio page of ``dclip ui``: Edit, Mix, Translate, Fine-tune and Library tabs.

Every action calls :mod:`dclip_cli.ui.backend` (never dclip's library directly). Long work runs in Gradio's queue
under one concurrency id per device (``device``, limit 1), so jobs run one at a time and the page shows each
waiting job's position; dclip's progress events drive Gradio's progress bar. Failures become one message with
dclip's hint (``gr.Error``), never a traceback.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from dclip_cli.ui import backend

#: Gradio concurrency ids: device jobs run one at a time; the library's file operations one at a time
DEVICE = "device"
LIBRARY = "library"
AUTO = "auto"

CSS = """
#dclip-title h1 { margin-bottom: 0; }
.dclip-status { min-height: 1.5em; }
/* results fill their box whatever their pixel size (the models work at 256x256, tests at 32x32) */
.dclip-result img { width: 100% !important; height: 100% !important; object-fit: contain; }
"""

# -- helpers ------------------------------------------------------------------------------------------------------


def _error(exc: BaseException) -> gr.Error:
    if isinstance(exc, backend.UserError):
        text = exc.message + (f" Hint: {exc.hint}" if exc.hint else "")
        return gr.Error(text, duration=None, print_exception=False, title="dclip")
    if isinstance(exc, backend.Cancelled):
        return gr.Error(str(exc), duration=None, print_exception=False, title="Cancelled")
    return gr.Error(
        f"Unexpected error: {type(exc).__name__}: {exc} Hint: this is a bug in dclip; run 'dclip ui' with "
        "DCLIP_DEBUG=1 and report the traceback it prints.",
        duration=None,
        print_exception=False,
        title="dclip",
    )


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Show a failure as dclip's message and hint (``gr.Error``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            _debug(exc)
            raise _error(exc) from None

    return wrapper


def _debug(exc: BaseException) -> None:
    if os.environ.get("DCLIP_DEBUG", "") not in ("", "0"):
        import traceback

        from dclip_cli import console

        console.err.print("".join(traceback.format_exception(exc)), markup=False, highlight=False)


def _bind(progress: Any) -> backend.OnEvent:
    """dclip's progress events -> Gradio's progress bar."""

    def on_event(event: backend.ProgressEvent) -> None:
        if event.kind == "progress" and event.total:
            unit = "bytes" if event.detail == "bytes" else "steps"
            progress((int(event.done), int(event.total)), desc=event.label, unit=unit)
        elif event.kind == "status":
            progress(None, desc=event.label)

    return on_event


def _paths(files: Any) -> list[str]:
    """File component values (a path, a list of paths, or None) as a list of paths."""
    if files is None:
        return []
    if isinstance(files, (str, Path)):
        return [str(files)]
    out = []
    for f in files:
        out.append(str(f if isinstance(f, (str, Path)) else getattr(f, "name", f)))
    return out


def _sid(request: gr.Request | None) -> str:
    sid = getattr(request, "session_hash", None) if request is not None else None
    return str(sid or "anonymous")


def _messages(out: backend.RunOutput) -> str:
    lines = [f"**Domain:** {out.domain}" + _confidence(out.detection)]
    lines += [f"- {m}" for m in out.messages]
    lines += [f"- Skipped {name}: {why}" for name, why in out.skipped]
    lines.append(f"- Written to `{out.folder}`")
    return "\n".join(lines)


def _confidence(detection: dict[str, Any] | None) -> str:
    if not detection or detection.get("method") != "clip":
        return ""
    return f" (detected by CLIP, {detection['confidence']:.0%} confidence)"


def _metrics(out: backend.RunOutput) -> dict[str, dict[str, float]]:
    return {item.caption: {k: round(v, 4) for k, v in item.metrics.items()} for item in out.items}


def _downloads(out: backend.RunOutput) -> list[str]:
    files: list[str] = []
    for item in out.items:
        files += [str(item.image), str(item.sidecar)]
        if item.compare is not None:
            files.append(str(item.compare))
    return files


def _edit_names(info: backend.PresetInfo | None) -> list[str]:
    return [e.key for e in info.edits] if info is not None else []


def _describe_edits(info: backend.PresetInfo | None) -> str:
    if info is None:
        return ""
    named = ", ".join(f"`{e.key}`" for e in info.edits) or "none"
    return (
        f"Named edits of **{info.name}**: {named}. Or type any target text (the source text is "
        f"'{info.source_text}')."
    )


# -- the page -------------------------------------------------------------------------------------------------------


def build(settings: backend.Settings, *, domain: str | None = None, upload_root: Path) -> gr.Blocks:
    """Build the page.

    Args:
        settings: the settings of every job (``dclip ui``'s flags).
        domain: preselected domain (``--domain``), else automatic detection.
        upload_root: Gradio's upload folder; the only place (besides the sample image) files are taken from.
    """
    presets = {p.name: p for p in backend.presets()}
    names = list(presets)
    roots = [upload_root, backend.sample_image()]
    default_domain = domain if domain in presets else AUTO
    ft_default = domain if domain in presets else (names[0] if names else None)
    jobs: dict[str, threading.Event] = {}

    def preset_of(name: str | None, detected: str | None = None) -> backend.PresetInfo | None:
        if name and name != AUTO:
            return presets.get(name)
        return presets.get(detected or "") or (presets[names[0]] if len(names) == 1 else None)

    def stage(files: Any, request: gr.Request | None) -> list[Path]:
        return backend.stage_uploads(settings, _sid(request), _paths(files), allowed_roots=roots)

    domain_choices = [("auto (detect with CLIP)", AUTO)] + [(n, n) for n in names]

    with gr.Blocks(title="dclip", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        gr.Markdown(
            "# dclip\nEdit real photos with text using DiffusionCLIP. The same library, caches and defaults as "
            "the `dclip` command; results are written to "
            f"`{settings.outputs}`.",
            elem_id="dclip-title",
        )
        warnings = backend.plugin_warnings()
        if warnings:
            gr.Markdown("\n".join(f"- Warning: {w}" for w in warnings))
        if not names:
            gr.Markdown(
                "**No presets are installed.** Install a preset plugin, or check `DCLIP_LOAD_PLUGINS`."
            )

        # -- Edit ------------------------------------------------------------------------------------------------
        with gr.Tab("Edit", id="edit"):
            detected = gr.State(None)
            with gr.Row():
                with gr.Column(scale=1):
                    e_files = gr.File(
                        label="Images (one or several)",
                        file_count="multiple",
                        file_types=["image"],
                        elem_id="edit-images",
                    )
                    e_sample = gr.Button("Use the sample image", size="sm", elem_id="edit-sample")
                    e_domain = gr.Dropdown(
                        domain_choices, value=default_domain, label="Domain", elem_id="edit-domain"
                    )
                    e_detect = gr.Markdown(elem_id="edit-detected", elem_classes="dclip-status")
                    first = preset_of(default_domain)
                    e_to = gr.Dropdown(
                        _edit_names(first),
                        value=None,
                        label="Edit: a named edit or any target text",
                        allow_custom_value=True,
                        elem_id="edit-to",
                    )
                    e_edits_md = gr.Markdown(_describe_edits(first))
                    e_strength = gr.Slider(
                        0.0,
                        1.0,
                        value=backend.DEFAULT_STRENGTH,
                        step=0.05,
                        label="Strength (0 = reconstruction)",
                    )
                    e_seed = gr.Number(value=backend.DEFAULT_SEED, precision=0, label="Seed")
                    e_compare = gr.Checkbox(value=True, label="Compare: input | reconstruction | edit")
                    with gr.Accordion("Sweep and sampling", open=False):
                        e_sweep_on = gr.Checkbox(value=False, label="Sweep strengths (a gallery)")
                        e_sweep = gr.Textbox(value=backend.DEFAULT_SWEEP, label="Strengths")
                        e_t0 = gr.Number(
                            value=0,
                            precision=0,
                            minimum=0,
                            maximum=999,
                            label="t0 (0: the edit model's or preset's)",
                        )
                        e_steps = gr.Number(
                            value=0, precision=0, minimum=0, label="Generation steps (0: the preset's)"
                        )
                    e_run = gr.Button("Edit", variant="primary", elem_id="edit-run")
                with gr.Column(scale=2):
                    e_out = gr.Image(
                        label="Edit",
                        type="filepath",
                        interactive=False,
                        format="png",
                        elem_classes="dclip-result",
                        height=320,
                        elem_id="edit-output",
                    )
                    e_cmp = gr.Image(
                        label="input | reconstruction | edit",
                        type="filepath",
                        interactive=False,
                        format="png",
                        height=200,
                        elem_classes="dclip-result",
                        elem_id="edit-compare",
                    )
                    e_gallery = gr.Gallery(
                        label="All results",
                        columns=5,
                        height=220,
                        object_fit="contain",
                        preview=False,
                        fit_columns=False,
                        elem_id="edit-gallery",
                    )
                    e_metrics = gr.JSON(label="Metrics (from the sidecars)", elem_id="edit-metrics")
                    e_dl = gr.File(
                        label="Download image + sidecar", file_count="multiple", elem_id="edit-files"
                    )
                    e_status = gr.Markdown(elem_id="edit-status")

            def on_domain(name: str, det: str | None) -> tuple[Any, str]:
                info = preset_of(name, det)
                return gr.update(choices=_edit_names(info)), _describe_edits(info)

            @_guard
            def detect(files: Any, name: str, request: gr.Request) -> tuple[str, str | None, Any, str]:
                paths = _paths(files)
                if not paths:
                    return "", None, gr.update(), gr.skip()
                if name and name != AUTO:  # chosen: nothing to detect
                    return f"Domain **{name}** (chosen).", None, gr.skip(), gr.skip()
                d = backend.detect_domain(settings, stage(paths, request))
                if d.method == "only-preset":
                    text = f"Domain **{d.domain}** (the only installed preset)."
                elif d.sure:
                    text = f"Detected **{d.domain}** with {d.confidence:.0%} confidence."
                else:
                    others = ", ".join(f"{k} {v:.0%}" for k, v in d.scores.items())
                    text = f"Not sure which domain this is ({others}); choose one above."
                info = preset_of(name, d.domain if d.sure else None)
                return (
                    text,
                    (d.domain if d.sure else None),
                    gr.update(choices=_edit_names(info)),
                    _describe_edits(info),
                )

            @_guard
            def run_edit(
                files: Any,
                name: str,
                to: str | None,
                strength: float,
                seed: float | None,
                compare: bool,
                sweep_on: bool,
                sweep_text: str,
                t0: float | None,
                steps: float | None,
                request: gr.Request,
                progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio's injection idiom
            ) -> tuple[Any, ...]:
                if not (to or "").strip():
                    raise backend.UserError("Choose an edit or type a target text.", "For example: smiling.")
                images = stage(files, request)
                common = dict(
                    to=str(to).strip(),
                    domain=name,
                    seed=int(seed or 0),
                    t0=int(t0) if t0 else None,
                    steps=int(steps) if steps else None,
                    on_event=_bind(progress),
                )
                if sweep_on:
                    strengths = backend.parse_strengths(sweep_text)
                    out = backend.sweep(settings, images, strengths=strengths, **common)  # type: ignore[arg-type]
                else:
                    out = backend.edit(settings, images, strength=float(strength), compare=compare, **common)  # type: ignore[arg-type]
                first = out.items[-1] if sweep_on else out.items[0]
                gallery = [(str(i.image), i.caption) for i in out.items]
                return (
                    str(first.image),
                    str(first.compare) if first.compare is not None else None,
                    gallery,
                    _metrics(out),
                    _downloads(out),
                    _messages(out),
                )

            def sample() -> list[str]:
                return [str(backend.sample_image())]

            e_domain.change(on_domain, [e_domain, detected], [e_to, e_edits_md], api_visibility="private")
            e_files.upload(
                detect,
                [e_files, e_domain],
                [e_detect, detected, e_to, e_edits_md],
                concurrency_id=DEVICE,
                concurrency_limit=1,
                api_name="detect",
                show_progress="minimal",
            )
            e_sample.click(sample, None, e_files, api_visibility="private").then(
                detect,
                [e_files, e_domain],
                [e_detect, detected, e_to, e_edits_md],
                concurrency_id=DEVICE,
                concurrency_limit=1,
                api_visibility="private",
                show_progress="minimal",
            )
            e_run.click(
                run_edit,
                [e_files, e_domain, e_to, e_strength, e_seed, e_compare, e_sweep_on, e_sweep, e_t0, e_steps],
                [e_out, e_cmp, e_gallery, e_metrics, e_dl, e_status],
                concurrency_id=DEVICE,
                concurrency_limit=1,
                api_name="edit",
            )

        # -- Mix -------------------------------------------------------------------------------------------------
        with gr.Tab("Mix", id="mix"):
            with gr.Row():
                with gr.Column(scale=1):
                    m_files = gr.File(
                        label="Images", file_count="multiple", file_types=["image"], elem_id="mix-images"
                    )
                    m_domain = gr.Dropdown(domain_choices, value=default_domain, label="Domain")
                    m_to = gr.Dropdown(
                        _edit_names(first),
                        value=[],
                        multiselect=True,
                        allow_custom_value=True,
                        label="Edits to mix (two or more; named or free text)",
                        elem_id="mix-to",
                    )
                    m_base = gr.Checkbox(value=False, label="Add the base model as the last member")
                    m_schedule = gr.Textbox(
                        label="Schedule (THRESHOLD:WEIGHTS;...;0:WEIGHTS, empty: equal weights)",
                        placeholder="300:0.5,0.5;0:0.3,0.7",
                        elem_id="mix-schedule",
                    )
                    m_check = gr.Markdown(elem_id="mix-schedule-check", elem_classes="dclip-status")
                    m_seed = gr.Number(value=backend.DEFAULT_SEED, precision=0, label="Seed")
                    m_run = gr.Button("Mix", variant="primary", elem_id="mix-run")
                with gr.Column(scale=2):
                    m_out = gr.Image(
                        label="Mix",
                        type="filepath",
                        interactive=False,
                        format="png",
                        elem_classes="dclip-result",
                        height=320,
                        elem_id="mix-output",
                    )
                    m_cmp = gr.Image(
                        label="input | reconstruction | mix",
                        type="filepath",
                        interactive=False,
                        format="png",
                        height=200,
                        elem_classes="dclip-result",
                    )
                    m_metrics = gr.JSON(label="Metrics (from the sidecars)")
                    m_dl = gr.File(label="Download image + sidecar", file_count="multiple")
                    m_status = gr.Markdown()

            def validate(text: str, members: Sequence[str] | None, with_base: bool) -> str:
                check = backend.validate_schedule(text or "", list(members or []), with_base=with_base)
                if check.ok:
                    return f"**Valid:** {check.message}"
                return f"**Invalid:** {check.message}" + (f"\n\nHint: {check.hint}" if check.hint else "")

            @_guard
            def run_mix(
                files: Any,
                name: str,
                members: Sequence[str] | None,
                with_base: bool,
                schedule: str,
                seed: float | None,
                request: gr.Request,
                progress: gr.Progress = gr.Progress(),  # noqa: B008
            ) -> tuple[Any, ...]:
                images = stage(files, request)
                out = backend.mix(
                    settings,
                    images,
                    to=list(members or []),
                    schedule=schedule or "",
                    with_base=with_base,
                    domain=name,
                    seed=int(seed or 0),
                    on_event=_bind(progress),
                )
                first = out.items[0]
                return (
                    str(first.image),
                    str(first.compare) if first.compare is not None else None,
                    _metrics(out),
                    _downloads(out),
                    _messages(out),
                )

            m_domain.change(
                lambda n: gr.update(choices=_edit_names(preset_of(n))),
                m_domain,
                m_to,
                api_visibility="private",
            )
            # validates as you type: not queued behind device jobs (it loads nothing)
            m_schedule.change(
                validate,
                [m_schedule, m_to, m_base],
                m_check,
                api_name="validate_schedule",
                show_progress="hidden",
                trigger_mode="always_last",
                concurrency_limit=None,
            )
            for member_change in (m_to.change, m_base.change):
                member_change(
                    validate,
                    [m_schedule, m_to, m_base],
                    m_check,
                    api_visibility="private",
                    show_progress="hidden",
                    trigger_mode="always_last",
                    concurrency_limit=None,
                )
            m_run.click(
                run_mix,
                [m_files, m_domain, m_to, m_base, m_schedule, m_seed],
                [m_out, m_cmp, m_metrics, m_dl, m_status],
                concurrency_id=DEVICE,
                concurrency_limit=1,
                api_name="mix",
            )

        # -- Translate -------------------------------------------------------------------------------------------
        with gr.Tab("Translate", id="translate"):
            with gr.Row():
                with gr.Column(scale=1):
                    t_files = gr.File(
                        label="Sketches, paintings, other-domain images",
                        file_count="multiple",
                        file_types=["image"],
                        elem_id="translate-images",
                    )
                    t_domain = gr.Dropdown(domain_choices, value=default_domain, label="Domain")
                    t_iters = gr.Slider(
                        1,
                        backend.MAX_ITERATIONS,
                        value=backend.DEFAULT_ITERATIONS,
                        step=1,
                        label="Iterations (noise to t0 and project, each round)",
                    )
                    t_to = gr.Dropdown(
                        _edit_names(first),
                        value=None,
                        allow_custom_value=True,
                        label="Then edit (optional): named edit or target text",
                    )
                    t_strength = gr.Slider(
                        0.0, 1.0, value=backend.DEFAULT_STRENGTH, step=0.05, label="Strength"
                    )
                    t_seed = gr.Number(value=backend.DEFAULT_SEED, precision=0, label="Seed")
                    t_run = gr.Button("Translate", variant="primary", elem_id="translate-run")
                with gr.Column(scale=2):
                    t_out = gr.Image(
                        label="Result",
                        type="filepath",
                        interactive=False,
                        format="png",
                        elem_classes="dclip-result",
                        height=320,
                        elem_id="translate-output",
                    )
                    t_inter = gr.Gallery(
                        label="After each round",
                        columns=6,
                        height=220,
                        object_fit="contain",
                        preview=False,
                        fit_columns=False,
                        elem_id="translate-rounds",
                    )
                    t_cmp = gr.Image(
                        label="input | projection | edit",
                        type="filepath",
                        interactive=False,
                        format="png",
                        height=200,
                        elem_classes="dclip-result",
                    )
                    t_metrics = gr.JSON(label="Metrics (from the sidecars)")
                    t_dl = gr.File(label="Download image + sidecar", file_count="multiple")
                    t_status = gr.Markdown()

            @_guard
            def run_translate(
                files: Any,
                name: str,
                iterations: float,
                to: str | None,
                strength: float,
                seed: float | None,
                request: gr.Request,
                progress: gr.Progress = gr.Progress(),  # noqa: B008
            ) -> tuple[Any, ...]:
                images = stage(files, request)
                out = backend.translate(
                    settings,
                    images,
                    domain=name,
                    iterations=int(iterations),
                    to=(to or "").strip() or None,
                    strength=float(strength),
                    seed=int(seed or 0),
                    on_event=_bind(progress),
                )
                first = out.items[0]
                rounds = [(str(p), f"round {i}") for i, p in enumerate(first.intermediates, start=1)]
                return (
                    str(first.image),
                    rounds,
                    str(first.compare) if first.compare is not None else None,
                    _metrics(out),
                    _downloads(out),
                    _messages(out),
                )

            t_domain.change(
                lambda n: gr.update(choices=_edit_names(preset_of(n))),
                t_domain,
                t_to,
                api_visibility="private",
            )
            t_run.click(
                run_translate,
                [t_files, t_domain, t_iters, t_to, t_strength, t_seed],
                [t_out, t_inter, t_cmp, t_metrics, t_dl, t_status],
                concurrency_id=DEVICE,
                concurrency_limit=1,
                api_name="translate",
            )

        # -- Fine-tune -------------------------------------------------------------------------------------------
        with gr.Tab("Fine-tune", id="finetune"):
            ft_first = presets.get(ft_default or "")
            with gr.Row():
                with gr.Column(scale=1):
                    f_domain = gr.Dropdown(names, value=ft_default, label="Domain", elem_id="ft-domain")
                    f_edit = gr.Dropdown(
                        [""] + _edit_names(ft_first), value="", label="Named edit", elem_id="ft-edit"
                    )
                    f_src = gr.Textbox(label="…or source text (empty: the preset's)", elem_id="ft-src")
                    f_trg = gr.Textbox(label="…and target text", elem_id="ft-trg")
                    f_mode = gr.Radio(
                        ["preset default", "original", "efficient"], value="preset default", label="Mode"
                    )
                    f_epochs = gr.Number(
                        value=ft_first.epochs if ft_first else 1, precision=0, minimum=1, label="Epochs"
                    )
                    f_images = gr.File(
                        label="Training photos (optional)", file_count="multiple", file_types=["image"]
                    )
                    f_samples = gr.Number(
                        value=ft_first.n_train_images if ft_first else 0,
                        precision=0,
                        minimum=0,
                        label="Samples drawn from the base model (0: only your photos)",
                    )
                    f_previews = gr.Number(
                        value=backend.DEFAULT_PREVIEWS, precision=0, label="Preview samples"
                    )
                    f_seed = gr.Number(value=backend.DEFAULT_SEED, precision=0, label="Seed")
                    f_overwrite = gr.Checkbox(
                        value=False, label="Replace an edit of the same name in the library"
                    )
                    with gr.Row():
                        f_run = gr.Button("Fine-tune", variant="primary", elem_id="ft-run")
                        f_cancel = gr.Button("Cancel", variant="stop", elem_id="ft-cancel")
                with gr.Column(scale=2):
                    f_status = gr.Markdown(elem_id="ft-status", elem_classes="dclip-status")
                    f_preview = gr.Image(
                        label="Preview after the last epoch", type="filepath", interactive=False
                    )
                    f_log = gr.Textbox(
                        label="Log", lines=12, max_lines=24, interactive=False, elem_id="ft-log"
                    )
                    f_result = gr.JSON(label="Added to the library", elem_id="ft-result")

            def run_ft(
                name: str | None,
                edit: str | None,
                src: str | None,
                trg: str | None,
                mode: str,
                epochs: float | None,
                files: Any,
                samples: float | None,
                previews: float | None,
                seed: float | None,
                overwrite: bool,
                request: gr.Request,
                progress: gr.Progress = gr.Progress(),  # noqa: B008
            ) -> Any:
                try:
                    if not name:
                        raise backend.UserError("Choose a domain.", "For example: face.")
                    images = stage(files, request) if _paths(files) else []
                except Exception as exc:
                    raise _error(exc) from None
                sid = _sid(request)
                stop = threading.Event()
                jobs[sid] = stop
                events: queue.Queue[backend.ProgressEvent | None] = queue.Queue()
                result: dict[str, Any] = {}

                def work() -> None:
                    try:
                        result["out"] = backend.finetune_job(
                            settings,
                            domain=name,
                            edit=edit or None,
                            src=src,
                            trg=trg,
                            mode=None if mode == "preset default" else mode,
                            epochs=int(epochs) if epochs else None,
                            images=images,
                            samples=int(samples or 0),
                            previews=int(previews or 0),
                            seed=int(seed or 0),
                            overwrite=overwrite,
                            on_event=events.put,
                            should_stop=stop.is_set,
                        )
                    except BaseException as exc:  # noqa: BLE001 - reported on the page
                        result["error"] = exc
                    finally:
                        events.put(None)

                worker = threading.Thread(target=work, name="dclip-finetune", daemon=True)
                worker.start()
                log: list[str] = []
                status = "Starting…"
                preview: str | None = None
                eta = _Eta()
                shown = 0.0
                while True:
                    try:
                        event = events.get(timeout=0.5)
                    except queue.Empty:
                        event = None if not worker.is_alive() else backend.ProgressEvent("status", "")
                    if event is None:
                        break
                    changed = False
                    if event.kind == "progress":
                        if event.total:
                            unit = "bytes" if event.detail == "bytes" else "steps"
                            progress((int(event.done), int(event.total)), desc=event.label, unit=unit)
                        changed = event.label != eta.label
                        status = eta.describe(event)
                    elif event.label:
                        log.append(("Warning: " if event.kind == "warning" else "") + event.label)
                        if event.image is not None:
                            preview = str(event.image)
                    now = time.monotonic()
                    if changed or now - shown >= 0.5:
                        shown = now
                        yield status, "\n".join(log), preview, gr.skip()
                worker.join()
                jobs.pop(sid, None)
                if "error" in result:
                    failure = result["error"]
                    _debug(failure)
                    raise _error(failure)
                out: backend.FinetuneOutput = result["out"]
                log += list(out.messages[-len(out.names) :]) if out.names else []
                done = {
                    "names": list(out.names),
                    "seconds": round(out.seconds, 1),
                    "losses": {k: round(v, 4) for k, v in out.losses.items()},
                }
                yield (
                    f"**Done:** added {', '.join(out.names)} to the library in {out.seconds:.1f} s.",
                    "\n".join(log),
                    str(out.previews[-1]) if out.previews else preview,
                    done,
                )

            def cancel(request: gr.Request) -> str:
                stop = jobs.get(_sid(request))
                if stop is None:
                    return "No fine-tuning job of this page is running."
                stop.set()
                return "Cancelling… the job stops after its current step; nothing is saved."

            def on_ft_domain(name: str | None) -> tuple[Any, Any, Any]:
                info = presets.get(name or "")
                if info is None:
                    return gr.update(choices=[""], value=""), gr.skip(), gr.skip()
                return (
                    gr.update(choices=[""] + _edit_names(info), value=""),
                    info.epochs,
                    info.n_train_images,
                )

            f_domain.change(
                on_ft_domain,
                f_domain,
                [f_edit, f_epochs, f_samples],
                api_visibility="private",
            )
            ft_event = f_run.click(
                run_ft,
                [
                    f_domain,
                    f_edit,
                    f_src,
                    f_trg,
                    f_mode,
                    f_epochs,
                    f_images,
                    f_samples,
                    f_previews,
                    f_seed,
                    f_overwrite,
                ],
                [f_status, f_log, f_preview, f_result],
                concurrency_id=DEVICE,
                concurrency_limit=1,
                api_name="finetune",
            )
            # the flag stops a running job at its next step (nothing is saved); ``cancels`` drops a queued one
            f_cancel.click(cancel, None, f_status, api_name="cancel", cancels=[ft_event], queue=False)

        # -- Library ---------------------------------------------------------------------------------------------
        with gr.Tab("Library", id="library"):
            headers = ["name", "kind", "size", "source text", "target text", "t0", "base", "about"]
            l_table = gr.Dataframe(
                headers=headers, interactive=False, wrap=True, elem_id="library-table", label="Library"
            )
            l_refresh = gr.Button("Refresh", size="sm")
            with gr.Row():
                with gr.Column():
                    l_name = gr.Dropdown([], label="Entry to delete", elem_id="library-delete-name")
                    l_delete = gr.Button("Delete", variant="stop", elem_id="library-delete")
                with gr.Column():
                    l_file = gr.File(
                        label="Checkpoint to import (.safetensors, .pth, .pt, .ckpt)",
                        file_types=[".safetensors", ".pth", ".pt", ".ckpt", ".bin"],
                    )
                    l_as = gr.Textbox(
                        label="Import as (a registered name, or preset/edit)", placeholder="face/my-edit"
                    )
                    l_overwrite = gr.Checkbox(value=False, label="Replace an existing entry")
                    l_import = gr.Button("Import", elem_id="library-import")
            l_status = gr.Markdown(elem_id="library-status")

            @_guard
            def rows() -> tuple[list[list[Any]], Any]:
                table = [
                    [
                        r.name,
                        r.kind,
                        _human(r.size),
                        r.src_text,
                        r.trg_text,
                        "" if r.t0 is None else r.t0,
                        r.base,
                        r.description,
                    ]
                    for r in backend.library_rows()
                ]
                return table, gr.update(choices=[row[0] for row in table], value=None)

            @_guard
            def delete(name: str | None) -> tuple[str, list[list[Any]], Any]:
                if not name:
                    return "Choose an entry to delete.", *rows()
                removed = backend.delete_entry(name)
                return f"Deleted {name} ({', '.join(removed) or 'nothing on disk'}).", *rows()

            @_guard
            def do_import(
                file: Any, name: str, overwrite: bool, request: gr.Request
            ) -> tuple[str, list[list[Any]], Any]:
                paths = _paths(file)
                if not paths:
                    raise backend.UserError("Choose a checkpoint file to import.")
                if not (name or "").strip():
                    raise backend.UserError("Give the name to import it as.", "For example: face/my-edit.")
                staged = backend.stage_uploads(
                    settings, _sid(request), paths, allowed_roots=[upload_root], what="checkpoint"
                )
                dest = backend.import_file(staged[0], name, overwrite=overwrite, remove_source=True)
                return f"Imported as {name.strip()} ({dest.name}).", *rows()

            l_refresh.click(rows, None, [l_table, l_name], api_name="library", concurrency_id=LIBRARY)
            demo.load(rows, None, [l_table, l_name], api_visibility="private")
            l_delete.click(
                delete,
                l_name,
                [l_status, l_table, l_name],
                api_name="delete",
                concurrency_id=LIBRARY,
                concurrency_limit=1,
                js="(name) => (name && confirm('Delete ' + name + ' from the library?')) ? name : null",
            )
            l_import.click(
                do_import,
                [l_file, l_as, l_overwrite],
                [l_status, l_table, l_name],
                api_name="import",
                concurrency_id=LIBRARY,
                concurrency_limit=1,
            )
            ft_event.success(rows, None, [l_table, l_name], api_visibility="private")

        def drop(request: gr.Request) -> None:
            backend.drop_session(settings, _sid(request))

        demo.unload(drop)
    return demo


class _Eta:
    """Estimated time left of the current progress label, from its rate so far."""

    def __init__(self) -> None:
        self.label = ""
        self.start = 0.0
        self.first = 0.0

    def describe(self, event: backend.ProgressEvent) -> str:
        now = time.monotonic()
        if event.label != self.label:
            self.label, self.start, self.first = event.label, now, event.done
        if not event.total:
            return f"{event.label}…"
        if event.detail == "bytes":
            text = f"{event.label}: {event.done / 1e6:.1f}/{event.total / 1e6:.1f} MB"
        else:
            text = f"{event.label}: {int(event.done)}/{int(event.total)}"
        rate_done = event.done - self.first
        if rate_done > 0 and now > self.start:
            left = (now - self.start) / rate_done * (event.total - event.done)
            text += f", about {_seconds(left)} left"
        if event.detail and event.detail != "bytes":
            text += f" ({event.detail})"
        return text


def _seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"  # pragma: no cover
