"""The drift sensor's wait in the triggerer: poll the model's drift history for a verdict."""

from __future__ import annotations

from typing import Any

from airloop_airflow.triggers.base import PollingTrigger


class DriftResultTrigger(PollingTrigger):
    """Read a model's drift history every ``poke_interval`` seconds; fire once it has a verdict for the run.

    :param model: the pipeline config's name
    :param data_root: URI of the data root that holds the drift history
    :param interval_start: the run's data interval start, UTC ISO text
    :param poke_interval: seconds between two reads
    """

    def __init__(self, model: str, data_root: str, interval_start: str, poke_interval: float = 60.0) -> None:
        super().__init__(poke_interval)
        self.model = model
        self.data_root = data_root
        self.interval_start = interval_start

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "airloop_airflow.triggers.drift.DriftResultTrigger",
            {
                "model": self.model,
                "data_root": self.data_root,
                "interval_start": self.interval_start,
                "poke_interval": self.poke_interval,
            },
        )

    def look(self) -> dict[str, Any] | None:
        """``drift`` or ``no_drift`` once the history has a verdict for the run; None while it has none."""
        from airloop.drift import drift_verdict, read_history
        from airloop.storage import DataRoot

        root = DataRoot(self.data_root)
        verdict, latest = drift_verdict(read_history(root, self.model), self.interval_start)
        if latest is None:
            self.log.info("No drift result since %s yet", self.interval_start)
            return None
        message = f"{verdict}: latest result of the interval from {latest['interval_start']}"
        return {**self.event(verdict, message), "result_interval_start": latest["interval_start"]}

    def what(self) -> str:
        return f"reading the drift history of {self.model}"

    def event(self, status: str, message: str) -> dict[str, Any]:
        return {"status": status, "message": message, "model": self.model, "interval_start": self.interval_start}
