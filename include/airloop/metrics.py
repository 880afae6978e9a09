"""Model quality per task: the figures training logs, the gate compares and the canary checks online."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import ArrayLike, NDArray

BINARY = "binary_classification"


def metrics_for(task: str, y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float]:
    """The task's metrics of predictions ``y_pred`` (probabilities or quantities) against ``y_true``."""
    import numpy as np

    truth = np.asarray(y_true, dtype=np.float64)
    pred = np.asarray(y_pred, dtype=np.float64)
    if task == BINARY:
        return _binary(truth, pred)
    return _regression(truth, pred)


def _binary(y_true: NDArray[np.float64], y_pred: NDArray[np.float64]) -> dict[str, float]:
    import numpy as np
    from sklearn import metrics as skm

    p = np.clip(y_pred, 1e-7, 1 - 1e-7)
    both_classes = len(set(y_true)) > 1
    return {
        "roc_auc": float(skm.roc_auc_score(y_true, p)) if both_classes else float("nan"),
        "pr_auc": float(skm.average_precision_score(y_true, p)) if both_classes else float("nan"),
        "log_loss": float(skm.log_loss(y_true, p, labels=[0, 1])),
        "accuracy": float(((p >= 0.5) == (y_true >= 0.5)).mean()),
        "brier": float(np.mean((p - y_true) ** 2)),
        "positive_rate": float(y_true.mean()),
    }


def _regression(y_true: NDArray[np.float64], y_pred: NDArray[np.float64]) -> dict[str, float]:
    import numpy as np

    err = y_pred - y_true
    var = float(np.var(y_true))
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "r2": 1.0 - float(np.mean(err**2)) / var if var > 0 else float("nan"),
    }
