"""The base of airloop's deferrable sensors: look once, then wait in the triggerer, not in a worker slot."""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING, Any

from airflow.sdk import PokeReturnValue
from airflow.sdk.exceptions import AirflowSensorTimeout

from airloop_airflow.base import ModelSensor

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.triggers.base import BaseTrigger


class TriggerFailed(RuntimeError):
    """A trigger's look failed (an unreadable target or data root): the task's retries handle it, as they
    handle a failed poke. Not an ``AirflowException``, so ``soft_fail`` does not turn it into a skip."""


class DeferrableModelSensor(ModelSensor):
    """A model sensor that waits in the triggerer between looks; ``deferrable=False`` falls back to
    reschedule mode (:class:`~airloop_airflow.base.ModelSensor`).

    Each look is :meth:`poke`, on a worker: the first in :meth:`execute`, the next whenever the trigger from
    :meth:`trigger` fires (:meth:`execute_complete`); a look that does not finish the wait defers again for
    what is left of ``timeout``.

    :param deferrable: wait in the triggerer (default); False: reschedule mode, one worker start per look.
        The default is not Airflow's ``[operators] default_deferrable`` (false unless set): these waits run
        for minutes to hours, and the local stack always runs a triggerer.
    """

    def __init__(self, *, deferrable: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.deferrable = deferrable

    def trigger(self, context: Context) -> BaseTrigger:
        """The trigger that wakes this sensor when the next look can decide something."""
        raise NotImplementedError

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        return self.look_or_defer(context, time.time() + self.timeout)

    def execute_complete(self, context: Context, event: dict[str, Any], timeout_at: float | None = None) -> Any:
        """Resume after the trigger fired: raise its error, else look as :meth:`poke` does.

        :param timeout_at: when the wait times out (epoch seconds), carried from deferral to deferral; None
            (``dag.test()`` resumes with the event alone) starts a full ``timeout`` again
        """
        if event.get("status") == "error":
            raise TriggerFailed(event.get("message", "the trigger failed"))
        self.log.info("Trigger fired (%s): %s", event.get("status"), event.get("message"))
        return self.look_or_defer(context, time.time() + self.timeout if timeout_at is None else timeout_at)

    def look_or_defer(self, context: Context, timeout_at: float) -> Any:
        """One look: its XCom value when done, else defer until the trigger fires or ``timeout_at``."""
        look = self.poke(context)
        if look:  # a PokeReturnValue is true when done
            return look.xcom_value if isinstance(look, PokeReturnValue) else None
        left = timeout_at - time.time()
        if left <= 0:
            raise AirflowSensorTimeout(f"Sensor has timed out: still waiting after {self.timeout} s.")
        self.defer(
            trigger=self.trigger(context),
            method_name="execute_complete",
            kwargs={"timeout_at": timeout_at},
            timeout=dt.timedelta(seconds=left),
        )
