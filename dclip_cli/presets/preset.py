"""The :class:`Preset` and :class:`Edit` records a preset plugin registers.

A preset is data only: which checkpoint and architecture a domain uses, the default method settings of
DiffusionCLIP for it (see ``diffusionclip-reference.md``) and its named edits. The core holds no domain knowledge;
everything domain-specific arrives through these records.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from dclip_cli.errors import PresetError

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_\-]*")
#: longest edit key (keys name output files and library entries)
MAX_EDIT_KEY = 64

FinetuneMode = Literal["original", "efficient"]
Preprocess = Literal["center_crop", "align"]


@dataclass(frozen=True)
class Edit:
    """A named edit: a (source text, target text) pair for the directional CLIP loss.

    Args:
        key: short name used on the command line (``smiling``, ``church_gothic``).
        src: source text (CLIP class string, used verbatim).
        trg: target text.
        t0: recommended return step, when the official fine-tuned model gives one.
        checkpoint: registry name of the official fine-tuned model, when one was released.
    """

    key: str
    src: str
    trg: str
    t0: int | None = None
    checkpoint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Preset:
    """Everything dclip needs to know about one image domain.

    Args:
        name: preset name (``face``, ``church``); lower case, digits, ``-`` and ``_``.
        description: one line shown by ``dclip presets list``.
        image_size: model resolution S; images are (B, 3, S, S) in [-1, 1].
        checkpoint: registry name of the base diffusion checkpoint.
        arch: ``"ddpm"`` (ermongroup/SDEdit UNet) or ``"adm"`` (guided-diffusion UNet).
        arch_config: architecture hyper-parameters in the names users know (the ddim YAML ``model:`` block for
            DDPM, guided-diffusion's ``create_model`` arguments for ADM).
        source_text: default source text of free-text edits ("face", "church").
        domain_prompt: CLIP prompt describing the domain, used for automatic domain detection.
        t0: default return step.
        n_inv_steps: points in the inversion sequence.
        n_gen_steps: points in the generation (test) sequence.
        n_train_steps: points in the training generative sequence.
        lr: Adam learning rate for fine-tuning.
        clip_weight: weight of the CLIP directional term.
        l1_weight: weight of the L1 term.
        id_weight: weight of the identity term (0 disables it and the identity network is never built).
        lpips_weight: weight of the optional LPIPS term.
        finetune_mode: ``"original"`` or ``"efficient"``.
        epochs: fine-tuning epochs.
        n_train_images: number of training images (samples drawn from the base model when no photos are given).
        quick_train_images: training images of the quick recipe ``dclip edit`` uses when it has to fine-tune on
            the fly (the input images plus samples from the base model up to this count).
        quick_epochs: epochs of that quick recipe.
        preprocess: ``"center_crop"`` or ``"align"`` (run the registered ``aligner``).
        aligner: name of a registered aligner (with ``preprocess="align"``).
        identity_model: name of a registered identity network, when the domain has an identity loss.
        edits: named edits by key.
        extra_checkpoints: other registry names the preset needs (fine-tuned models are listed in ``edits``).
    """

    name: str
    description: str
    image_size: int
    checkpoint: str
    arch: Literal["ddpm", "adm"]
    arch_config: dict[str, Any]
    source_text: str
    domain_prompt: str
    t0: int = 500
    n_inv_steps: int = 40
    n_gen_steps: int = 40
    n_train_steps: int = 6
    lr: float = 8e-6
    clip_weight: float = 3.0
    l1_weight: float = 0.0
    id_weight: float = 0.0
    lpips_weight: float = 0.0
    finetune_mode: FinetuneMode = "original"
    epochs: int = 1
    n_train_images: int = 50
    quick_train_images: int = 8
    quick_epochs: int = 1
    preprocess: Preprocess = "center_crop"
    aligner: str | None = None
    identity_model: str | None = None
    edits: dict[str, Edit] = field(default_factory=dict)
    extra_checkpoints: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`PresetError` naming the first invalid field."""
        problems: list[str] = []
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            problems.append(f"name {self.name!r} must be lower case letters, digits, '-' or '_'")
        if self.arch not in ("ddpm", "adm"):
            problems.append(f"arch {self.arch!r} must be 'ddpm' or 'adm'")
        if not 32 <= self.image_size <= 2048:
            problems.append(f"image_size {self.image_size} must be between 32 and 2048")
        if not 1 <= self.t0 <= 999:
            problems.append(f"t0 {self.t0} must be between 1 and 999")
        for label, n in (
            ("n_inv_steps", self.n_inv_steps),
            ("n_gen_steps", self.n_gen_steps),
            ("n_train_steps", self.n_train_steps),
        ):
            if n < 2:
                problems.append(f"{label} {n} must be at least 2")
        if self.finetune_mode not in ("original", "efficient"):
            problems.append(f"finetune_mode {self.finetune_mode!r} must be 'original' or 'efficient'")
        if self.preprocess not in ("center_crop", "align"):
            problems.append(f"preprocess {self.preprocess!r} must be 'center_crop' or 'align'")
        if self.preprocess == "align" and not self.aligner:
            problems.append("preprocess 'align' needs an aligner name")
        if self.id_weight > 0 and not self.identity_model:
            problems.append("id_weight > 0 needs an identity_model name")
        if self.lr <= 0:
            problems.append(f"lr {self.lr} must be positive")
        for key, edit in self.edits.items():
            if not isinstance(key, str) or not _NAME_RE.fullmatch(key) or len(key) > MAX_EDIT_KEY:
                problems.append(
                    f"edit key {key!r} must be lower case letters, digits, '-' or '_' (at most {MAX_EDIT_KEY}), "
                    "because it names output files and library entries"
                )
            elif not isinstance(edit, Edit):
                problems.append(f"edit {key!r} is a {type(edit).__name__}, not an Edit")
            elif edit.key != key:
                problems.append(f"edit registered as {key!r} has key {edit.key!r}")
            elif edit.t0 is not None and not 1 <= edit.t0 <= 999:
                problems.append(f"edit {key!r} has t0 {edit.t0}, outside 1..999")
        if problems:
            raise PresetError(f"Preset {self.name!r} is invalid: " + "; ".join(problems) + ".")

    def edit(self, key: str) -> Edit:
        """Return the named edit ``key`` or raise :class:`UnknownEditError` listing the valid keys."""
        from dclip_cli.errors import UnknownEditError

        try:
            return self.edits[key]
        except KeyError:
            raise UnknownEditError(
                f"Preset {self.name!r} has no edit named {key!r}.",
                hint=f"Valid edits: {', '.join(sorted(self.edits)) or '(none)'}; free text works too (--to in dclip edit, --text in dclip finetune).",
            ) from None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["edits"] = {k: e.to_dict() for k, e in self.edits.items()}
        d["extra_checkpoints"] = list(self.extra_checkpoints)
        return d


@dataclass(frozen=True)
class Aligner:
    """A preprocessing step that crops an image around its subject.

    ``align(image, size)`` takes a PIL RGB image and the output size and returns a square PIL image of
    ``size`` x ``size``, or ``None`` when no subject was found (the caller then falls back to a centre crop, or fails
    with ``--require-face``).
    """

    name: str
    align: Any
    description: str = ""


@dataclass(frozen=True)
class IdentityModel:
    """An identity network for the identity loss.

    ``build(weights_path, device)`` returns a frozen ``torch.nn.Module`` mapping aligned images (B, 3, S, S) in
    [-1, 1] to L2-normalised embeddings (B, D). ``checkpoint`` names the registry entry of its weights.
    """

    name: str
    build: Any
    checkpoint: str
    description: str = ""
