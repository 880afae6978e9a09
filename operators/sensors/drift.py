"""Waits for a drift check's verdict."""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING

from airflow.sdk import PokeReturnValue
from airflow.sdk.exceptions import AirflowSkipException

from airloop_airflow.sensors.deferrable import DeferrableModelSensor
from airloop_airflow.triggers.drift import DriftResultTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context


class DriftSensor(DeferrableModelSensor):
    """Succeeds with the drift context when the model's latest drift result crosses the thresholds; skips
    when this interval's result says no drift. Between looks :class:`DriftResultTrigger` reads the history
    in the triggerer (``deferrable=False``: reschedule mode)."""

    ui_color = "#fde8ef"

    def poke(self, context: Context) -> PokeReturnValue:
        from airloop.drift import drift_context, drift_verdict, read_history

        root = self.root()
        verdict, latest = drift_verdict(read_history(root, self.model), interval_start(context))
        if verdict == "drift" and latest is not None:
            self.log.info("Drift: %s", json.dumps(drift_context(latest)))
            return PokeReturnValue(is_done=True, xcom_value=drift_context(latest))
        if verdict == "no_drift" and latest is not None:
            raise AirflowSkipException(
                f"no drift: share {latest['drift_share']} < {self.pipeline().drift.drift_share}, "
                f"prediction score {latest['prediction_score']}"
            )
        return PokeReturnValue(is_done=False)

    def trigger(self, context: Context) -> DriftResultTrigger:
        return DriftResultTrigger(
            model=self.model,
            data_root=self.root_uri(),
            interval_start=interval_start(context),
            poke_interval=self.poke_interval,
        )


def interval_start(context: Context) -> str:
    """The run's data interval start as UTC ISO text, as the drift history records intervals."""
    start = context["data_interval_start"]
    if start is None:
        raise ValueError("the drift sensor needs the run's data interval (a run with a logical date)")
    return start.astimezone(dt.UTC).isoformat()
