"""The Gradio page of ``dclip ui``: Edit, Mix, Translate, Fine-tune and Library tabs.

Every action calls :mod:`dclip_cli.ui.backend` (never dclip's library directly). Long work runs in Gradio's queue
under one concurrency id per device (``device``, limit 1), so jobs run one at a time and the page shows each
waiting job's position; dclip's progress events drive Gradio's progress bar. Failures become one message with
dclip's hint (``gr.Error``), never a traceback. The tabs are built in :mod:`.tabs` and :mod:`.jobs_tabs`.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from dclip_cli.ui import backend
from dclip_cli.ui.jobs_tabs import finetune_tab, library_tab
from dclip_cli.ui.tabs import edit_tab, mix_tab, translate_tab
from dclip_cli.ui.widgets import AUTO, CSS, Page, session_id

__all__ = ["CSS", "build"]


def build(settings: backend.Settings, *, domain: str | None = None, upload_root: Path) -> gr.Blocks:
    """Build the page.

    Args:
        settings: the settings of every job (``dclip ui``'s flags).
        domain: preselected domain (``--domain``), else automatic detection.
        upload_root: Gradio's upload folder; the only place (besides the sample image) files are taken from.
    """
    presets = {p.name: p for p in backend.presets()}
    names = list(presets)
    page = Page(
        settings=settings,
        presets=presets,
        roots=[upload_root, backend.sample_image()],
        default_domain=domain if domain in presets else AUTO,
        ft_default=domain if domain in presets else (names[0] if names else None),
    )
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
        edit_tab(page)
        mix_tab(page)
        translate_tab(page)
        ft_event = finetune_tab(page)
        library_tab(page, demo, ft_event)

        def drop(request: gr.Request) -> None:
            backend.drop_session(settings, session_id(request))

        demo.unload(drop)
    return demo
