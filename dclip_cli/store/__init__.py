"""The model store: registered checkpoints by name, the files the losses need, base and edit models with their
provenance, and the edit library.

Above :mod:`dclip_cli.checkpoints` (spec records, cache layout, downloads of a spec) and
:mod:`dclip_cli.presets` (the plugins that register specs), below the training loop and the applications.
"""

from dclip_cli.store.library import (
    TrainingSettings,
    find_match,
    free_name,
    is_plain_name,
    metadata_problems,
    read_entry,
    write_entry_meta,
)
from dclip_cli.store.manage import (
    EditStatus,
    ModelStatus,
    Removal,
    VerifyResult,
    check_edit_file,
    check_file,
    detect_format,
    import_file,
    list_edits,
    list_models,
    model_path,
    plan_removal,
    remove,
    verify,
    verify_cached,
    verify_path,
)
from dclip_cli.store.models import LoadedModel, known_sha256, load_base, load_edit
from dclip_cli.store.specs import all_specs, fetch, find_spec, get_spec, manual_hint
from dclip_cli.store.weights import clip_file, identity_network, load_clip, load_lpips, lpips_trunk

__all__ = [
    "EditStatus",
    "LoadedModel",
    "ModelStatus",
    "Removal",
    "TrainingSettings",
    "VerifyResult",
    "all_specs",
    "check_edit_file",
    "check_file",
    "clip_file",
    "detect_format",
    "fetch",
    "find_match",
    "find_spec",
    "free_name",
    "get_spec",
    "identity_network",
    "import_file",
    "is_plain_name",
    "known_sha256",
    "list_edits",
    "list_models",
    "load_base",
    "load_clip",
    "load_edit",
    "load_lpips",
    "lpips_trunk",
    "manual_hint",
    "metadata_problems",
    "model_path",
    "plan_removal",
    "read_entry",
    "remove",
    "verify",
    "verify_cached",
    "verify_path",
    "write_entry_meta",
]
