"""The canary's watch: judge the running step at each look; wait in the triggerer in between."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from airflow.sdk import PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException

from airloop.canary import load_rollout, save_rollout
from airloop_airflow.sensors.deferrable import DeferrableModelSensor
from airloop_airflow.targets import build_target, logs_predictions
from airloop_airflow.triggers.canary import CanaryStepTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airloop.canary import Rollout, VariantStats
    from airloop.config import PipelineConfig
    from airloop.storage import DataRoot


class CanaryStepSensor(DeferrableModelSensor):
    """Judge the running canary step at each look; between looks :class:`CanaryStepTrigger` watches the
    target's figures in the triggerer (``deferrable=False``: reschedule mode). Done when the rollout is
    promoted or rolled back; its XCom value is the deciding step's record.

    :param start_task_id: the task whose XCom names the version and state of the rollout
    """

    ui_color = "#fdf3e8"

    def __init__(self, *, start_task_id: str = "start_canary", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start_task_id = start_task_id

    def trigger(self, context: Context) -> CanaryStepTrigger:
        started = context["ti"].xcom_pull(task_ids=self.start_task_id)
        return CanaryStepTrigger(
            model=self.model,
            version=str(started["version"]),
            data_root=self.root_uri(),
            poke_interval=self.poke_interval,
        )

    def poke(self, context: Context) -> PokeReturnValue:
        from airloop.canary import advance

        cfg, root = self.pipeline(), self.root()
        started = context["ti"].xcom_pull(task_ids=self.start_task_id)
        state = load_rollout(root, cfg.name, started["version"])
        if state is None:
            raise AirflowFailException(f"no canary state at {started['state_uri']}")
        if state.status != "running":
            return PokeReturnValue(is_done=True, xcom_value=state.decisions[-1] if state.decisions else {})
        from airloop.config import higher_is_better

        target = build_target(cfg)
        readings = target.readings()
        if cfg.deployment.outcome_key and root.is_local and logs_predictions(cfg):
            self.add_online_metrics(cfg, root, state, readings)
        decision = advance(
            state, cfg.canary, readings, time.time(), lower_is_better=not higher_is_better(cfg.gate.metric)
        )
        if decision.action == "rollback":
            target.set_percent(0)  # first stop the harm, then record
        save_rollout(root, state)
        self.log.info(
            "Step %d/%d (%d%%): %s: %s | %s",
            min(state.step + 1, len(cfg.canary.steps)),
            len(cfg.canary.steps),
            cfg.canary.steps[min(state.step, len(cfg.canary.steps) - 1)],
            decision.action,
            decision.reason,
            json.dumps(decision.figures, default=str),
        )
        if decision.action == "continue":
            target.set_percent(cfg.canary.steps[state.step])
        return PokeReturnValue(
            is_done=decision.action in ("promote", "rollback"),
            xcom_value=state.decisions[-1] if decision.action in ("promote", "rollback") else None,
        )

    def add_online_metrics(
        self, cfg: PipelineConfig, root: DataRoot, state: Rollout, readings: dict[str, VariantStats]
    ) -> None:
        """The gate metric of each variant on this step's logged predictions whose outcome has been
        ingested (joined on ``deployment.outcome_key``); left unset where too few are known."""
        import datetime as dt

        from airloop.canary import known_outcomes, online_metrics, outcome_metric
        from airloop.serving.prediction_log import read_log_since

        since = dt.datetime.fromtimestamp(state.step_started_at, dt.UTC)
        entries = read_log_since(root.uri.removeprefix("file://"), cfg.name, state.step_started_at)
        outcomes = known_outcomes(cfg, root, (e.get("inputs", {}) for e in entries))
        if outcomes is None:
            return
        result = online_metrics(
            entries, outcomes, list(cfg.deployment.outcome_key), outcome_metric(cfg), since.isoformat()
        )
        self.log.info("Online %s since %s: %s", cfg.gate.metric, since.isoformat(timespec="seconds"), result)
        for variant, r in result.items():
            if variant in readings:
                readings[variant].online_metric = r["value"]
