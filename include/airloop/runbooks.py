"""Runbooks for on-call, one per failure kind, in ``include/runbooks/``: what the failure means and the
exact commands that recover from it. Alerts and DAG docs link them by kind."""

from __future__ import annotations

from pathlib import Path

RUNBOOK_DIR = Path(__file__).resolve().parents[1] / "runbooks"

#: failure kind -> runbook file
RUNBOOKS = {
    "batch_quarantined": "batch-quarantined.md",
    "batch_unreadable": "batch-unreadable.md",
    "batch_late": "batch-late.md",
    "rerun_interval": "rerun-interval.md",
    "feature_job_failed": "feature-job-failed.md",
    "gate_refused": "gate-refused.md",
    "training_pod_pending": "training-pod-pending.md",
    "deploy_failed": "deploy-failed.md",
    "canary_rollback": "canary-rolled-back.md",
    "model_rollback": "model-rollback.md",
    "drift_detected": "drift-detected.md",
}


def runbook_path(kind: str) -> Path:
    """The runbook of a failure kind.

    :raises KeyError: an unknown kind (naming the known ones)
    """
    if kind not in RUNBOOKS:
        raise KeyError(f"no runbook for {kind!r}; known kinds: {sorted(RUNBOOKS)}")
    return RUNBOOK_DIR / RUNBOOKS[kind]
