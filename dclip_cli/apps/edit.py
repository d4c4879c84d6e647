"""``dclip edit``: edit images with text (reference section 11.1).

Invert each image with the base model, generate from the latent with the edit model, optionally blended with the
base by ``strength`` (the original's ``model_ratio``); a sweep generates several strengths into a contact sheet.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from dclip_cli.apps.config import (
    RunConfig,
    check_strength,
    choose_metrics,
    resolve_sampling,
    resolve_t0,
)
from dclip_cli.apps.inputs import prepare_inputs, read_latent_arg
from dclip_cli.apps.pipeline import Run, RunReport
from dclip_cli.apps.resolve import resolve_edit_model
from dclip_cli.apps.session import Session
from dclip_cli.errors import ConfigError
from dclip_cli.progress import ProgressCallback, Reporter


def _strength_label(strength: float) -> str:
    return f"strength {strength:g}"


def edit_images(
    paths: Sequence[str | os.PathLike[str]],
    *,
    to: str,
    src: str | None = None,
    domain: str | None = None,
    model: str | None = None,
    strength: float = 1.0,
    sweep: Sequence[float] | None = None,
    latent: str | os.PathLike[str] | None = None,
    config: RunConfig = RunConfig(),
    progress: Reporter | ProgressCallback | None = None,
    session: Session | None = None,
) -> RunReport:
    """Edit images with text: invert with the base model, generate with the edit model.

    Args:
        paths: image files and/or directories of images.
        to: a named edit of the preset (``smiling``) or free target text.
        src: source text for free text (default: the preset's ``source_text``).
        domain: preset name; detected with CLIP zero-shot when ``None``.
        model: edit model file or name (skips the library, official checkpoint and fine-tuning).
        strength: r in ε = r·ε_edit + (1 - r)·ε_base (the original's ``model_ratio``): 0 gives the base model's
            reconstruction, 1 the full edit.
        sweep: several strengths; writes one contact sheet per input instead of the edited image.
        latent: a latent file from ``dclip invert`` (one input only), skipping inversion.
        config: ``sampling`` (t0, by default the latent's, the edit model's, the named edit's or the preset's;
            steps, eta, seed), ``outputs`` (where results go, overwriting, ``compare`` sheets, metrics),
            ``runtime`` (device, precision, compile, CLIP model, batch size, face requirement; a given
            ``session``'s win) and ``auto`` (on-the-fly fine-tuning when no edit model is found).
        progress: receives the run's :class:`~dclip_cli.progress.Event` records.
        session: reuse a :class:`Session` (its runtime and progress reporting win).

    Returns:
        A :class:`RunReport`; ``report.failed`` lists unreadable inputs (the others were edited).
    """
    from dclip_cli import images
    from dclip_cli.diffusion.mixing import blend
    from dclip_cli.metrics import compute_metrics
    from dclip_cli.outputs import plan_images
    from dclip_cli.textedit import parse_target

    # 1. everything that can be checked without a model
    check_strength(strength)
    strengths = list(sweep) if sweep else [strength]
    for s in strengths:
        check_strength(s)
    if sweep and config.outputs.compare:
        raise ConfigError(
            "--compare cannot be combined with --sweep.",
            hint="The sweep's contact sheet already shows the input and the reconstruction.",
        )
    sampling, outputs, auto = config.sampling, config.outputs, config.auto
    session = session or Session(config.runtime, progress=progress)

    # 2. inputs, domain, target, outputs (before any diffusion model is loaded)
    inputs = prepare_inputs(session, paths, domain, edits=[to])
    preset = inputs.preset
    target = parse_target(preset, to, src)
    lat = read_latent_arg(latent, len(inputs.images), sampling.t0)
    plans = plan_images(
        [inp.path for inp in inputs.images], target.tag, outputs.output, kind="sweep" if sweep else None,
        compare=outputs.compare, overwrite=outputs.overwrite,
    )  # fmt: skip
    run = Run(session, "edit", inputs, plans, outputs, salt=target.tag)
    lat_t0, lat_steps = (lat.t0, lat.steps) if lat is not None else (None, None)
    provisional = resolve_sampling(
        preset, sampling, t0=resolve_t0(preset, requested=sampling.t0, latent=lat_t0, edits=[target.t0]),
        inv_steps=lat_steps,
    )  # fmt: skip

    # 3. the metric networks first: a metric asked for with --metrics that cannot be computed stops here
    wanted, required = choose_metrics(outputs.metrics, preset, reconstruction=outputs.compare or bool(sweep))
    with run.timings.measure("model"):
        metric_models = session.metric_models(preset, wanted, required=required)
    run.metric_names = metric_models.computed(wanted)
    need_rec = "psnr" in run.metric_names or outputs.compare or bool(sweep)

    # 4. the models (the edit model may decide t0; a fine-tune on the fly estimates its time with the edit's)
    n_img = len(inputs.images)
    per_image = (provisional.n_inv_steps - 1 if lat is None else 0) + provisional.n_gen_steps * (
        len(strengths) + need_rec
    )
    with run.timings.measure("model"):
        base = session.base(preset)
        edit_model = resolve_edit_model(
            session, preset, target, provisional, model=model, auto=auto,
            finetune_images=[inp.path for inp in inputs.images],
            then=(per_image * n_img, f"then inverting and editing {n_img} image(s)"),
        )  # fmt: skip
    t0 = resolve_t0(preset, requested=sampling.t0, latent=lat_t0, models=[edit_model.t0], edits=[target.t0])
    settings = (
        provisional
        if t0 == provisional.t0
        else resolve_sampling(preset, sampling, t0=t0, inv_steps=lat_steps)
    )
    if lat is not None:
        lat.check(base, settings, inputs.images[0], preset, session)

    # 5. invert, reconstruct, generate, score and write, batch by batch
    n = run.n_batches
    gen_calls = settings.n_gen_steps * n * len(strengths)
    run.plan_generation(
        base, settings, inverted=lat is not None, need_rec=need_rec, gen_calls=gen_calls,
        what=f"editing {n_img} image(s)",
    )  # fmt: skip
    main_index = len(strengths) - 1
    fast_base, fast_edit = session.fast(base.model), session.fast(edit_model.model)
    for batch in run.batches():
        x0 = batch.x0
        with batch.timings.measure("inversion"):
            x_lat, x_rec = run.invert(
                base, x0, settings, batch, need_rec=need_rec, latent=lat.x if lat else None
            )
        edits: list[Any] = []
        with batch.timings.measure("generation"):
            for s in strengths:
                eps_model = fast_edit if s == 1.0 else blend(fast_base, fast_edit, s)
                edits.append(run.generate(eps_model, x_lat, settings, batch))
        with batch.timings.measure("metrics"):
            rows_by_strength = [
                compute_metrics(
                    metric_models,
                    x_src=x0,
                    x_edit=x_edit,
                    src_text=target.src,
                    trg_text=target.trg,
                    x_rec=x_rec if "psnr" in run.metric_names else None,
                )  # fmt: skip
                for x_edit in edits
            ]
        for i, (inp, plan) in enumerate(batch.items):
            row = rows_by_strength[main_index][i]
            own = {
                "to": to,
                "edit": target.key if target.named else None,
                "src_text": target.src,
                "trg_text": target.trg,
                "strength": strengths[main_index] if sweep else strength,
                "sweep": list(strengths) if sweep else None,
                "latent": str(Path(latent).resolve()) if latent is not None else None,
                "edit_model_source": edit_model.source,
                "preprocess": {k: v for k, v in inp.info.items() if k not in ("path", "image_sha256")},
            }
            extra = (
                {
                    "sweep": [
                        {"strength": s, "metrics": rows_by_strength[k][i]} for k, s in enumerate(strengths)
                    ]
                }
                if sweep
                else None
            )
            if sweep:
                panels = [x0[i], x_rec[i]] + [e[i] for e in edits]
                labels = ["input", "reconstruction"] + [_strength_label(s) for s in strengths]
                main: Any = images.image_grid(panels, labels)
            else:
                main = edits[0][i]
            compare = None
            if x_rec is not None and plan.compare is not None:
                suffix = f" ({_strength_label(strength)})" if strength != 1 else ""
                compare = (
                    [x0[i], x_rec[i], edits[0][i]],
                    ["input", "reconstruction", f"edit: {target.tag}{suffix}"],
                )
            run.write(
                inp, plan, main=main, compare=compare, metrics=row,
                doc=partial(
                    run.sidecar, inp, plan, batch, settings=own, sampling=settings, models=[base, edit_model],
                    metric_models=metric_models, metrics=row, extra=extra,
                ),
            )  # fmt: skip
    return run.report([base, edit_model])
