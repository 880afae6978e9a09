"""The shared wait of airloop's triggers: look every ``poke_interval`` seconds until a look has news."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class PollingTrigger(BaseTrigger):
    """Run :meth:`look` (blocking reads, so in a thread) every ``poke_interval`` seconds and yield the first
    event it returns; a look that raises yields one ``error`` event, which fails the waiting task.

    :param poke_interval: seconds between two looks
    """

    def __init__(self, poke_interval: float = 60.0) -> None:
        super().__init__()
        self.poke_interval = poke_interval

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            try:
                event = await asyncio.to_thread(self.look)
            except Exception as e:
                yield TriggerEvent(self.event("error", f"{self.what()} failed: {type(e).__name__}: {e}"))
                return
            if event is not None:
                yield TriggerEvent(event)
                return
            await asyncio.sleep(self.poke_interval)

    def look(self) -> dict[str, Any] | None:
        """One look: the event to fire, or None to look again later."""
        raise NotImplementedError

    def what(self) -> str:
        """What a look does, for the error event (``reading the drift history of <model>``)."""
        raise NotImplementedError

    def event(self, status: str, message: str) -> dict[str, Any]:
        """An event's payload: its status and message, and what identifies the wait."""
        raise NotImplementedError
