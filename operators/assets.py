"""The one registry of airloop's Asset definitions: ``<model>.<stage>``."""

from __future__ import annotations

from airflow.sdk import Asset

STAGES = ("validated", "features", "challenger", "drift")


def model_asset(model: str, stage: str) -> Asset:
    """The Asset a stage of a model publishes, e.g. ``<model>.validated``.

    Event ``extra`` carries URIs, hashes, row counts, versions and metrics, never data.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {STAGES}")
    return Asset(name=f"{model}.{stage}", uri=f"airloop://{model}/{stage}", group="airloop")
