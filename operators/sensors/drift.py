"""Waits for a drift check's verdict."""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING

from airflow.sdk import PokeReturnValue
from airflow.sdk.exceptions import AirflowSkipException

from airloop_airflow.base import ModelSensor
from airloop_airflow.operators.drift import drift_context

if TYPE_CHECKING:
    from airflow.sdk import Context


class DriftSensor(ModelSensor):
    """Succeeds when the model's latest drift result crosses the thresholds (reschedule mode)."""

    ui_color = "#fde8ef"

    def poke(self, context: Context) -> PokeReturnValue:
        from airloop.drift import read_history

        history = read_history(self.root(), self.model)
        if not history:
            return PokeReturnValue(is_done=False)
        latest = max(history, key=lambda r: (r["interval_start"], r["computed_at"]))
        drifting = latest["dataset_drift"] or latest["prediction_drifted"]
        if drifting:
            self.log.info("Drift: %s", json.dumps(drift_context(latest)))
            return PokeReturnValue(is_done=True, xcom_value=drift_context(latest))
        this_interval = context["data_interval_start"].astimezone(dt.UTC).isoformat()
        if latest["interval_start"] >= this_interval:
            raise AirflowSkipException(
                f"no drift: share {latest['drift_share']} < {self.pipeline().drift.drift_share}, "
                f"prediction score {latest['prediction_score']}"
            )
        return PokeReturnValue(is_done=False)
