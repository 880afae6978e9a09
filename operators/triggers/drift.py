"""The drift sensor's wait in the triggerer: poll the model's drift history for a verdict."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


def drift_verdict(history: list[dict[str, Any]], interval_start: str) -> tuple[str, dict[str, Any] | None]:
    """What the drift history says to a run whose interval starts at ``interval_start`` (UTC ISO text).

    ``("drift", latest)`` when the latest result drifts; ``("no_drift", latest)`` when the latest result is
    this interval's (or a later one's) and does not; ``("waiting", None)`` until one of these holds.
    """
    if not history:
        return "waiting", None
    latest = max(history, key=lambda r: (r["interval_start"], r["computed_at"]))
    if latest["dataset_drift"] or latest["prediction_drifted"]:
        return "drift", latest
    if latest["interval_start"] >= interval_start:
        return "no_drift", latest
    return "waiting", None


class DriftResultTrigger(BaseTrigger):
    """Read a model's drift history every ``poke_interval`` seconds; fire once it has a verdict for the run.

    :param model: the pipeline config's name
    :param data_root: URI of the data root that holds the drift history
    :param interval_start: the run's data interval start, UTC ISO text
    :param poke_interval: seconds between two reads
    """

    def __init__(self, model: str, data_root: str, interval_start: str, poke_interval: float = 60.0) -> None:
        super().__init__()
        self.model = model
        self.data_root = data_root
        self.interval_start = interval_start
        self.poke_interval = poke_interval

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

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Yield one event: ``drift``, ``no_drift``, or ``error`` when the history cannot be read."""
        while True:
            try:
                history = await asyncio.to_thread(self.read_history)
            except Exception as e:
                message = f"reading the drift history of {self.model} failed: {type(e).__name__}: {e}"
                yield TriggerEvent(self.event("error", message))
                return
            verdict, latest = drift_verdict(history, self.interval_start)
            if latest is not None:
                message = f"{verdict}: latest result of the interval from {latest['interval_start']}"
                yield TriggerEvent({**self.event(verdict, message), "result_interval_start": latest["interval_start"]})
                return
            self.log.info("No drift result since %s yet", self.interval_start)
            await asyncio.sleep(self.poke_interval)

    def read_history(self) -> list[dict[str, Any]]:
        from airloop.storage import DataRoot

        root = DataRoot(self.data_root)
        return root.read_jsonl(root.drift_history(self.model))

    def event(self, status: str, message: str) -> dict[str, Any]:
        return {"status": status, "message": message, "model": self.model, "interval_start": self.interval_start}
