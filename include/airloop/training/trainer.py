"""The trainer: a wide-and-deep net fitted with early stopping on a time-ordered validation split.

Steps: prepare the data (preprocessor, tensors) -> build the net (seeded) -> start it as the regularised linear
model -> run epochs with early stopping -> refit on train + validation for the best number of epochs.
Deterministic for a seed: deterministic kernels, batches sliced from tensors in a seeded order. CUDA when
present (pinned memory, bf16 autocast), the CPU otherwise.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from airloop.features import FeaturesConfig
    from airloop.training.model import Preprocessor
    from airloop.training.request import TrainRequest

BINARY = "binary_classification"

#: an epoch takes at least this many optimiser steps: a window of a few hundred rows in one batch of
#: 1,024 would give the deep part one step an epoch, and it would never leave its start
MIN_STEPS_PER_EPOCH = 10

#: a validation loss must improve on the best by more than this to count as better
MIN_IMPROVEMENT = 1e-6

#: features and target of one split, on the training device
Tensors = tuple["torch.Tensor", "torch.Tensor"]
EpochCallback = Callable[[dict[str, float]], None]


@dataclass
class Fitted:
    """What :func:`fit` returns: the net (on the CPU, in eval mode), its preprocessor and the figures."""

    net: Any
    pre: Preprocessor
    history: list[dict[str, float]]
    best_epoch: int
    device: str
    linear_start_val: dict[str, float]
    linear_seconds: float
    samples_per_s: float
    train_seconds: float
    target_scale: tuple[float, float]


@dataclass
class EarlyStopping:
    """The best candidate so far (validation loss, weights on the CPU, epoch; ``-1`` = the linear start)."""

    patience: int
    loss: float = math.inf
    state: dict[str, Any] | None = None
    epoch: int = -1

    def keep(self, loss: float, net: Any, epoch: int) -> None:
        self.loss, self.epoch = loss, epoch
        self.state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}

    def should_stop(self, loss: float, net: Any, epoch: int) -> bool:
        """Keep an improving epoch; stop once ``patience`` epochs passed without one."""
        if loss < self.loss - MIN_IMPROVEMENT:
            self.keep(loss, net, epoch)
            return False
        return epoch - self.epoch >= self.patience


@dataclass
class Pass:
    """One training pass: the net after its last epoch, the best candidate and the time it took."""

    net: Any
    best: EarlyStopping
    samples: int = 0
    seconds: float = 0.0
    linear_seconds: float = 0.0
    linear_start_val: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)


def batch_size(configured: int, rows: int) -> int:
    """The configured batch size, smaller for small windows so an epoch has MIN_STEPS_PER_EPOCH steps."""
    return max(32, min(configured, rows // MIN_STEPS_PER_EPOCH))


def target_scale(y: Any, task: str) -> tuple[float, float]:
    """(mean, std) a regression target is standardised by in training; (0, 1) for a classifier."""
    import numpy as np

    if task == BINARY:
        return 0.0, 1.0
    values = np.asarray(y, dtype=np.float64)
    values = values[~np.isnan(values)]
    std = float(values.std()) if len(values) > 1 else 1.0
    return (float(values.mean()) if len(values) else 0.0), (std if std > 1e-12 else 1.0)


def predict(net: Any, pre: Preprocessor, df: pd.DataFrame, task: str) -> Any:
    """The net's predictions for ``df`` (probabilities, or the target's units) as a NumPy array."""
    import torch

    with torch.no_grad():
        out = net(torch.from_numpy(pre.transform(df))).squeeze(1)
        return (torch.sigmoid(out) if task == BINARY else net.to_target(out)).numpy()


def select_device(choice: str) -> torch.device:
    import torch

    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def fit_linear(linear: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor, task: str, c: float) -> None:
    """Fit ``linear`` to convergence with full-batch L-BFGS: ``c * sum(loss) + ||w||^2 / 2`` (scikit-learn's
    ``LogisticRegression(C=c)`` or ridge). Solved in float64, since float32 stops short of the flat minimum."""
    import copy

    import torch

    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="sum") if task == BINARY else torch.nn.MSELoss(reduction="sum")
    lin64, x64, y64 = copy.deepcopy(linear).double(), x.double(), y.double()
    opt: Any = torch.optim.LBFGS(  # Any: torch leaves LBFGS.step unannotated
        lin64.parameters(),
        lr=1.0,
        max_iter=500,
        history_size=20,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )

    def objective() -> Any:
        opt.zero_grad(set_to_none=True)
        loss = c * loss_fn(lin64(x64).squeeze(1), y64) + 0.5 * (lin64.weight**2).sum()
        loss.backward()
        return loss

    opt.step(objective)
    with torch.no_grad():
        linear.weight.copy_(lin64.weight)
        linear.bias.copy_(lin64.bias)


class Trainer:
    """Trains the net of one task on one window.

    :param req: the hyperparameters (seed, epochs, patience, batch size, optimiser, linear start, refit)
    :param features: the model's ``FeaturesConfig`` (which columns are numeric, categorical, piecewise)
    :param scale: (mean, std) of the target in training (:func:`target_scale`); the net answers in the
        target's units through ``to_target``
    :param on_epoch: called with each validation epoch's row (epoch, losses, validation metrics)
    """

    def __init__(
        self,
        req: TrainRequest,
        task: str,
        target: str,
        features: FeaturesConfig,
        scale: tuple[float, float],
        on_epoch: EpochCallback | None = None,
    ) -> None:
        import torch

        self.req, self.task, self.target, self.features, self.scale = req, task, target, features, scale
        self.on_epoch = on_epoch
        self.device = select_device(req.device)
        self.pin = self.amp = self.device.type == "cuda"
        self.loss_fn: torch.nn.Module = torch.nn.BCEWithLogitsLoss() if task == BINARY else torch.nn.MSELoss()

    # -- prepare the data ------------------------------------------------------------------------------
    def preprocessor(self, df: pd.DataFrame) -> Preprocessor:
        from airloop.features import categorical_features, numeric_features
        from airloop.training.model import Preprocessor

        return Preprocessor(
            numeric_features(self.features),
            categorical_features(self.features),
            piecewise=list(self.features.piecewise),
            bins=self.features.piecewise_bins,
        ).fit(df)

    def tensors(self, pre: Preprocessor, df: pd.DataFrame) -> Tensors:
        """Features and the standardised target of ``df``, on the device."""
        import numpy as np
        import torch

        x = torch.from_numpy(pre.transform(df))
        target = (df[self.target].to_numpy(dtype=np.float64) - self.scale[0]) / self.scale[1]
        y = torch.from_numpy(target.astype(np.float32))
        if self.pin:
            x, y = x.pin_memory(), y.pin_memory()
        return x.to(self.device, non_blocking=self.pin), y.to(self.device, non_blocking=self.pin)

    # -- build the net ---------------------------------------------------------------------------------
    def build(self, width: int) -> Any:
        """A fresh net, its initial weights drawn from the seed."""
        import numpy as np
        import torch

        from airloop.training.model import build_mlp

        torch.manual_seed(self.req.seed)
        np.random.seed(self.req.seed)
        return build_mlp(width, self.req.hidden, self.req.dropout, self.scale).to(self.device)

    def start_linear(self, net: Any, data: Tensors) -> float:
        """Make ``net`` the regularised linear model (wide part fitted, deep output zero); the seconds it took."""
        import torch

        started = time.perf_counter()
        torch.nn.init.zeros_(net.deep[-1].weight)
        torch.nn.init.zeros_(net.deep[-1].bias)
        fit_linear(net.wide, *data, self.task, self.req.linear_c)
        return time.perf_counter() - started

    # -- run epochs ------------------------------------------------------------------------------------
    def score(self, net: Any, val: Tensors) -> dict[str, float]:
        """Validation loss (on the standardised target) and the task's metrics (in the target's units)."""
        import torch

        from airloop.metrics import metrics_for

        xv, yv = val
        net.eval()
        with torch.no_grad():
            out = net(xv).squeeze(1).float()
            pred = torch.sigmoid(out) if self.task == BINARY else net.to_target(out)
        truth = yv if self.task == BINARY else net.to_target(yv)
        metrics = metrics_for(self.task, truth.cpu().numpy(), pred.cpu().numpy())
        return {"val_loss": float(self.loss_fn(out, yv)), **{f"val_{k}": v for k, v in metrics.items()}}

    def epoch(self, net: Any, opt: torch.optim.Optimizer, data: Tensors, order: torch.Tensor, batch: int) -> float:
        """One pass over the rows in ``order``, ``batch`` rows a step; the mean training loss."""
        import torch

        x, y = data
        net.train()
        total = 0.0
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]  # batches are slices of the tensors
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                out = net(x[idx]).squeeze(1)
            loss = self.loss_fn(out.float(), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        return total / len(x)

    def run(self, pre: Preprocessor, data: Tensors, epochs: int, val: Tensors | None = None) -> Pass:
        """Build, start and train a net for up to ``epochs`` epochs; with ``val``, stop early on its loss."""
        import torch

        net = self.build(pre.width)
        result = Pass(net=net, best=EarlyStopping(self.req.patience))
        if self.req.linear_start:
            result.linear_seconds = self.start_linear(net, data)
            if val is not None:
                result.linear_start_val = self.score(net, val)
                result.best.keep(result.linear_start_val["val_loss"], net, -1)
        opt = torch.optim.AdamW(net.parameters(), lr=self.req.learning_rate, weight_decay=self.req.weight_decay)
        gen = torch.Generator(device="cpu").manual_seed(self.req.seed)
        rows = len(data[0])
        batch = batch_size(self.req.batch_size, rows)
        started = time.perf_counter()  # throughput counts the epochs, not the linear start
        for epoch in range(epochs):
            train_loss = self.epoch(net, opt, data, torch.randperm(rows, generator=gen).to(self.device), batch)
            result.samples += rows
            if val is None:
                continue
            row = {"epoch": epoch, "train_loss": train_loss, **self.score(net, val)}
            result.history.append(row)
            if self.on_epoch:
                self.on_epoch(row)
            if result.best.should_stop(row["val_loss"], net, epoch):
                break
        result.seconds = time.perf_counter() - started
        return result

    # -- the whole fit ---------------------------------------------------------------------------------
    def fit(self, train_df: pd.DataFrame, val_df: pd.DataFrame) -> Fitted:
        """Early stopping on the validation loss, then (``refit``) the same seed on train + validation for the
        best number of epochs, so the most recent days are learnt too; without ``refit``, the best candidate."""
        import pandas as pd

        pre = self.preprocessor(train_df)
        search = self.run(pre, self.tensors(pre, train_df), self.req.max_epochs, self.tensors(pre, val_df))
        final, passes = search.net, [search]
        if self.req.refit:
            full = pd.concat([train_df, val_df], ignore_index=True)
            pre = self.preprocessor(full)
            refit = self.run(pre, self.tensors(pre, full), search.best.epoch + 1)
            final, passes = refit.net, [search, refit]
        elif search.best.state is not None:
            final.load_state_dict(search.best.state)
        final.to("cpu").eval()
        samples, seconds = sum(p.samples for p in passes), sum(p.seconds for p in passes)
        return Fitted(
            net=final,
            pre=pre,
            history=search.history,
            best_epoch=search.best.epoch,
            device=self.device.type,
            linear_start_val=search.linear_start_val,
            linear_seconds=sum(p.linear_seconds for p in passes),
            samples_per_s=samples / seconds if seconds else float("nan"),
            train_seconds=seconds,
            target_scale=self.scale,
        )


def fit(
    req: TrainRequest,
    task: str,
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    target: str,
    features: FeaturesConfig,
    on_epoch: EpochCallback | None = None,
) -> Fitted:
    """Train the task's net on ``train_df``, early-stopped on ``val_df`` (see :meth:`Trainer.fit`).

    With ``linear_start`` the start is the regularised linear model and the first candidate: best epoch ``-1``
    means no epoch of joint training improved on it (then the refit is that linear model on train + validation).
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    torch.use_deterministic_algorithms(True)
    trainer = Trainer(req, task, target, features, target_scale(train_df[target], task), on_epoch)
    return trainer.fit(train_df, val_df)
