"""A text edit: the (source text, target text) pair of the directional CLIP loss, and the one slug rule.

``dclip edit --to``, ``dclip mix --to``, ``dclip translate --to`` and ``dclip finetune --edit/--text/--src/--trg``
all turn what the user typed into :class:`TextEdit` records here, so output file tags, library names and artifact
names follow one rule: a preset's named edit keeps its key (``smiling``), free text becomes :func:`slugify` of the
target text (``"Gothic church!"`` -> ``gothic_church``).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dclip_cli.errors import ConfigError, UnknownEditError

if TYPE_CHECKING:
    from dclip_cli.presets.preset import Edit, Preset

#: longest slug (file names stay readable; the full text is in the sidecar and the artifact metadata)
SLUG_MAX = 48


def slugify(text: str, *, max_len: int = SLUG_MAX) -> str:
    """The name of free text in files and the library: lower case ASCII letters and digits, other runs become
    ``_`` (``"Person with CURLY hair"`` -> ``person_with_curly_hair``); text with no such character becomes
    ``edit_`` plus 8 hex digits of its SHA-256, so two such texts do not share a name."""
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    if len(slug) > max_len:
        slug = slug[:max_len].rstrip("_")
    return slug or "edit_" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


@dataclass(frozen=True)
class TextEdit:
    """One edit to perform or train.

    Args:
        key: the name of its files and library entry: a preset's edit key, or :func:`slugify` of the target text.
        src: source text of the CLIP direction (``face``).
        trg: target text (``smiling face``).
        named: whether ``key`` is one of the preset's named edits.
        t0: the named edit's recommended return step (from its official model), else ``None``.
        checkpoint: registry name of the named edit's official fine-tuned model, else ``None``.
    """

    key: str
    src: str
    trg: str
    named: bool = False
    t0: int | None = None
    checkpoint: str | None = None

    @property
    def tag(self) -> str:
        """The tag in output file names (``photo.<tag>.png``)."""
        return self.key

    @property
    def label(self) -> str:
        """How messages name it: the key of a named edit, else the quoted texts."""
        return self.key if self.named else f'"{self.src}" -> "{self.trg}"'

    @classmethod
    def from_edit(cls, edit: Edit) -> TextEdit:
        return cls(edit.key, edit.src, edit.trg, named=True, t0=edit.t0, checkpoint=edit.checkpoint)


def parse_target(preset: Preset, to: str, src: str | None = None) -> TextEdit:
    """Resolve ``--to`` (and ``--src``) against a preset.

    ``to`` is a named edit key of the preset (``smiling``) or free text (``"face with curly hair"``), whose source
    text is ``src`` or the preset's ``source_text``. A single word that looks like a mistyped key (it contains
    ``_`` or is close to a key) is an error rather than silently becoming free text.

    Raises:
        UnknownEditError: ``to`` looks like a key the preset does not have.
        ConfigError: ``to`` is empty, or ``src`` was given with a named edit.
    """
    to = to.strip()
    if not to:
        raise ConfigError(
            "--to is empty.", hint="Pass a named edit (see 'dclip presets show') or a target text."
        )
    if to in preset.edits:
        edit = preset.edits[to]
        if src is not None and src.strip() != edit.src:
            raise ConfigError(
                f"--src cannot be combined with the named edit {to!r}, which has its own source text "
                f"({edit.src!r}).",
                hint=f'Drop --src, or pass the target as free text: --to "{edit.trg}" --src "{src}".',
            )
        return TextEdit.from_edit(edit)
    if not re.search(r"\s", to):
        close = difflib.get_close_matches(to, list(preset.edits), n=3, cutoff=0.75)
        if close or ("_" in to and preset.edits):
            suggestion = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownEditError(
                f"Preset {preset.name!r} has no edit named {to!r}.{suggestion}",
                hint=f"Run 'dclip presets show {preset.name}' for the named edits, or write free text with spaces, "
                'e.g. --to "face with curly hair".',
            )
    source = (src if src is not None else preset.source_text).strip()
    if not source:
        raise ConfigError("--src is empty.", hint="Pass the source text, e.g. --src face.")
    return TextEdit(slugify(to), source, to)


def training_edits(
    preset: Preset,
    *,
    edits: Sequence[str | TextEdit] = (),
    texts: Sequence[str] = (),
    src_text: str | None = None,
    pairs: Sequence[tuple[str, str]] = (),
) -> list[TextEdit]:
    """Turn named edits (keys, or records already resolved), free target texts and explicit pairs into
    :class:`TextEdit` records, in that order (``dclip finetune --edit/--text/--src/--trg``).

    Free texts use ``src_text`` or else the preset's ``source_text``. Duplicate keys get ``-2``, ``-3`` suffixes.

    Raises:
        UnknownEditError: a named edit is not in the preset.
        ConfigError: nothing to train, or an empty text.
    """
    out = [e if isinstance(e, TextEdit) else TextEdit.from_edit(preset.edit(e)) for e in edits]
    source = src_text if src_text is not None else preset.source_text
    out += [TextEdit(slugify(trg), source, trg) for trg in texts]
    out += [TextEdit(slugify(trg), src, trg) for src, trg in pairs]
    if not out:
        raise ConfigError(
            "Nothing to fine-tune: no edit or target text was given.",
            hint="Pass --text 'target description', --edit KEY, or --src/--trg.",
        )
    seen: dict[str, int] = {}
    unique = []
    for edit in out:
        if not edit.src.strip() or not edit.trg.strip():
            raise ConfigError(
                f"The edit {edit.key!r} has an empty source or target text.", hint="Pass non-empty texts."
            )
        n = seen.get(edit.key, 0) + 1
        seen[edit.key] = n
        unique.append(edit if n == 1 else dataclasses.replace(edit, key=f"{edit.key}-{n}"))
    return unique
