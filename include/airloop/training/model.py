"""The model: a preprocessor (fitted on the training window) and a small PyTorch MLP, packaged as one
MLflow pyfunc that takes raw request rows and applies the shared feature transform itself.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch
    from mlflow.pyfunc.model import PythonModel

OTHER = "__other__"


@dataclass
class Preprocessor:
    """Standardise numeric features (missing -> mean, plus a missing flag) and one-hot categoricals
    (values seen fewer than ``min_count`` times in training map to ``__other__``).

    ``piecewise`` numeric features are also given a piecewise-linear encoding: ``bins`` quantile bins of the
    training values, one column per bin rising from 0 at its lower edge to 1 at its upper edge (0 below,
    1 above). With the standardised column kept, a linear model on the result is a linear spline in that
    feature that still extrapolates linearly beyond the training range. Used for the time of day, whose
    effect has a stable, non-linear shape (the config's ``features.piecewise``).
    """

    numeric: list[str]
    categorical: list[str]
    min_count: int = 20
    piecewise: list[str] = field(default_factory=list)
    bins: int = 16
    means: dict[str, float] = field(default_factory=dict)
    stds: dict[str, float] = field(default_factory=dict)
    flag_missing: list[str] = field(default_factory=list)
    vocab: dict[str, list[str]] = field(default_factory=dict)
    edges: dict[str, list[float]] = field(default_factory=dict)

    def fit(self, df: pd.DataFrame) -> Preprocessor:
        import numpy as np

        for c in self.piecewise:
            if c not in self.numeric:
                raise ValueError(f"piecewise feature {c!r} is not one of the numeric features")
            col = df[c].to_numpy(dtype="float64", na_value=np.nan)
            col = col[~np.isnan(col)]
            edges = np.unique(np.quantile(col, np.linspace(0.0, 1.0, self.bins + 1))) if len(col) else np.empty(0)
            if len(edges) > 2:  # fewer than two bins would only repeat the standardised column
                self.edges[c] = [float(e) for e in edges]
        for c in self.numeric:
            col = df[c].astype("float64")
            self.means[c] = float(col.mean()) if col.notna().any() else 0.0
            std = float(col.std()) if col.notna().sum() > 1 else 1.0
            self.stds[c] = std if std > 1e-9 else 1.0
            if col.isna().any():
                self.flag_missing.append(c)
        for c in self.categorical:
            counts = df[c].fillna(OTHER).astype(str).value_counts()
            self.vocab[c] = sorted(v for v, n in counts.items() if n >= self.min_count and v != OTHER) + [OTHER]
        return self

    @property
    def width(self) -> int:
        return (
            len(self.numeric)
            + len(self.flag_missing)
            + sum(len(v) for v in self.vocab.values())
            + sum(len(e) - 1 for e in self.edges.values())
        )

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        import numpy as np

        n = len(df)
        out = np.zeros((n, self.width), dtype=np.float32)
        j = 0
        for c in self.numeric:
            col = df[c].to_numpy(dtype="float64", na_value=np.nan)
            out[:, j] = np.where(np.isnan(col), 0.0, (col - self.means[c]) / self.stds[c])
            j += 1
        for c in self.flag_missing:
            out[:, j] = np.isnan(df[c].to_numpy(dtype="float64", na_value=np.nan))
            j += 1
        for c in self.categorical:
            vocab = self.vocab[c]
            index = {v: i for i, v in enumerate(vocab)}
            other = index[OTHER]
            codes = np.fromiter(
                (index.get(v, other) if isinstance(v, str) else other for v in df[c]), dtype=np.int64, count=n
            )
            out[np.arange(n), j + codes] = 1.0
            j += len(vocab)
        for c in self.piecewise:  # in this list's order: the JSON of ``edges`` sorts its keys
            if c not in self.edges:
                continue
            edges = self.edges[c]
            col = df[c].to_numpy(dtype="float64", na_value=np.nan)
            col = np.where(np.isnan(col), self.means[c], col)
            for lo, hi in zip(edges[:-1], edges[1:], strict=True):
                out[:, j] = np.clip((col - lo) / (hi - lo), 0.0, 1.0)
                j += 1
        return out

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Preprocessor:
        return cls(**json.loads(text))


def build_mlp(
    width: int, hidden: tuple[int, ...] = (32,), dropout: float = 0.1, target_scale: tuple[float, float] = (0.0, 1.0)
) -> Any:
    """Wide and deep: a linear part on the inputs plus an MLP for interactions, summed into one output (a
    logit, or a regression target standardised by ``target_scale`` = (mean, std): :meth:`to_target`
    turns it back into the target's units)."""
    import torch.nn as nn

    class WideDeep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            prev = width
            for h in hidden:
                layers += [nn.Linear(prev, h), nn.ReLU(), nn.Dropout(dropout)]
                prev = h
            layers.append(nn.Linear(prev, 1))
            self.deep = nn.Sequential(*layers)
            self.wide = nn.Linear(width, 1)
            self.target_shift, self.target_scale = float(target_scale[0]), float(target_scale[1])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.wide(x) + self.deep(x)
            return out

        def to_target(self, out: torch.Tensor) -> torch.Tensor:
            return out * self.target_scale + self.target_shift

    return WideDeep()


def make_pyfunc_class() -> type[PythonModel]:
    """The pyfunc class, built lazily so importing this module needs neither MLflow nor torch."""
    from mlflow.pyfunc.model import PythonModel

    class AirloopPyfunc(PythonModel):
        """Raw rows in, predictions out: the config's features -> preprocessor -> MLP (-> sigmoid)."""

        def load_context(self, context: Any) -> None:
            import torch

            from airloop.features import FeaturesConfig
            from airloop.training.model import Preprocessor, build_mlp

            meta = json.loads(open(context.artifacts["meta"]).read())
            self.task = meta["task"]
            #: interior bounds of the prediction histogram (deciles of the reference predictions)
            self.prediction_edges = meta.get("prediction_edges")
            self.request_columns = meta.get("request_columns")
            self.features = FeaturesConfig.model_validate_json(open(context.artifacts["features"]).read())
            self.pre = Preprocessor.from_json(open(context.artifacts["preprocessor"]).read())
            self.net = build_mlp(
                self.pre.width, tuple(meta["hidden"]), meta["dropout"], tuple(meta.get("target_scale", (0.0, 1.0)))
            )
            self.net.load_state_dict(torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True))
            self.net.eval()

        # MLflow reads no schema from these hints (``Any`` is not one it infers from): the signature stays the
        # one logged with the model, as for an unannotated predict
        def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
            import numpy as np
            import pandas as pd
            import torch

            from airloop.features import compute_features

            df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
            x = torch.from_numpy(self.pre.transform(compute_features(df, self.features)))
            with torch.no_grad():
                out = self.net(x).squeeze(1)
                out = torch.sigmoid(out) if self.task == "binary_classification" else self.net.to_target(out)
            return pd.DataFrame({"prediction": out.numpy().astype(np.float64)})

    return AirloopPyfunc
