"""Model registry rules: the champion/challenger gate and the alias history.

Aliases (never the deprecated stages): ``champion`` serves, ``challenger`` passed the gate and waits for
its canary, ``previous`` is the champion a promotion replaced. MLflow keeps only the current alias
targets, so every change is also appended to ``reports/<model>/alias_history.jsonl`` in the data root
(who, when, why, which version it replaced): :func:`alias_at` answers "which version served at time T".
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass
from typing import Any

from airloop.config import PipelineConfig, higher_is_better
from airloop.storage import DataRoot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    metric: str
    challenger_version: str
    challenger_score: float
    champion_version: str | None
    champion_score: float | None
    reason: str
    aliases_set: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_history(root: DataRoot, model: str) -> list[dict[str, Any]]:
    return root.read_jsonl(root.alias_history(model))


def current_alias(client: Any, model: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model, alias).version)
    except MlflowException:
        return None


def set_alias(
    client: Any, root: DataRoot, model: str, alias: str, version: str, *, by: str, why: str
) -> dict[str, Any]:
    """Point ``alias`` at ``version`` and record the change; a no-op (not recorded) if it already does."""
    before = current_alias(client, model, alias)
    if before == str(version):
        return {}
    client.set_registered_model_alias(model, alias, str(version))
    return _record(root, model, alias, str(version), before, by=by, why=why)


def clear_alias(client: Any, root: DataRoot, model: str, alias: str, *, by: str, why: str) -> dict[str, Any]:
    """Remove ``alias`` and record it (``version`` None); a no-op if it is not set."""
    before = current_alias(client, model, alias)
    if before is None:
        return {}
    client.delete_registered_model_alias(model, alias)
    return _record(root, model, alias, None, before, by=by, why=why)


def _record(
    root: DataRoot, model: str, alias: str, version: str | None, before: str | None, *, by: str, why: str
) -> dict[str, Any]:
    record = {
        "model": model,
        "alias": alias,
        "version": version,
        "replaced": before,
        "by": by,
        "why": why,
        # when the change happened: an audit timestamp, not pipeline logic
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
    }
    root.write_jsonl_atomic(root.alias_history(model), [*read_history(root, model), record])
    log.info("alias %s@%s: v%s -> v%s (%s)", model, alias, before, version, why)
    return record


def promote(client: Any, root: DataRoot, model: str, version: str, *, by: str, why: str) -> list[dict[str, Any]]:
    """The canary passed: ``champion`` -> ``version``, the old champion kept as ``previous``, and
    ``challenger`` removed (it is the champion now). Every change goes to the alias history; repeating a
    promotion that already happened changes nothing."""
    current = current_alias(client, model, "champion")
    records = []
    if current and current != str(version):
        records.append(set_alias(client, root, model, "previous", current, by=by, why=f"replaced by v{version}: {why}"))
    records.append(set_alias(client, root, model, "champion", str(version), by=by, why=why))
    if current_alias(client, model, "challenger") == str(version):
        records.append(clear_alias(client, root, model, "challenger", by=by, why=f"v{version} is the champion now"))
    return [r for r in records if r]


def alias_at(history: list[dict[str, Any]], alias: str, when: dt.datetime) -> str | None:
    """The version ``alias`` pointed at, at time ``when`` (None before its first assignment)."""
    version = None
    for r in sorted(history, key=lambda r: r["at"]):
        if r["alias"] != alias:
            continue
        if dt.datetime.fromisoformat(r["at"]) <= when:
            version = r.get("version")
    return version


def score_model(model_uri: str, raw_df: Any, cfg: PipelineConfig) -> float:
    """The gate metric of a registered model on raw rows (the pyfunc applies the feature transform)."""
    import mlflow

    from airloop.features import label
    from airloop.metrics import metrics_for

    y = label(raw_df, cfg.task.label.source_column, cfg.task.label.positive_above)
    rows = raw_df[y.notna()].reset_index(drop=True)
    preds = mlflow.pyfunc.load_model(model_uri).predict(rows[cfg.request_columns])["prediction"]
    metrics = metrics_for(cfg.task.type, y[y.notna()].to_numpy(), preds.to_numpy())
    if cfg.gate.metric not in metrics:
        raise ValueError(f"gate.metric {cfg.gate.metric!r} is not computed for {cfg.task.type}: {sorted(metrics)}")
    return metrics[cfg.gate.metric]


def decide(cfg: PipelineConfig, challenger: float, champion: float | None) -> tuple[bool, str]:
    """Apply the thresholds: an absolute floor, and at most ``max_regression`` behind the champion."""
    g = cfg.gate
    lower = not higher_is_better(g.metric)
    meets_floor = challenger <= g.min_metric if lower else challenger >= g.min_metric
    floor_txt = f"{g.metric} {challenger:.4f} {'<=' if lower else '>='} {g.min_metric} required"
    if not meets_floor:
        return False, f"below the absolute threshold: {floor_txt}"
    if champion is None:
        return True, f"no champion yet; {floor_txt}: met"
    gap = (challenger - champion) if lower else (champion - challenger)
    if gap > g.max_regression:
        return False, (
            f"{g.metric} {challenger:.4f} is {gap:.4f} behind the champion's {champion:.4f} "
            f"(at most {g.max_regression} allowed)"
        )
    return True, f"{g.metric} {challenger:.4f} vs champion {champion:.4f} (allowed gap {g.max_regression})"


def run_gate(
    cfg: PipelineConfig, client: Any, root: DataRoot, version: str, holdout_raw: Any, *, by: str
) -> GateDecision:
    """Score the new version and the current champion on the same holdout rows, then set aliases.

    Pass with a champion: ``challenger`` -> version. Pass without one: the version becomes ``champion``
    (the first passing model). Fail: aliases stay as they are.
    """
    champ_version = current_alias(client, cfg.name, "champion")
    if champ_version == str(version):
        return GateDecision(
            True,
            cfg.gate.metric,
            str(version),
            float("nan"),
            champ_version,
            None,
            "this version is already the champion",
            (),
        )
    new_score = score_model(f"models:/{cfg.name}/{version}", holdout_raw, cfg)
    champ_score = score_model(f"models:/{cfg.name}@champion", holdout_raw, cfg) if champ_version else None
    passed, reason = decide(cfg, new_score, champ_score)
    aliases: tuple[str, ...] = ()
    if passed:
        alias = "challenger" if champ_version else "champion"
        set_alias(client, root, cfg.name, alias, str(version), by=by, why=f"gate passed: {reason}")
        aliases = (alias,)
    return GateDecision(passed, cfg.gate.metric, str(version), new_score, champ_version, champ_score, reason, aliases)


def rollback(client: Any, root: DataRoot, model: str, version: str, *, by: str, why: str) -> list[dict[str, Any]]:
    """Put an earlier version back as ``champion`` at once; the replaced champion becomes ``previous``.

    :raises ValueError: unknown version, or it already is the champion
    """
    from mlflow.exceptions import MlflowException

    if not why.strip():
        raise ValueError("a rollback needs a reason, for the alias history")
    try:
        client.get_model_version(model, str(version))
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":  # a refused login is no unknown version
            raise
        raise ValueError(f"{model} has no version {version}") from None
    current = current_alias(client, model, "champion")
    if current == str(version):
        raise ValueError(f"{model} v{version} is already the champion")
    records = []
    if current:
        records.append(set_alias(client, root, model, "previous", current, by=by, why=f"replaced by rollback: {why}"))
    records.append(set_alias(client, root, model, "champion", str(version), by=by, why=f"rollback: {why}"))
    return records
