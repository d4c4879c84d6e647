"""The dclip exception hierarchy.

Every error a user can cause is a :class:`DclipError` with a complete sentence as its message and, where one
exists, a ``hint`` naming the fix. Subclasses also inherit the closest builtin so library callers can catch them at
either level (``except FileNotFoundError`` keeps working). The CLI translates these once, in
``dclip_cli.cli.errors``; library code never prints.
"""

from __future__ import annotations


class DclipError(Exception):
    """Base class of every error dclip raises on purpose.

    Args:
        message: one complete sentence saying what is wrong.
        hint: optional sentence saying what to do about it.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(DclipError, ValueError):
    """A setting, flag value or configuration file is invalid."""


class InvalidScheduleError(ConfigError):
    """A timestep setting (t0, step counts) or a mixing schedule is invalid."""


class PresetError(DclipError):
    """A preset or preset plugin is invalid."""


class UnknownPresetError(PresetError, LookupError):
    """No installed preset has the requested name."""


class UnknownEditError(PresetError, LookupError):
    """A preset has no named edit with the requested key."""


class DuplicatePresetError(PresetError):
    """Two plugins registered a preset with the same name."""


class CheckpointError(DclipError):
    """A checkpoint could not be found, fetched, verified or loaded."""


class UnknownCheckpointError(CheckpointError, LookupError):
    """No registry entry has the requested checkpoint name."""


class CheckpointNotCachedError(CheckpointError, FileNotFoundError):
    """A checkpoint is not in the cache and may not be downloaded (offline mode)."""


class DownloadError(CheckpointError, ConnectionError):
    """Every mirror of a checkpoint failed."""


class ChecksumMismatchError(CheckpointError):
    """A downloaded or cached file does not have the expected size or hash."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file would need arbitrary code to load and was refused."""


class StateDictMismatchError(CheckpointError):
    """A state dict does not fit the architecture it is loaded into."""


class IncompatibleModelError(CheckpointError):
    """A fine-tuned artifact was made for another base model or architecture."""


class ImageError(DclipError, ValueError):
    """An input image is missing, unreadable, truncated or too small."""


class LatentError(DclipError, ValueError):
    """A latent file is unreadable, not a dclip latent, or was made for another model or settings."""


class NoFaceFoundError(ImageError):
    """Face alignment was required but no face was found."""


class OutputError(DclipError, OSError):
    """An output cannot be written (exists already, unwritable directory, ...)."""


class OutputExistsError(OutputError, FileExistsError):
    """An output file exists and ``--overwrite`` was not given."""


class DiskFullError(OutputError):
    """A file could not be written because its disk (or the user's quota) is full."""


class DeviceError(DclipError, RuntimeError):
    """The requested device is not available."""


class DomainDetectionError(DclipError):
    """The image's domain could not be detected with confidence."""


class NonFiniteError(DclipError, ArithmeticError):
    """A result, a loss or weights hold NaN or infinite values (nothing is written from them)."""


class NonFiniteWeightsError(CheckpointError):
    """A weight file holds NaN or infinite values and was refused."""


class TrainingDivergedError(NonFiniteError):
    """Fine-tuning was stopped because its loss or the weights became NaN or infinite."""


class NotConfirmedError(DclipError):
    """A long run (or one doing more than asked, such as a new fine-tune) needed a confirmation it did not get."""


class DistributedError(DclipError, RuntimeError):
    """A run under torchrun cannot start or continue: a bad launch environment, or a rank that stopped."""
