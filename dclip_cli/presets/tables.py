"""Helpers for preset plugins that declare their named edits as a table.

A row is ``key: (source text, target text, official file name or None, download URL or None, t0 or None)``.
:func:`edits_from_table` turns the table into :class:`Edit` records and, for rows with an official fine-tuned
file, :class:`CheckpointSpec` records named ``<preset>/<key>`` that load on the preset's base checkpoint.
"""

from __future__ import annotations

from typing import Any

from dclip_cli.checkpoints.registry import CheckpointSpec
from dclip_cli.presets.preset import Edit

EditRow = tuple[str, str, "str | None", "str | None", "int | None"]


def edits_from_table(
    preset: str,
    table: dict[str, EditRow],
    *,
    base: str,
    arch: str,
    arch_config: dict[str, Any],
    source_note: str,
    manual_folder: str | None = None,
    approx_size: int | None = None,
) -> tuple[dict[str, Edit], list[CheckpointSpec]]:
    """Return the preset's edits and the checkpoint specs of its official fine-tuned models.

    Args:
        preset: preset name; fine-tuned specs are named ``<preset>/<key>``.
        table: rows as described in the module docstring.
        base: registry name of the base checkpoint the fine-tuned files were trained from.
        arch: ``"ddpm"`` or ``"adm"``.
        arch_config: the base architecture's hyper-parameters.
        source_note: provenance and licence line for the fine-tuned files.
        manual_folder: where a user can download the files by hand, for the manual instructions.
        approx_size: approximate size of each fine-tuned file, for display (the official ones are fp32 state dicts
            of the base architecture, as big as the base checkpoint).
    """
    edits: dict[str, Edit] = {}
    specs: list[CheckpointSpec] = []
    for key, (src, trg, file, url, t0) in table.items():
        name = f"{preset}/{key}" if file else None
        edits[key] = Edit(key=key, src=src, trg=trg, t0=t0, checkpoint=name)
        if file is None or name is None:
            continue
        manual = None
        if manual_folder:
            manual = f"Download {file} from {manual_folder} and run 'dclip models import {file} --as {name}'."
        specs.append(
            CheckpointSpec(
                name=name,
                filename=file,
                urls=(url,) if url else (),
                format="finetuned",
                arch=arch,
                arch_config=arch_config,
                base=base,
                t0=t0,
                description=f"Official DiffusionCLIP fine-tuned model ({preset}): {src} -> {trg}",
                license_note=source_note,
                manual=manual,
                approx_size=approx_size,
            )
        )
    return edits, specs
