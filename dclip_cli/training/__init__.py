"""Fine-tuning: the pure loop (:mod:`.loop`, :mod:`.config`), its training data (:mod:`.data`) and the job that runs
it for ``dclip finetune`` (:mod:`.job`: run folders, previews, resume, artifacts)."""

from dclip_cli.training.config import MODES, FinetuneConfig, FinetuneMode
from dclip_cli.training.data import TrainingData, cached_samples, draw_samples, invert_training_images
from dclip_cli.training.job import (
    FinetuneResult,
    PairResult,
    artifact_metadata,
    default_run_dir,
    run_finetune,
    run_fingerprint,
)
from dclip_cli.training.loop import TrainingState, finetune, loss_terms

__all__ = [
    "MODES",
    "FinetuneConfig",
    "FinetuneMode",
    "FinetuneResult",
    "PairResult",
    "TrainingData",
    "TrainingState",
    "artifact_metadata",
    "cached_samples",
    "default_run_dir",
    "draw_samples",
    "finetune",
    "invert_training_images",
    "loss_terms",
    "run_fingerprint",
    "run_finetune",
]
