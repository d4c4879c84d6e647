"""Which model performs an edit: ``--model``, else the edit library, else the official fine-tuned checkpoint of a
named edit, else one fine-tuned now (and stored in the library for next time)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dclip_cli.apps.config import QUICK_MAX_IMAGES, AutoFinetune, SamplingSettings
from dclip_cli.distributed import current
from dclip_cli.errors import CheckpointError, ConfigError, DclipError, UnknownCheckpointError

if TYPE_CHECKING:
    from dclip_cli.apps.session import Session
    from dclip_cli.presets.preset import Preset
    from dclip_cli.store import LoadedModel
    from dclip_cli.textedit import TextEdit

_MODEL_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")


def model_from_arg(session: Session, preset: Preset, model: str) -> LoadedModel:
    """``--model``: a file (dclip ``.safetensors`` artifact or official ``.pth``), a library name (``face/pixar``,
    or ``pixar`` within the preset) or a registry name of a fine-tuned checkpoint.

    Raises:
        CheckpointError: ``model`` names no file, library entry or registry checkpoint; or the artifact does not
            fit the base (``IncompatibleModelError``).
    """
    from dclip_cli.checkpoints import cache
    from dclip_cli.store import is_plain_name, load_edit

    base = session.base(preset)
    path = Path(model).expanduser()
    if path.is_file():
        return load_edit(path, base, name=path.name, source="model-file")
    if path.is_dir():
        raise CheckpointError(f"--model {model} is a directory, not a model file.", hint="Pass the file.")
    if model.lower().endswith(_MODEL_FILE_SUFFIXES) or model.startswith(("./", "../", "/", "~")):
        raise CheckpointError(
            f"The model file {model} does not exist.",
            hint="Check the path, or pass a library name such as face/pixar ('dclip models list').",
        )
    lib_name = model if "/" in model else f"{preset.name}/{model}"
    lib = cache.find_library_file(lib_name) if is_plain_name(lib_name) else None
    if lib is not None:
        return load_edit(lib, base, name=lib_name, source="model-name")
    try:
        fetched = session_fetch(session, model)
    except UnknownCheckpointError as exc:
        raise UnknownCheckpointError(
            f"--model {model!r} is neither a file, an edit in your library, nor a registered checkpoint.",
            hint="Run 'dclip models list' to see the library and the registry.",
        ) from exc
    return load_edit(fetched, base, name=model, source="model-name")


def session_fetch(session: Session, name: str) -> Path:
    """Fetch a registry checkpoint with the session's progress reporting."""
    from dclip_cli.store import fetch

    return fetch(name, progress=session.reporter)


def resolve_edit_model(
    session: Session,
    preset: Preset,
    target: TextEdit,
    settings: SamplingSettings,
    *,
    model: str | None = None,
    auto: AutoFinetune | None = None,
    finetune_images: Sequence[Path] = (),
) -> LoadedModel:
    """Find or make the model that performs ``target`` on ``preset``'s base, in this order:

    1. ``model``: see :func:`model_from_arg`;
    2. an artifact in the user's edit library with the same texts, ``settings.t0`` and base
       (:func:`dclip_cli.store.find_match`);
    3. for a named edit with an official fine-tuned checkpoint: that checkpoint (downloaded);
    4. fine-tune now with the preset's recipe, quickly (one epoch on ``finetune_images`` plus ``auto.samples``
       samples of the base model), and store the result in the library, so the next edit with the same text is
       only inversion and generation.

    The path taken is reported through the session and recorded in the result's ``source``.

    Raises:
        CheckpointError: as :func:`model_from_arg`.
        ConfigError: fine-tuning would be needed but ``auto.allowed`` is false.
    """
    from dclip_cli.store import find_match, load_edit

    auto = auto or AutoFinetune()
    reporter = session.reporter
    if model is not None:
        loaded = model_from_arg(session, preset, model)
        reporter.info(loaded.describe())
        return loaded
    base = session.base(preset)
    match = find_match(preset, target.src, target.trg, base_sha256=base.sha256, t0=settings.t0)
    if match is not None:
        loaded = load_edit(match, base, name=f"{preset.name}/{match.stem}", source="library")
        reporter.info(loaded.describe())
        return loaded
    if target.checkpoint:
        try:
            fetched = session_fetch(session, target.checkpoint)
            loaded = load_edit(fetched, base, name=target.checkpoint, source="official")
            if loaded.t0 is None:
                loaded.t0 = target.t0
            loaded.src_text, loaded.trg_text = target.src, target.trg
            reporter.info(loaded.describe())
            return loaded
        except (CheckpointError, OSError) as exc:
            detail = exc.message if isinstance(exc, DclipError) else str(exc)
            if not auto.allowed:
                raise
            reporter.warn(
                f"The official model for {target.key!r} is not available ({detail}); fine-tuning instead."
            )
    if not auto.allowed:
        raise ConfigError(
            f"No fine-tuned model for {target.label} on preset {preset.name!r} was found, and fine-tuning is "
            "switched off.",
            hint="Drop --no-finetune to fine-tune one now, run 'dclip finetune', or pass --model.",
        )
    return finetune_now(session, preset, target, settings, images=finetune_images, n_samples=auto.samples)


def finetune_now(
    session: Session,
    preset: Preset,
    target: TextEdit,
    settings: SamplingSettings,
    *,
    images: Sequence[Path],
    n_samples: int,
) -> LoadedModel:
    """Path 4 of :func:`resolve_edit_model`, through the fine-tuning job (:func:`dclip_cli.training.run_finetune`)."""
    from dclip_cli.losses.clip import DirectionalCLIPLoss
    from dclip_cli.store import LoadedModel, free_name, known_sha256, load_edit
    from dclip_cli.training import run_finetune

    base = session.base(preset)
    images = list(images)[:QUICK_MAX_IMAGES]
    t0 = settings.t0
    session.reporter.info(
        f"No fine-tuned model for {target.label} yet: fine-tuning one now on {len(images) + n_samples} image(s) "
        f"(t0 {t0}, 1 epoch); it is saved to your edit library for next time."
    )
    result = run_finetune(
        preset,
        edits=[target],
        images=images or None,
        n_samples=n_samples,
        overrides={
            "t0": t0,
            "n_inv_steps": settings.n_inv_steps,
            "n_gen_steps": settings.n_gen_steps,
            "epochs": 1,
            "seed": settings.seed,
            "precision": session.training_precision(),
        },
        base_model=base.model,
        base_checkpoint=base.name,
        base_sha256=base.sha256,
        clip_model=session.clip_model,
        clip_loss=DirectionalCLIPLoss(session.clip()),
        device=session.device,
        library=True,
        library_names=[free_name(preset, target.key, t0)],
        n_preview=0,
        return_models=True,
        progress=session.reporter.child("Fine-tuning: "),
    )
    pair = result.pairs[0]
    path = pair.artifacts[0]
    if pair.model is None:  # pragma: no cover - return_models=True keeps it
        return load_edit(path, base, name=f"{preset.name}/{path.stem}", source="finetuned")
    tuned = pair.model
    tuned.requires_grad_(False)
    tuned.eval()
    session.reporter.info(f"Fine-tuned in {pair.seconds:.1f} s and saved to {path}.")
    ctx = current()  # under torchrun every rank holds the model; rank 0 wrote (and hashes) the file
    sha256 = ctx.broadcast_object(known_sha256(path) if ctx.is_main else None)
    return LoadedModel(
        tuned, "edit", f"{preset.name}/{path.stem}", path, sha256, "finetuned",
        t0=pair.config.t0, src_text=target.src, trg_text=target.trg,
    )  # fmt: skip
