"""One training run's request: what :mod:`airloop.training.train` runs, and what the trainer and packaging read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from airloop.config import TrainingConfig


def _default(name: str) -> Any:
    """A training default, defined once in the config model."""
    return TrainingConfig.model_fields[name].default


@dataclass(frozen=True)
class TrainRequest:
    """One training run: the model, its feature partitions, the run key, the MLflow store, the hyperparameters."""

    model: str
    data_root: str
    partitions: tuple[str, ...]
    run_key: str
    tracking_uri: str
    lineage: dict[str, str] = field(default_factory=dict)
    seed: int = _default("seed")
    max_epochs: int = _default("max_epochs")
    patience: int = 5
    batch_size: int = 1024
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    #: start the wide part from the L2-regularised linear solution (strength ``linear_c``, as scikit-learn's C)
    #: and the deep part's output at zero, so the starting model is that linear model
    linear_start: bool = True
    linear_c: float = 1.0
    hidden: tuple[int, ...] = (32,)
    dropout: float = 0.1
    refit: bool = True
    val_fraction: float = 0.15
    holdout_fraction: float = 0.2
    device: str = "auto"
