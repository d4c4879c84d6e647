"""The ``--schedule`` of ``dclip mix``: which weights mix the members' noise predictions at which timesteps.

Pure parsing, validated before any model is loaded (the CLI and the web UI show its messages as you type).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from dclip_cli.errors import InvalidScheduleError

SCHEDULE_FORMAT_HINT = (
    "Write the schedule as THRESHOLD:W1,W2,...;...;0:W1,W2,... with thresholds descending to 0 and one weight per "
    'model, e.g. "300:0.5,0.5;0:0.3,0.7".'
)


@dataclass(frozen=True)
class MixEntry:
    """One schedule entry: for timesteps t >= ``threshold`` (down to the next entry's threshold), mix the members'
    noise predictions with ``weights`` (raw, as written; :attr:`normalized` sums to 1)."""

    threshold: int
    weights: tuple[float, ...]

    @property
    def normalized(self) -> tuple[float, ...]:
        total = sum(self.weights)
        return tuple(w / total for w in self.weights)


def _entry_label(index: int, text: str) -> str:
    return f'Schedule entry {index} "{text}"'


def parse_mix_schedule(
    text: str, n_members: int, *, member_names: Sequence[str] | None = None
) -> list[MixEntry]:
    """Parse a ``--schedule`` string such as ``"300:0.5,0.5;0:0.3,0.7"``.

    Entries are separated by ``;``; each is ``THRESHOLD:W1,W2,...``. An entry applies to timesteps t with
    t >= THRESHOLD that no earlier entry claimed, so thresholds must be strictly descending and end at 0
    (reference section 7.2; dclip validates what the original left to crash). Each entry needs one weight per
    member, every weight >= 0 and a positive sum; weights are normalised when used.

    Args:
        text: the schedule string.
        n_members: number of models being mixed.
        member_names: labels of the members, used in messages.

    Returns:
        The entries in order, thresholds strictly descending, the last one 0.

    Raises:
        InvalidScheduleError: naming the entry and the part of it that is wrong.
    """
    names = list(member_names) if member_names is not None else [f"model {i + 1}" for i in range(n_members)]
    members = (
        f"{n_members} model{'s' if n_members != 1 else ''} ({', '.join(names)})" if names else "0 models"
    )
    if n_members < 1:
        raise InvalidScheduleError(
            "There is nothing to mix: no models were given.", hint="Pass --to or --model."
        )
    raw = text.strip()
    if not raw:
        raise InvalidScheduleError("The mixing schedule is empty.", hint=SCHEDULE_FORMAT_HINT)
    entries: list[MixEntry] = []
    parts = raw.split(";")
    for index, part in enumerate(parts, start=1):
        chunk = part.strip()
        if not chunk:
            where = (
                "a trailing ';'"
                if index == len(parts)
                else "two ';' in a row"
                if index > 1
                else "a leading ';'"
            )
            raise InvalidScheduleError(
                f"Schedule entry {index} is empty ({where}).", hint=SCHEDULE_FORMAT_HINT
            )
        label = _entry_label(index, chunk)
        if chunk.count(":") != 1:
            problem = "has no ':'" if ":" not in chunk else "has more than one ':'"
            raise InvalidScheduleError(
                f"{label} {problem}; each entry is THRESHOLD:WEIGHTS.", hint=SCHEDULE_FORMAT_HINT
            )
        threshold_text, weights_text = (s.strip() for s in chunk.split(":"))
        if not re.fullmatch(r"[+-]?\d+", threshold_text):
            raise InvalidScheduleError(
                f'{label}: the threshold "{threshold_text}" is not a whole number.', hint=SCHEDULE_FORMAT_HINT
            )
        threshold = int(threshold_text)
        if not 0 <= threshold <= 999:
            raise InvalidScheduleError(
                f"{label}: the threshold {threshold} is outside 0..999 (the timesteps of the schedule).",
                hint=SCHEDULE_FORMAT_HINT,
            )
        if entries and threshold >= entries[-1].threshold:
            raise InvalidScheduleError(
                f"{label}: the threshold {threshold} is not below the previous one ({entries[-1].threshold}); "
                "thresholds must be strictly descending.",
                hint=SCHEDULE_FORMAT_HINT,
            )
        weight_parts = [w.strip() for w in weights_text.split(",")] if weights_text else []
        if len(weight_parts) != n_members:
            got = f"{len(weight_parts)} weight{'s' if len(weight_parts) != 1 else ''}"
            raise InvalidScheduleError(
                f"{label} gives {got} for {members}; give exactly one weight per model.",
                hint=SCHEDULE_FORMAT_HINT,
            )
        weights: list[float] = []
        for w_index, w_text in enumerate(weight_parts, start=1):
            try:
                w = float(w_text)
            except ValueError:
                raise InvalidScheduleError(
                    f'{label}: weight {w_index} "{w_text}" is not a number.', hint=SCHEDULE_FORMAT_HINT
                ) from None
            if not math.isfinite(w):
                raise InvalidScheduleError(
                    f'{label}: weight {w_index} "{w_text}" is not a finite number.', hint=SCHEDULE_FORMAT_HINT
                )
            if w < 0:
                raise InvalidScheduleError(
                    f"{label}: weight {w_index} ({w_text}) is negative; weights must be >= 0.",
                    hint=SCHEDULE_FORMAT_HINT,
                )
            weights.append(w)
        if sum(weights) <= 0:
            raise InvalidScheduleError(
                f"{label}: the weights sum to 0; at least one weight must be positive.",
                hint=SCHEDULE_FORMAT_HINT,
            )
        entries.append(MixEntry(threshold, tuple(weights)))
    if entries[-1].threshold != 0:
        last = parts[-1].strip()
        raise InvalidScheduleError(
            f"{_entry_label(len(entries), last)} has threshold {entries[-1].threshold}, but the last entry must have "
            "threshold 0 so that every timestep down to 0 has weights.",
            hint=SCHEDULE_FORMAT_HINT,
        )
    return entries


def default_mix_schedule(n_members: int) -> list[MixEntry]:
    """Equal weights at every timestep: ``0:1,1,...``."""
    return [MixEntry(0, tuple(1.0 for _ in range(n_members)))]


def format_mix_schedule(entries: Sequence[MixEntry]) -> str:
    """The inverse of :func:`parse_mix_schedule` (``"300:0.5,0.5;0:0.3,0.7"``)."""
    return ";".join(f"{e.threshold}:" + ",".join(f"{w:g}" for w in e.weights) for e in entries)
