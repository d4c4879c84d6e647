"""Which model performs an edit: ``--model``, else the edit library, else the official fine-tuned checkpoint of a
named edit, else one fine-tuned now (and stored in the library for next time).

An automatic fine-tune never takes the place of an official model: for a named edit with an official checkpoint,
the library is searched first only for models trained on purpose (``dclip finetune``), and offline a missing
official model is an error naming ``dclip models fetch``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dclip_cli.apps.config import QUICK_MAX_IMAGES, AutoFinetune, SamplingSettings
from dclip_cli.distributed import current, decide_on_main
from dclip_cli.errors import (
    CheckpointError,
    CheckpointNotCachedError,
    ConfigError,
    DclipError,
    UnknownCheckpointError,
)

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
    then: tuple[int, str] = (0, ""),
) -> LoadedModel:
    """Find or make the model that performs ``target`` on ``preset``'s base, in this order:

    1. ``model``: see :func:`model_from_arg`;
    2. an artifact in the user's edit library with the same texts, ``settings.t0`` and base
       (:func:`dclip_cli.store.find_match`); for a named edit with an official checkpoint, only one fine-tuned on
       purpose (``dclip finetune``), never one an edit fine-tuned on the fly;
    3. for a named edit with an official fine-tuned checkpoint: that checkpoint (downloaded; offline and not cached
       it is an error naming ``dclip models fetch``); if it cannot be downloaded, a model fine-tuned on the fly
       earlier for this edit;
    4. fine-tune now with the preset's recipe, quickly (one epoch on ``finetune_images`` plus ``auto.samples``
       samples of the base model), and store the result in the library, so the next edit with the same text is
       only inversion and generation. The time it takes (with the ``then`` calls that follow it) is estimated
       first, and a long run asks or stops (:meth:`Session.check_time`).

    The path taken is reported through the session and recorded in the result's ``source``; a library model
    trained with less than the preset's recipe says so.

    Args:
        then: ``(UNet calls on one image, words)`` of the work after the model is found (for the estimate).

    Raises:
        CheckpointError: as :func:`model_from_arg`; ``CheckpointNotCachedError`` offline.
        ConfigError: fine-tuning would be needed but ``auto.allowed`` is false.
        NotConfirmedError: fine-tuning would take long and was not confirmed.
    """
    from dclip_cli.checkpoints.download import is_offline
    from dclip_cli.store import find_match, load_edit

    auto = auto or AutoFinetune()
    reporter = session.reporter
    if model is not None:
        loaded = model_from_arg(session, preset, model)
        reporter.info(loaded.describe())
        return loaded
    base = session.base(preset)
    official = target.checkpoint

    def from_library(deliberate: bool) -> LoadedModel | None:
        match = find_match(
            preset, target.src, target.trg, base_sha256=base.sha256, t0=settings.t0,
            accept=(lambda meta: meta.get("origin") != "auto") if deliberate else None, progress=reporter,
        )  # fmt: skip
        if match is None:
            return None
        loaded = load_edit(match, base, name=f"{preset.name}/{match.stem}", source="library")
        reporter.info(loaded.describe())
        note = training_note(preset, getattr(loaded.model, "artifact", None), target)
        if note:
            reporter.info(note)
        return loaded

    found = from_library(deliberate=bool(official))
    if found is not None:
        return found
    if official:
        try:
            fetched = session_fetch(session, official)
            loaded = load_edit(fetched, base, name=official, source="official")
            if loaded.t0 is None:
                loaded.t0 = target.t0
            loaded.src_text, loaded.trg_text = target.src, target.trg
            reporter.info(loaded.describe())
            return loaded
        except CheckpointNotCachedError:
            raise  # offline (or no download URL): the hint names 'dclip models fetch'; never fine-tune instead
        except (CheckpointError, OSError) as exc:
            if is_offline():
                raise
            detail = exc.message if isinstance(exc, DclipError) else str(exc)
            if not auto.allowed:
                raise
            earlier = from_library(deliberate=False)
            if earlier is not None:
                reporter.warn(f"The official model for {target.key!r} is not available ({detail}); using the model "
                              "fine-tuned for it earlier.")  # fmt: skip
                return earlier
            reporter.warn(
                f"The official model for {target.key!r} is not available ({detail}); fine-tuning one instead (it "
                "will not replace the official model once that can be downloaded)."
            )
    if not auto.allowed:
        raise ConfigError(
            f"No fine-tuned model for {target.label} on preset {preset.name!r} was found, and fine-tuning is "
            "switched off.",
            hint="Drop --no-finetune to fine-tune one now, run 'dclip finetune', or pass --model.",
        )
    return finetune_now(
        session, preset, target, settings, images=finetune_images, n_samples=auto.samples, then=then
    )


def training_note(preset: Preset, info: Any, target: TextEdit) -> str | None:
    """A sentence saying how a reused library model was trained, when that is less than the preset's recipe
    (fewer epochs, images, training or inversion steps); ``None`` when it was trained at least as fully."""
    meta = getattr(info, "metadata", None) or {}
    recipe = {
        "epochs": preset.epochs,
        "n_train_images": preset.n_train_images,
        "n_train_steps": preset.n_train_steps,
        "n_inv_steps": preset.n_inv_steps,
    }
    used = {k: meta.get(k) for k in recipe}
    if not any(isinstance(v, int) and v < recipe[k] for k, v in used.items()):
        return None
    how = "fine-tuned on the fly by an edit" if meta.get("origin") == "auto" else "fine-tuned"
    edit = f"--edit {target.key}" if target.named else f'--text "{target.trg}"'
    return (
        f"It was {how} with {_recipe(used)}, less than the preset's recipe ({_recipe(recipe)}); for the full "
        f"recipe run 'dclip finetune --domain {preset.name} {edit} --overwrite'."
    )


def _recipe(values: dict[str, Any]) -> str:
    epochs, images = values.get("epochs"), values.get("n_train_images")
    return (
        f"{epochs} epoch{'s' if epochs != 1 else ''} on {images} image{'s' if images != 1 else ''}, "
        f"{values.get('n_train_steps')} training and {values.get('n_inv_steps')} inversion steps"
    )


def finetune_now(
    session: Session,
    preset: Preset,
    target: TextEdit,
    settings: SamplingSettings,
    *,
    images: Sequence[Path],
    n_samples: int,
    then: tuple[int, str] = (0, ""),
) -> LoadedModel:
    """Path 4 of :func:`resolve_edit_model`, through the fine-tuning job (:func:`dclip_cli.training.run_finetune`).

    Holds the edit's fine-tuning lock: a second process that needs the same fine-tune waits, then reuses the
    model the first one saved (saying so). The time is estimated before any work (sampling, inversion, training
    and the ``then`` work), and a long run asks or stops.
    """
    import torch

    from dclip_cli.estimate import GPU_CHOICE, finetune_calls
    from dclip_cli.losses.clip import DirectionalCLIPLoss
    from dclip_cli.store import LoadedModel, find_match, free_name, known_sha256, load_edit
    from dclip_cli.training import FinetuneConfig, run_finetune
    from dclip_cli.training.data import samples_to_draw
    from dclip_cli.training.safety import edit_locks

    base = session.base(preset)
    images = list(images)[:QUICK_MAX_IMAGES]
    t0 = settings.t0
    overrides: dict[str, Any] = {
        "t0": t0,
        "n_inv_steps": settings.n_inv_steps,
        "n_gen_steps": settings.n_gen_steps,
        "epochs": 1,
        "seed": settings.seed,
        "precision": session.training_precision(),
    }
    with edit_locks(preset.name, [target.key], session.reporter):
        # another process may have fine-tuned this edit while this one waited for the lock
        match = decide_on_main(
            lambda: find_match(preset, target.src, target.trg, base_sha256=base.sha256, t0=t0)
        )
        if match is not None:
            session.reporter.info(
                f"Another dclip process fine-tuned {target.label} while this one waited; reusing {match}."
            )
            return load_edit(match, base, name=f"{preset.name}/{match.stem}", source="library")
        config = FinetuneConfig.from_preset(preset, **overrides)
        n_images = len(images) + n_samples
        cache_sha = session.latent_key(str(base.sha256))
        n_draw = samples_to_draw(n_samples, model_sha256=cache_sha, seed=config.seed, n_steps=config.n_gen_steps,
                                 batch_size=max(config.batch_size, 4)) if n_samples else 0  # fmt: skip
        infer, train = finetune_calls([config], n_images=n_images, n_draw=n_draw, n_invert=n_images,
                                      world_size=current().world_size)  # fmt: skip
        named = [k for k, e in preset.edits.items() if e.checkpoint][:3]
        choices = ([f"a named edit with an official model ({', '.join(named)})"] if named else []) + [
            "a quicker fine-tune (--finetune-samples 0 --inv-steps 10 --steps 10)",
            GPU_CHOICE,
        ]
        session.check_time(
            base.model, torch.zeros((1, 3, preset.image_size, preset.image_size), device=session.device),
            infer_calls=infer + then[0], train_calls=train, checkpointing=config.mode == "original",
            what=f"fine-tuning {target.key} on {n_images} image(s), 1 epoch" + (f"; {then[1]}" if then[1] else ""),
            choices=choices,
        )  # fmt: skip
        session.reporter.info(
            f"No fine-tuned model for {target.label} yet: fine-tuning one now on {n_images} image(s) "
            f"(t0 {t0}, 1 epoch); it is saved to your edit library for next time."
        )
        result = run_finetune(
            preset,
            edits=[target],
            images=images or None,
            n_samples=n_samples,
            overrides=overrides,
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
            origin="auto",
            estimate=False,
            progress=session.reporter.child("Fine-tuning: "),
        )
    pair = result.pairs[0]
    path = pair.artifacts[0]
    if pair.model is None:  # reused, or return_models=False
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
