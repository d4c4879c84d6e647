"""The plain records the web page exchanges with its backend (no torch, no Gradio, no library calls)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

# -- records ------------------------------------------------------------------------------------------------------

#: CLI defaults the page shows (``dclip edit --help`` and friends)
DEFAULT_STRENGTH = 1.0
DEFAULT_SEED = 0
DEFAULT_SWEEP = "0,0.25,0.5,0.75,1"
DEFAULT_ITERATIONS = 10
DEFAULT_PREVIEWS = 4
MAX_ITERATIONS = 50
METRIC_NAMES = ("clip", "lpips", "identity", "psnr")

#: what the page accepts
MAX_UPLOAD_MB = 20
MAX_IMAGE_SIDE = 4096
MAX_IMAGES = 16
MAX_CHECKPOINT_MB = 4096


@dataclass(frozen=True)
class Settings:
    """What ``dclip ui`` fixes for every job of the page (the flags of the compute commands).

    Args:
        outputs: folder that receives one sub-folder per run.
        uploads: folder that receives one sub-folder per browser session (copies of the uploads).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (UNet compute precision).
        compile: ``torch.compile`` the UNets.
        clip_model: CLIP name or file (detection, fine-tuning, metrics).
        metrics: metrics computed for each output (``clip``, ``lpips``, ``identity``, ``psnr``); ``None``: the
            free ones, best effort, as the CLI's default ``--metrics auto``.
        batch_size: images per batch for edit, mix and translate.
        finetune_samples: base-model samples of the quick fine-tuning an edit runs when it has no model yet.
        max_upload_mb: largest accepted image upload, in MB.
        max_image_side: largest accepted image width or height, in pixels.
        max_images: most images in one job.
        max_checkpoint_mb: largest accepted checkpoint upload (library import), in MB.
    """

    outputs: Path
    uploads: Path
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    clip_model: str = "ViT-B/16"
    metrics: tuple[str, ...] | None = None
    batch_size: int = 4
    finetune_samples: int = 8
    max_upload_mb: int = MAX_UPLOAD_MB
    max_image_side: int = MAX_IMAGE_SIDE
    max_images: int = MAX_IMAGES
    max_checkpoint_mb: int = MAX_CHECKPOINT_MB


@dataclass(frozen=True)
class ProgressEvent:
    """One progress event: ``kind`` ``progress`` (``label`` advanced to ``done`` of ``total``), ``status`` or
    ``warning`` (``label`` is the message). ``image`` carries a preview written into the outputs folder."""

    kind: Literal["progress", "status", "warning"]
    label: str
    done: float = 0.0
    total: float | None = None
    detail: str = ""
    image: Path | None = None


OnEvent = Callable[[ProgressEvent], None]


class UserError(Exception):
    """A failure to show on the page: dclip's one-line message and its hint."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message + (f" Hint: {self.hint}" if self.hint else "")


class Cancelled(Exception):
    """A job stopped on request; nothing partial was saved."""


@dataclass(frozen=True)
class EditInfo:
    key: str
    src: str
    trg: str
    official: bool


@dataclass(frozen=True)
class PresetInfo:
    """What the page shows of a preset."""

    name: str
    description: str
    image_size: int
    t0: int
    n_inv_steps: int
    n_gen_steps: int
    source_text: str
    finetune_mode: str
    epochs: int
    n_train_images: int
    edits: tuple[EditInfo, ...]


@dataclass(frozen=True)
class Detection:
    """Which domain the images look like: ``sure`` when the confidence reaches the CLI's threshold."""

    domain: str
    confidence: float
    scores: dict[str, float]
    method: str
    sure: bool
    description: str


@dataclass(frozen=True)
class OutputItem:
    """One output image with its sidecar (and compare sheet, intermediates) and its metrics."""

    input: Path
    image: Path
    sidecar: Path
    caption: str
    metrics: dict[str, float]
    compare: Path | None = None
    intermediates: tuple[Path, ...] = ()


@dataclass(frozen=True)
class RunOutput:
    """The outcome of an edit, sweep, mix or translation."""

    domain: str
    folder: Path
    items: tuple[OutputItem, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    messages: tuple[str, ...] = ()
    detection: dict[str, Any] | None = None


@dataclass(frozen=True)
class ScheduleCheck:
    """The verdict on a mix schedule: ``ok`` with a summary, or dclip's message and hint."""

    ok: bool
    message: str
    hint: str | None = None


@dataclass(frozen=True)
class FinetuneOutput:
    """A finished fine-tuning job: the library names and files it added."""

    names: tuple[str, ...]
    artifacts: tuple[Path, ...]
    seconds: float
    losses: dict[str, float]
    previews: tuple[Path, ...] = ()
    messages: tuple[str, ...] = ()


@dataclass(frozen=True)
class LibraryRow:
    """One entry of the library tab: a cached checkpoint or a fine-tuned edit."""

    name: str
    kind: Literal["edit", "checkpoint"]
    size: int
    src_text: str = ""
    trg_text: str = ""
    t0: int | None = None
    base: str = ""
    description: str = ""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's errors into :class:`UserError` (message and hint, never a traceback)."""
    from dclip_cli.errors import DclipError

    try:
        yield
    except (UserError, Cancelled):
        raise
    except DclipError as exc:
        raise UserError(exc.message, exc.hint) from exc
    except MemoryError as exc:
        raise UserError(
            "Out of memory.", "Use fewer images, --precision bf16/fp16, or --device cpu for 'dclip ui'."
        ) from exc
    except OSError as exc:
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        raise UserError(f"{exc.strerror or exc}{where}.", "Check the path and its permissions.") from exc
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":
            raise UserError(
                "The device ran out of memory.", "Use fewer images, or start 'dclip ui --precision bf16'."
            ) from exc
        raise UserError(
            f"Unexpected error: {type(exc).__name__}: {exc}",
            "This is a bug in dclip; run 'dclip ui' with DCLIP_DEBUG=1 and report the traceback it prints.",
        ) from exc
