"""The canary's wait in the triggerer: poll the target's figures until the running step has a verdict."""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING, Any

from airloop_airflow.triggers.base import PollingTrigger

if TYPE_CHECKING:
    from airloop.canary import Rollout, StepDecision, VariantStats
    from airloop.config import PipelineConfig


def judge_now(state: Rollout, cfg: PipelineConfig, readings: dict[str, VariantStats], now: float) -> StepDecision:
    """The verdict :func:`airloop.canary.advance` gives the running step now, leaving ``state`` as it is."""
    from airloop.canary import advance
    from airloop.config import higher_is_better

    lower_is_better = not higher_is_better(cfg.gate.metric)
    return advance(copy.deepcopy(state), cfg.canary, readings, now, lower_is_better=lower_is_better)


class CanaryStepTrigger(PollingTrigger):
    """Look at a canary every ``poke_interval`` seconds; fire once the running step is decided.

    It never writes: the event wakes the sensor, which judges the step itself (with the online metric where
    one is configured) and moves the rollout on. Whether a step still holds does not depend on the online
    metric, so a step decided here is decided for the sensor too.

    :param model: the pipeline config's name
    :param version: the challenger version being rolled out
    :param data_root: URI of the data root that holds the rollout's state
    :param poke_interval: seconds between two looks
    """

    def __init__(self, model: str, version: str, data_root: str, poke_interval: float = 60.0) -> None:
        super().__init__(poke_interval)
        self.model = model
        self.version = version
        self.data_root = data_root

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "airloop_airflow.triggers.canary.CanaryStepTrigger",
            {
                "model": self.model,
                "version": self.version,
                "data_root": self.data_root,
                "poke_interval": self.poke_interval,
            },
        )

    def look(self) -> dict[str, Any] | None:
        """One look (blocking, so run in a thread): the event to fire, or None while the step holds."""
        from airloop.canary import load_rollout
        from airloop.config import get_pipeline
        from airloop.storage import DataRoot
        from airloop_airflow.targets import build_target

        root = DataRoot(self.data_root)
        state = load_rollout(root, self.model, self.version)
        if state is None:
            return self.event("missing", f"no canary state at {root.canary_state(self.model, self.version)}")
        if state.status != "running":
            return self.event("ended", f"the rollout of v{self.version} already ended: {state.status}")
        cfg = get_pipeline(self.model)
        decision = judge_now(state, cfg, build_target(cfg).readings(), time.time())
        percent = cfg.canary.steps[min(state.step, len(cfg.canary.steps) - 1)]
        if decision.action == "hold":
            self.log.info("Step %d (%d%%): %s", state.step + 1, percent, decision.reason)
            return None
        return {**self.event("decided", decision.reason), "action": decision.action, "step": state.step}

    def what(self) -> str:
        return f"looking at the canary of {self.model} v{self.version}"

    def event(self, status: str, message: str) -> dict[str, Any]:
        return {"status": status, "message": message, "model": self.model, "version": self.version}
