"""``dclip translate``: unseen-domain and stroke-to-image translation (reference section 11.3, parity KEEP 13 and
FIX 11).

``iterations`` rounds of: noise the current image to t0 with the q-sample using ᾱ[t0] (consistent with the first
generation step; the original used ᾱ[t0 - 1]), then project it with a 6-step DDIM (η = 0) of the base model. With
``to``, the projection is then DDIM-inverted with the base model and generated with the edit model (blended by
``strength``). Without ``to`` the projection is the result.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from typing import Any

from dclip_cli.apps.config import (
    AutoFinetune,
    RunConfig,
    check_strength,
    choose_metrics,
    resolve_sampling,
    resolve_t0,
)
from dclip_cli.apps.inputs import prepare_inputs
from dclip_cli.apps.pipeline import GENERATING, INVERTING, PROJECTING, Run, RunReport
from dclip_cli.apps.resolve import resolve_edit_model
from dclip_cli.apps.session import Session
from dclip_cli.errors import ConfigError
from dclip_cli.estimate import GPU_CHOICE
from dclip_cli.progress import ProgressCallback, Reporter

#: points of the projection's DDIM sequence in unseen-domain translation (hard-coded in the original, section 11.3)
TRANSLATION_STEPS = 6
#: default number of noise-and-project rounds (the README asks for more than 8)
DEFAULT_ITERATIONS = 10


def translate_images(
    paths: Sequence[str | os.PathLike[str]],
    *,
    to: str | None = None,
    src: str | None = None,
    domain: str | None = None,
    model: str | None = None,
    iterations: int = DEFAULT_ITERATIONS,
    save_intermediates: bool = False,
    strength: float = 1.0,
    config: RunConfig = RunConfig(),
    progress: Reporter | ProgressCallback | None = None,
    session: Session | None = None,
) -> RunReport:
    """Project images of an unseen domain onto a preset's domain, and optionally edit the projection.

    Args:
        iterations: rounds K >= 1.
        save_intermediates: write every round's image (``<stem>.<tag>.round01.png``, ...).
        Other arguments: as for :func:`dclip_cli.apps.edit.edit_images`. Fine-tuning on the fly (with ``to``)
        uses base-model samples only, never the unseen-domain inputs.
    """
    import torch

    from dclip_cli.diffusion.ddim import generate, q_sample
    from dclip_cli.diffusion.mixing import blend
    from dclip_cli.metrics import compute_metrics
    from dclip_cli.outputs import plan_images
    from dclip_cli.textedit import parse_target

    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ConfigError(
            f"--iterations must be a positive integer, got {iterations!r}.", hint="Use --iterations 10."
        )
    check_strength(strength)
    if to is None and model is not None:
        raise ConfigError(
            "--model needs --to with dclip translate.", hint="Pass --to TEXT with the model's edit."
        )
    sampling, outputs, auto = config.sampling, config.outputs, config.auto
    session = session or Session(config.runtime, progress=progress)

    inputs = prepare_inputs(session, paths, domain, edits=[to] if to is not None else [])
    preset = inputs.preset
    target = parse_target(preset, to, src) if to is not None else None
    tag = "translate" if target is None else f"translate-{target.tag}"
    plans = plan_images(
        [inp.path for inp in inputs.images], tag,
        outputs.output, compare=outputs.compare, intermediates=iterations if save_intermediates else 0,
        overwrite=outputs.overwrite,
    )  # fmt: skip
    run = Run(session, "translate", inputs, plans, outputs, salt=tag)
    edit_t0 = [target.t0] if target is not None else []
    settings = resolve_sampling(preset, sampling, t0=resolve_t0(preset, requested=sampling.t0, edits=edit_t0))

    # the metric networks first (an explicit --metrics that cannot be computed stops here); translate has no
    # reconstruction, so no PSNR
    wanted, required = choose_metrics(outputs.metrics, preset, reconstruction=False, psnr_possible=False)
    with run.timings.measure("model"):
        metric_models = session.metric_models(preset, wanted, required=required)
    run.metric_names = metric_models.computed(wanted)

    edit_model = None
    n_img = len(inputs.images)
    per_image = TRANSLATION_STEPS * iterations + settings.n_inv_steps - 1 + settings.n_gen_steps
    with run.timings.measure("model"):
        base = session.base(preset)
        if target is not None:
            edit_model = resolve_edit_model(
                session,
                preset,
                target,
                settings,
                model=model,
                auto=AutoFinetune(auto.allowed, max(auto.samples, 1)),
                then=(per_image * n_img, f"then translating {n_img} image(s)"),
            )
            t0 = resolve_t0(preset, requested=sampling.t0, models=[edit_model.t0], edits=edit_t0)
            if t0 != settings.t0:
                settings = resolve_sampling(preset, sampling, t0=t0)

    n = run.n_batches
    run.plan(
        {
            PROJECTING: TRANSLATION_STEPS * iterations * n,
            INVERTING: (settings.n_inv_steps - 1) * n if target is not None else 0,
            GENERATING: settings.n_gen_steps * n if target is not None else 0,
        },
        base.model,
        what=f"translating {n_img} image(s) in {iterations} rounds"
        + (", then editing them" if target else ""),
        choices=["fewer rounds (--iterations 4)", GPU_CHOICE],
    )
    fast_base = session.fast(base.model)
    for batch in run.batches():
        x0 = batch.x0
        # per image, from --seed, the input's content and the run (independent of the batching)
        generator = settings.image_generators(session.device, batch.keys, f"{tag}/projection")
        rounds: list[Any] = []
        x = x0
        with batch.timings.measure("translation"), torch.no_grad():
            for _ in range(iterations):
                # 1. noise to t0 with ᾱ[t0] (FIX 11); 2. 6-step DDIM with the base model, η = 0 (KEEP 13)
                x_t = q_sample(x, settings.t0, generator=generator)
                x = generate(fast_base, x_t, t0=settings.t0, n_steps=TRANSLATION_STEPS,
                             callback=run.callback(PROJECTING))  # fmt: skip
                rounds.append(x)
        x_proj = x_out = x
        if target is not None and edit_model is not None:
            with batch.timings.measure("inversion"):
                x_lat, _ = run.invert(base, x_proj, settings, batch, need_rec=False, use_cache=False)
            fast_edit = session.fast(edit_model.model)
            eps_model = fast_edit if strength == 1.0 else blend(fast_base, fast_edit, strength)
            with batch.timings.measure("generation"):
                x_out = run.generate(eps_model, x_lat, settings, batch)
        with batch.timings.measure("metrics"):
            if target is not None:
                rows = compute_metrics(metric_models, x_src=x_proj, x_edit=x_out, src_text=target.src,
                                       trg_text=target.trg)  # fmt: skip
            else:
                rows = compute_metrics(metric_models, x_src=x0, x_edit=x_out, trg_text=preset.domain_prompt)
        own = {
            "to": to,
            "edit": target.key if target is not None and target.named else None,
            "src_text": target.src if target is not None else None,
            "trg_text": target.trg if target is not None else None,
            "iterations": iterations,
            "translation_steps": TRANSLATION_STEPS,
            "q_sample_alpha_bar": "alpha_bar[t0]",
            "strength": strength if target is not None else None,
            "edit_model_source": edit_model.source if edit_model is not None else None,
        }
        if target is None:  # no inversion and generation: their settings do not apply
            own.update(n_inv_steps=None, n_gen_steps=None, eta=0.0)
        for i, (inp, plan) in enumerate(batch.items):
            panels = [x0[i], x_proj[i]] + ([x_out[i]] if target is not None else [])
            labels = ["input", f"projection ({iterations} rounds)"] + (
                [f"edit: {target.tag}"] if target else []
            )
            run.write(
                inp, plan, main=x_out[i], compare=(panels, labels),
                intermediates=[r[i] for r in rounds] if save_intermediates else (), metrics=rows[i],
                doc=partial(
                    run.sidecar, inp, plan, batch, settings=own, sampling=settings,
                    models=[base] + ([edit_model] if edit_model is not None else []),
                    metric_models=metric_models, metrics=rows[i],
                ),
            )  # fmt: skip
    return run.report([base] + ([edit_model] if edit_model is not None else []))
