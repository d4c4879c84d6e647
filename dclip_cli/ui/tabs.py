"""The Edit, Mix and Translate tabs of ``dclip ui``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gradio as gr

from dclip_cli.ui import backend
from dclip_cli.ui.widgets import (
    AUTO,
    DEVICE,
    Page,
    bind,
    describe_edits,
    downloads,
    edit_names,
    file_paths,
    guard,
    messages,
    metrics,
)


def edit_tab(page: Page) -> None:
    """Edit: images (or the sample), a domain (or detection), a named edit or text, strength, sweep."""
    settings, default_domain, preset_of, stage, domain_choices = (
        page.settings,
        page.default_domain,
        page.preset_of,
        page.stage,
        page.domain_choices,
    )
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
                    edit_names(first),
                    value=None,
                    label="Edit: a named edit or any target text",
                    allow_custom_value=True,
                    elem_id="edit-to",
                )
                e_edits_md = gr.Markdown(describe_edits(first))
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
                e_dl = gr.File(label="Download image + sidecar", file_count="multiple", elem_id="edit-files")
                e_status = gr.Markdown(elem_id="edit-status")

        def on_domain(name: str, det: str | None) -> tuple[Any, str]:
            info = preset_of(name, det)
            return gr.update(choices=edit_names(info)), describe_edits(info)

        @guard
        def detect(files: Any, name: str, request: gr.Request) -> tuple[str, str | None, Any, str]:
            paths = file_paths(files)
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
                gr.update(choices=edit_names(info)),
                describe_edits(info),
            )

        @guard
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
                on_event=bind(progress),
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
                metrics(out),
                downloads(out),
                messages(out),
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


def mix_tab(page: Page) -> None:
    """Mix: two or more edits and a schedule that is checked as you type."""
    settings, default_domain, preset_of, stage, domain_choices = (
        page.settings,
        page.default_domain,
        page.preset_of,
        page.stage,
        page.domain_choices,
    )
    first = preset_of(default_domain)
    with gr.Tab("Mix", id="mix"):
        with gr.Row():
            with gr.Column(scale=1):
                m_files = gr.File(
                    label="Images", file_count="multiple", file_types=["image"], elem_id="mix-images"
                )
                m_domain = gr.Dropdown(domain_choices, value=default_domain, label="Domain")
                m_to = gr.Dropdown(
                    edit_names(first),
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

        @guard
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
                on_event=bind(progress),
            )
            first = out.items[0]
            return (
                str(first.image),
                str(first.compare) if first.compare is not None else None,
                metrics(out),
                downloads(out),
                messages(out),
            )

        m_domain.change(
            lambda n: gr.update(choices=edit_names(preset_of(n))),
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


def translate_tab(page: Page) -> None:
    """Translate: an image of another domain (a sketch, a painting) projected into the domain."""
    settings, default_domain, preset_of, stage, domain_choices = (
        page.settings,
        page.default_domain,
        page.preset_of,
        page.stage,
        page.domain_choices,
    )
    first = preset_of(default_domain)
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
                    edit_names(first),
                    value=None,
                    allow_custom_value=True,
                    label="Then edit (optional): named edit or target text",
                )
                t_strength = gr.Slider(0.0, 1.0, value=backend.DEFAULT_STRENGTH, step=0.05, label="Strength")
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

        @guard
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
                on_event=bind(progress),
            )
            first = out.items[0]
            rounds = [(str(p), f"round {i}") for i, p in enumerate(first.intermediates, start=1)]
            return (
                str(first.image),
                rounds,
                str(first.compare) if first.compare is not None else None,
                metrics(out),
                downloads(out),
                messages(out),
            )

        t_domain.change(
            lambda n: gr.update(choices=edit_names(preset_of(n))),
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
