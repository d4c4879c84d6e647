"""The options ``edit``, ``mix`` and ``translate`` share, declared once and turned into the library's settings
records once per command.

:func:`run_options` adds the shared options to a command's signature (so Typer shows and parses them like the
command's own) and hands the command one :class:`RunSettings` instead: a :class:`~dclip_cli.apps.config.RunConfig`
(sampling, outputs, runtime and on-the-fly fine-tuning records) plus the display switches. Building it imports no
torch. :func:`run_and_render` then runs the application under the progress display and prints the result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dclip_cli.apps.config import AutoFinetune, Outputs, RunConfig, Runtime, Sampling
from dclip_cli.cli.options import (
    BatchSizeOpt,
    ClipModelOpt,
    CompileOpt,
    EtaOpt,
    FinetuneOpt,
    FinetuneSamplesOpt,
    InvStepsOpt,
    JsonOpt,
    MetricsOpt,
    OutputOpt,
    OverwriteOpt,
    Precision,
    PrecisionOpt,
    QuietOpt,
    RequireFaceOpt,
    SeedOpt,
    StepsOpt,
    T0Opt,
)

if TYPE_CHECKING:
    from dclip_cli.cli.display import Display
    from dclip_cli.estimate import LongRuns
    from dclip_cli.progress import Event

YesOpt = Annotated[
    bool,
    typer.Option(
        "--yes",
        "-y",
        help="Start a run estimated to take long (over DCLIP_CONFIRM_MINUTES, 10 by default) or to fine-tune "
        "anew without asking.",
    ),
]


@dataclass(frozen=True)
class RunSettings:
    """What the shared options of a run command say: the library's :class:`RunConfig` and the display switches."""

    config: RunConfig
    as_json: bool = False
    quiet: bool = False
    yes: bool = False


def _shared_parameters(compare_help: str) -> list[inspect.Parameter]:
    """The shared options, in ``--help`` order, as keyword-only parameters with their defaults."""
    compare_opt = Annotated[bool, typer.Option("--compare", help=compare_help)]
    spec: list[tuple[str, Any, Any]] = [
        ("t0", T0Opt, None),
        ("inv_steps", InvStepsOpt, None),
        ("steps", StepsOpt, None),
        ("eta", EtaOpt, 0.0),
        ("seed", SeedOpt, 0),
        ("batch_size", BatchSizeOpt, 4),
        ("compare", compare_opt, False),
        ("output", OutputOpt, None),
        ("overwrite", OverwriteOpt, False),
        ("clip_model", ClipModelOpt, "ViT-B/16"),
        ("metrics", MetricsOpt, "auto"),
        ("finetune", FinetuneOpt, True),
        ("finetune_samples", FinetuneSamplesOpt, 8),
        ("as_json", JsonOpt, False),
        ("quiet", QuietOpt, False),
        ("require_face", RequireFaceOpt, False),
        ("precision", PrecisionOpt, Precision.auto),
        ("compile", CompileOpt, False),
        ("yes", YesOpt, False),
    ]
    return [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=a, default=d) for n, a, d in spec]


def build_settings(ctx: typer.Context, values: dict[str, Any]) -> RunSettings:
    """The settings records from the shared options' values (``--metrics`` parsed; the global ``--device``)."""
    from dclip_cli.apps.config import parse_metrics
    from dclip_cli.cli._common import get_state
    from dclip_cli.cli.report import parse_option

    state = get_state(ctx)
    config = RunConfig(
        sampling=Sampling(
            t0=values["t0"], inv_steps=values["inv_steps"], steps=values["steps"], eta=values["eta"],
            seed=values["seed"],
        ),
        outputs=Outputs(
            output=values["output"], overwrite=values["overwrite"], compare=values["compare"],
            metrics=parse_option("--metrics", parse_metrics, values["metrics"]),
        ),
        runtime=Runtime(
            device=state.device, precision=values["precision"].value, compile=values["compile"],
            clip_model=values["clip_model"], batch_size=values["batch_size"], require_face=values["require_face"],
        ),
        auto=AutoFinetune(allowed=values["finetune"], samples=values["finetune_samples"]),
    )  # fmt: skip
    return RunSettings(config, as_json=values["as_json"], quiet=values["quiet"], yes=values["yes"])


def long_runs_policy(yes: bool, display: Display | None = None) -> LongRuns | None:
    """What a command does before a long run: nothing with ``--yes``; else ask on a terminal (pausing the progress
    display), or stop without one (:mod:`dclip_cli.estimate`)."""
    if yes:
        return None
    from dclip_cli import console
    from dclip_cli.estimate import LongRuns, confirm_threshold_seconds

    interactive = sys.stdin.isatty() and console.err.is_terminal
    return LongRuns(
        confirm_threshold_seconds(), functools.partial(ask_user, display) if interactive else None
    )


@contextlib.contextmanager
def printing_outputs(
    display: Display, paths: Callable[[Any], list[Any]]
) -> Iterator[Callable[[Event], None]]:
    """A progress callback for ``display`` that remembers the results of ``output`` events; if the block is
    interrupted (Ctrl-C), their files (``paths(result)``) are printed on stdout first, so a script keeps track of
    what was completed."""
    from dclip_cli import console

    done: list[Any] = []

    def progress(event: Event) -> None:
        if event.kind == "output":
            done.append(event.data["result"])
        display(event)

    try:
        yield progress
    except KeyboardInterrupt:
        for result in done:
            for path in paths(result):
                console.out.print(str(path), markup=False, highlight=False, soft_wrap=True)
        raise


def ask_user(display: Display | None, question: str) -> bool:
    """Ask a yes/no question on the terminal (stderr), with the progress bars paused."""
    progress = display.progress if display is not None else None
    if progress is not None:
        progress.stop()
    try:
        return bool(typer.confirm(question, default=False, err=True))
    finally:
        if progress is not None:
            progress.start()


def run_options(*, compare_help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command the shared run options; the command takes ``ctx`` and ``run: RunSettings`` instead of them.

    Args:
        compare_help: the ``--compare`` help of this command (what its comparison sheet shows).
    """

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = inspect.signature(command, eval_str=True)
        shared = _shared_parameters(compare_help)
        names = [p.name for p in shared]
        params = [p for p in own.parameters.values() if p.name != "run"] + shared

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in names}
            kwargs["run"] = build_settings(kwargs["ctx"], values)
            return command(*args, **kwargs)

        wrapper.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


def run_and_render(
    ctx: typer.Context, run: RunSettings, app: Callable[..., Any], *args: Any, title: str, **kwargs: Any
) -> None:
    """Run an editing application (``edit_images``, ``mix_images``, ``translate_images``) with the command's
    settings under the progress display, then print its outputs and metrics (:func:`render_report`).

    Interrupted (Ctrl-C), it still prints the outputs completed so far on stdout, so a script keeps track of them.
    """
    from dclip_cli.cli.display import Display
    from dclip_cli.cli.report import print_results, render_report, start_run

    start_run(ctx, run.quiet)
    done: list[Any] = []
    try:
        with Display() as display:

            def progress(event: Event) -> None:
                if event.kind == "output":
                    done.append(event.data["result"])
                display(event)

            runtime = dataclasses.replace(run.config.runtime, long_runs=long_runs_policy(run.yes, display))
            config = dataclasses.replace(run.config, runtime=runtime)
            report = app(*args, config=config, progress=progress, **kwargs)
    except KeyboardInterrupt:
        print_results(done, as_json=run.as_json)
        raise
    render_report(report, as_json=run.as_json, title=title)
