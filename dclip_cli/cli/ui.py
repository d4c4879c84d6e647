"""``dclip ui``: serve a local web page (Gradio) for editing, sweeping, mixing, translating and fine-tuning."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dclip_cli.cli.options import (
    BatchSizeOpt,
    ClipModelOpt,
    CompileOpt,
    DomainOpt,
    MetricsOpt,
    Precision,
    PrecisionOpt,
)

EXAMPLES = """
Examples:

  dclip ui

  dclip ui --domain face --port 8080 --no-browser

  dclip ui --host 0.0.0.0 --auth alice:s3cret

  DCLIP_UI_AUTH=alice:s3cret dclip ui --host 0.0.0.0 --outputs ~/edits

The page needs the optional extra: pipx install 'dclip[ui]'. It serves on 127.0.0.1 (this machine only) unless
--host says otherwise. Uploads are copied to a temporary folder removed on exit; results go to --outputs.
"""


def ui_command(
    ctx: typer.Context,
    host: Annotated[
        str,
        typer.Option(
            "--host", help="Address to serve on; anything but loopback needs this flag and shows a warning."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535, help="TCP port.")] = 7860,
    domain: DomainOpt = None,
    device: Annotated[
        str | None,
        typer.Option("--device", help="Compute device for the page's jobs (default: the global --device)."),
    ] = None,
    precision: PrecisionOpt = Precision.auto,
    compile: CompileOpt = False,
    clip_model: ClipModelOpt = "ViT-B/16",
    metrics: MetricsOpt = "auto",
    batch_size: BatchSizeOpt = 4,
    outputs: Annotated[
        Path | None,
        typer.Option(
            "--outputs",
            "-o",
            file_okay=False,
            help="Folder for the results, one sub-folder per run (default: 'outputs' in dclip's data directory).",
        ),
    ] = None,
    auth: Annotated[
        str | None,
        typer.Option(
            "--auth", envvar="DCLIP_UI_AUTH", help="USER:PASSWORD the page asks for (also $DCLIP_UI_AUTH)."
        ),
    ] = None,
    browser: Annotated[
        bool, typer.Option("--browser/--no-browser", help="Open the page in the default web browser.")
    ] = True,
    max_upload_mb: Annotated[
        int, typer.Option("--max-upload-mb", min=1, help="Largest image upload accepted, in MB.")
    ] = 20,
    max_image_side: Annotated[
        int,
        typer.Option("--max-image-side", min=32, help="Largest image width or height accepted, in pixels."),
    ] = 4096,
) -> None:
    """Serve a local web page for editing, sweeping, mixing, translating and fine-tuning (the ui extra)."""
    from rich.markup import escape

    from dclip_cli import console
    from dclip_cli.cli._common import get_state, load_registry_with_warnings, tune_runtime
    from dclip_cli.cli.report import parse_option
    from dclip_cli.ui import server

    server.require_gradio()  # before anything else: say which command installs the extra
    from dclip_cli.ui import backend

    credentials = server.parse_auth(auth)
    metric_names = parse_option("--metrics", backend.parse_metric_names, metrics)
    state = get_state(ctx)
    if device is not None:
        if device.split(":", 1)[0].lower() not in ("auto", "cpu", "cuda", "mps"):
            raise typer.BadParameter(
                f"{device!r} is not a device; use auto, cpu, cuda, cuda:N or mps.", param_hint="'--device'"
            )
        state.device = device
    if not server.is_loopback(host):
        console.warn(
            escape(
                f"Serving on {host}: anyone who can reach this machine on port {port} can use the page, run jobs "
                "on its device and download their results"
                + ("." if credentials else "; protect it with --auth USER:PASSWORD.")
            )
        )
    registry = load_registry_with_warnings()
    if domain is not None:
        registry.preset(domain)  # an unknown --domain fails here, with the installed names
    tune_runtime(state)
    options = server.ServeOptions(
        outputs=outputs if outputs is not None else backend.default_outputs(),
        host=host,
        port=port,
        auth=credentials,
        open_browser=browser,
        domain=domain,
        device=state.device,
        precision=precision.value,
        compile=compile,
        clip_model=clip_model,
        metrics=metric_names,
        batch_size=batch_size,
        max_upload_mb=max_upload_mb,
        max_image_side=max_image_side,
    )

    def ready(url: str) -> None:
        console.out.print(url, markup=False, highlight=False, soft_wrap=True)
        console.info(
            escape(f"dclip ui is serving on {url} (results in {options.outputs}); press Ctrl+C to stop.")
        )

    server.serve(options, on_ready=ready)
    console.info("dclip ui stopped.")


def register(app: typer.Typer) -> None:
    app.command("ui", epilog=EXAMPLES)(ui_command)
