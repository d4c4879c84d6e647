"""``dclip mix``: multi-attribute editing by noise combination (reference section 7.2, dclip's fixed version).

The members, in order: one edit model per ``to`` (resolved as in ``dclip edit``), then one per ``models`` entry (a
file or name), then the base model when ``with_base``. At each generation step the members' noise predictions are
combined with the weights of the schedule entry whose threshold is the first one <= t (weights normalised).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from dclip_cli.apps.config import RunConfig, choose_metrics, resolve_sampling, resolve_t0
from dclip_cli.apps.inputs import prepare_inputs, read_latent_arg
from dclip_cli.apps.pipeline import Run, RunReport
from dclip_cli.apps.resolve import resolve_edit_model
from dclip_cli.apps.schedule import MixEntry, default_mix_schedule, format_mix_schedule, parse_mix_schedule
from dclip_cli.apps.session import Session
from dclip_cli.errors import ConfigError, InvalidScheduleError
from dclip_cli.progress import ProgressCallback, Reporter

if TYPE_CHECKING:
    from dclip_cli.presets.preset import Preset
    from dclip_cli.textedit import TextEdit


def member_names(to: Sequence[str], models: Sequence[str], with_base: bool) -> list[str]:
    """The members' labels in schedule order: each ``--to``, each ``--model``'s file name, then ``base``."""
    return [*to, *(Path(m).name for m in models), *(["base"] if with_base else [])]


def mix_images(
    paths: Sequence[str | os.PathLike[str]],
    *,
    to: Sequence[str] = (),
    models: Sequence[str] = (),
    src: str | None = None,
    domain: str | None = None,
    latent: str | os.PathLike[str] | None = None,
    with_base: bool = False,
    schedule: str | Sequence[MixEntry] | None = None,
    config: RunConfig = RunConfig(),
    progress: Reporter | ProgressCallback | None = None,
    session: Session | None = None,
) -> RunReport:
    """Edit images with several edit models at once, mixing their noise predictions along ``schedule``.

    Args:
        to: named edits or free texts, one member each.
        models: edit model files or names, one member each (after the ``to`` members).
        with_base: add the base model as the last member.
        schedule: a ``--schedule`` string (``"300:0.5,0.5;0:0.3,0.7"``), parsed entries, or ``None`` for equal
            weights at every step. Validated before any model is loaded.
        Other arguments: as for :func:`dclip_cli.apps.edit.edit_images`.
    """
    from dclip_cli.diffusion.mixing import mix
    from dclip_cli.metrics import compute_metrics
    from dclip_cli.outputs import plan_images
    from dclip_cli.textedit import TextEdit, parse_target, slugify

    # 1. the schedule, before anything is loaded
    names = member_names(to, models, with_base)
    if not to and not models:
        raise ConfigError("dclip mix needs at least one --to or --model.", hint="Pass --to A --to B.")
    if isinstance(schedule, str):
        entries = parse_mix_schedule(schedule, len(names), member_names=names)
    elif schedule is None:
        entries = default_mix_schedule(len(names))
    else:
        entries = list(schedule)
        if any(len(e.weights) != len(names) for e in entries):
            raise InvalidScheduleError(
                f"Every schedule entry needs {len(names)} weights ({', '.join(names)})."
            )
    sampling, outputs, auto = config.sampling, config.outputs, config.auto
    session = session or Session(config.runtime, progress=progress)
    reporter = session.reporter

    # 2. inputs, domain, targets, outputs
    inputs = prepare_inputs(session, paths, domain, edits=list(to))
    preset = inputs.preset
    targets = [parse_target(preset, t, src) for t in to]
    tag = "mix-" + "+".join([*(t.tag for t in targets), *(slugify(Path(m).stem) for m in models)])
    tag += "+base" if with_base else ""
    lat = read_latent_arg(latent, len(inputs.images), sampling.t0)
    plans = plan_images(
        [inp.path for inp in inputs.images], tag, outputs.output, compare=outputs.compare,
        overwrite=outputs.overwrite,
    )  # fmt: skip
    run = Run(session, "mix", inputs, plans, outputs, salt=tag)
    lat_t0, lat_steps = (lat.t0, lat.steps) if lat is not None else (None, None)
    settings = resolve_sampling(
        preset, sampling, inv_steps=lat_steps,
        t0=resolve_t0(preset, requested=sampling.t0, latent=lat_t0, edits=[t.t0 for t in targets]),
    )  # fmt: skip

    # 3. the metric networks (an explicit --metrics that cannot be computed stops here), then the members
    wanted_metrics, required = choose_metrics(outputs.metrics, preset, reconstruction=outputs.compare)
    with run.timings.measure("model"):
        metric_models = session.metric_models(preset, wanted_metrics, required=required)
    run.metric_names = metric_models.computed(wanted_metrics)
    with run.timings.measure("model"):
        base = session.base(preset)
        images = [inp.path for inp in inputs.images]
        wanted = [(t, None) for t in targets] + [
            (TextEdit(slugify(Path(m).stem), src or preset.source_text, m), m) for m in models
        ]
        if sampling.t0 is None and lat is None:
            _confirm_t0(session, preset, targets, settings.t0, base.sha256)
        per_image = (settings.n_inv_steps - 1) + settings.n_gen_steps * (1 + ("psnr" in wanted_metrics))
        n_img = len(inputs.images)
        members = [
            resolve_edit_model(
                session,
                preset,
                target,
                settings,
                model=m,
                auto=auto,
                finetune_images=images,
                then=(per_image * n_img, f"then mixing {n_img} image(s)"),
            )  # fmt: skip
            for target, m in wanted
        ]
        eps_models = [session.fast(m.model) for m in members] + (
            [session.fast(base.model)] if with_base else []
        )
        mixed = mix(eps_models, [(e.threshold, list(e.weights)) for e in entries])
    if lat is not None:
        lat.check(base, settings, inputs.images[0], preset, session)
    reporter.info(f"Mixing {', '.join(names)} with the schedule {format_mix_schedule(entries)}.")
    if sampling.t0 is None and lat_t0 is None:
        member_t0s = sorted({m.t0 for m in members if m.t0 is not None})
        if len(member_t0s) > 1:
            reporter.warn(
                f"The edit models were fine-tuned at different t0 ({', '.join(map(str, member_t0s))}); "
                f"using t0 = {settings.t0}. Pass --t0 to choose."
            )
        # every member was fine-tuned at one t0: use it, as dclip edit does with its edit model
        t0 = resolve_t0(preset, models=[m.t0 for m in members], edits=[settings.t0])
        if t0 != settings.t0:
            settings = resolve_sampling(preset, sampling, t0=t0, inv_steps=lat_steps)
    need_rec = "psnr" in run.metric_names or outputs.compare

    # 4. batches
    n = run.n_batches
    gen_calls = len(eps_models) * settings.n_gen_steps * n
    run.plan_generation(
        base, settings, inverted=lat is not None, need_rec=need_rec, gen_calls=gen_calls,
        what=f"mixing {len(eps_models)} models on {len(inputs.images)} image(s)",
    )  # fmt: skip
    # texts for the CLIP metrics: the combined target of the --to edits
    src_text = targets[0].src if targets else (src or preset.source_text)
    trg_text = " and ".join(t.trg for t in targets) if targets else None
    member_docs = [m.record("mix-member") for m in members] + (
        [base.record("mix-member")] if with_base else []
    )
    for batch in run.batches():
        x0 = batch.x0
        with batch.timings.measure("inversion"):
            x_lat, x_rec = run.invert(
                base, x0, settings, batch, need_rec=need_rec, latent=lat.x if lat else None
            )
        with batch.timings.measure("generation"):
            x_mix = run.generate(mixed, x_lat, settings, batch)
        with batch.timings.measure("metrics"):
            rows = compute_metrics(
                metric_models, x_src=x0, x_edit=x_mix, src_text=src_text, trg_text=trg_text,
                x_rec=x_rec if "psnr" in run.metric_names else None,
            )  # fmt: skip
        own = {
            "members": names,
            "to": list(to),
            "models": [str(m) for m in models],
            "with_base": with_base,
            "schedule": format_mix_schedule(entries),
            "schedule_normalized": [
                {"threshold": e.threshold, "weights": list(e.normalized)} for e in entries
            ],
            "src_text": src_text,
            "trg_text": trg_text,
            "latent": str(Path(latent).resolve()) if latent is not None else None,
        }
        for i, (inp, plan) in enumerate(batch.items):
            compare = None
            if x_rec is not None:
                compare = (
                    [x0[i], x_rec[i], x_mix[i]],
                    ["input", "reconstruction", f"mix: {', '.join(names)}"],
                )
            run.write(
                inp, plan, main=x_mix[i], compare=compare, metrics=rows[i],
                doc=partial(
                    run.sidecar, inp, plan, batch, settings=own, sampling=settings, models=[base, *member_docs],
                    metric_models=metric_models, metrics=rows[i],
                ),
            )  # fmt: skip
    return run.report([base, *members])


def _confirm_t0(
    session: Session, preset: Preset, targets: Sequence[TextEdit], t0: int, base_sha256: str | None
) -> None:
    """Before a mix fine-tunes a member anew only because the mix's t0 differs from the t0 of the model the
    library already has for it, say so and offer the choices (ask, or stop without a terminal; ``--yes`` goes on)."""
    from dclip_cli.artifacts import read_artifact
    from dclip_cli.store import find_match

    others: list[tuple[str, int]] = []
    for target in targets:
        if target.checkpoint or find_match(preset, target.src, target.trg, base_sha256=base_sha256, t0=t0):
            continue  # an official model (used at its own t0) or a library model at this t0
        existing = find_match(preset, target.src, target.trg, base_sha256=base_sha256, t0=None)
        if existing is not None and read_artifact(existing).t0 is not None:
            others.append((target.key, int(read_artifact(existing).t0 or 0)))
    if not others:
        return
    have = ", ".join(f"{key} at t0 {other}" for key, other in others)
    session.confirm(
        f"This mix runs at t0 {t0}, and your library has {have} only: dclip would fine-tune "
        f"{'it' if len(others) == 1 else 'them'} anew at t0 {t0} first.",
        [f"--t0 {others[0][1]} to mix at the existing model's t0", f"--model {preset.name}/{others[0][0]} to mix "
         "the existing model as it is", f"--yes to fine-tune at t0 {t0}"],
    )  # fmt: skip
