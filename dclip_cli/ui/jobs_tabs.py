"""The Fine-tune and Library tabs of ``dclip ui``."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import gradio as gr

from dclip_cli.ui import backend
from dclip_cli.ui.widgets import (
    DEVICE,
    LIBRARY,
    Eta,
    Page,
    debug,
    edit_names,
    error,
    file_paths,
    guard,
    human,
    session_id,
)


def finetune_tab(page: Page) -> Any:
    """Fine-tune: a named edit or texts, mode, epochs, images; a cancellable job with live progress.

    Returns the run event (the Library tab refreshes after it).
    """
    settings, presets, names, ft_default, jobs, stage = (
        page.settings,
        page.presets,
        page.names,
        page.ft_default,
        page.jobs,
        page.stage,
    )
    with gr.Tab("Fine-tune", id="finetune"):
        ft_first = presets.get(ft_default or "")
        with gr.Row():
            with gr.Column(scale=1):
                f_domain = gr.Dropdown(names, value=ft_default, label="Domain", elem_id="ft-domain")
                f_edit = gr.Dropdown(
                    [""] + edit_names(ft_first), value="", label="Named edit", elem_id="ft-edit"
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
                f_previews = gr.Number(value=backend.DEFAULT_PREVIEWS, precision=0, label="Preview samples")
                f_seed = gr.Number(value=backend.DEFAULT_SEED, precision=0, label="Seed")
                f_overwrite = gr.Checkbox(
                    value=False, label="Replace an edit of the same name in the library"
                )
                with gr.Row():
                    f_run = gr.Button("Fine-tune", variant="primary", elem_id="ft-run")
                    f_cancel = gr.Button("Cancel", variant="stop", elem_id="ft-cancel")
            with gr.Column(scale=2):
                f_status = gr.Markdown(elem_id="ft-status", elem_classes="dclip-status")
                f_preview = gr.Image(label="Preview after the last epoch", type="filepath", interactive=False)
                f_log = gr.Textbox(label="Log", lines=12, max_lines=24, interactive=False, elem_id="ft-log")
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
                images = stage(files, request) if file_paths(files) else []
            except Exception as exc:
                raise error(exc) from None
            sid = session_id(request)
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
            eta = Eta()
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
                debug(failure)
                raise error(failure)
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
            stop = jobs.get(session_id(request))
            if stop is None:
                return "No fine-tuning job of this page is running."
            stop.set()
            return "Cancelling… the job stops after its current step; nothing is saved."

        def on_ft_domain(name: str | None) -> tuple[Any, Any, Any]:
            info = presets.get(name or "")
            if info is None:
                return gr.update(choices=[""], value=""), gr.skip(), gr.skip()
            return (
                gr.update(choices=[""] + edit_names(info), value=""),
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
    return ft_event


def library_tab(page: Page, demo: gr.Blocks, ft_event: Any) -> None:
    """Library: the cached checkpoints and fine-tuned edits; delete and import."""
    settings = page.settings
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

        @guard
        def rows() -> tuple[list[list[Any]], Any]:
            table = [
                [
                    r.name,
                    r.kind,
                    human(r.size),
                    r.src_text,
                    r.trg_text,
                    "" if r.t0 is None else r.t0,
                    r.base,
                    r.description,
                ]
                for r in backend.library_rows()
            ]
            return table, gr.update(choices=[row[0] for row in table], value=None)

        @guard
        def delete(name: str | None) -> tuple[str, list[list[Any]], Any]:
            if not name:
                return "Choose an entry to delete.", *rows()
            removed = backend.delete_entry(name)
            return f"Deleted {name} ({', '.join(removed) or 'nothing on disk'}).", *rows()

        @guard
        def do_import(
            file: Any, name: str, overwrite: bool, request: gr.Request
        ) -> tuple[str, list[list[Any]], Any]:
            paths = file_paths(file)
            if not paths:
                raise backend.UserError("Choose a checkpoint file to import.")
            if not (name or "").strip():
                raise backend.UserError("Give the name to import it as.", "For example: face/my-edit.")
            staged = backend.stage_uploads(
                settings, session_id(request), paths, allowed_roots=[page.roots[0]], what="checkpoint"
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
