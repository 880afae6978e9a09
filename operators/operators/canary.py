"""The canary rollout of a challenger: ``start_canary`` >> ``watch_canary`` >> ``conclude_canary``.

* ``start_canary`` makes the serving target load the challenger, starts it at the first step's share
  and writes the rollout state to ``reports/<model>/canary/v<version>.json`` (so a retry or a restarted
  scheduler resumes the same rollout).
* ``watch_canary`` is a sensor in reschedule mode: between looks it holds no worker slot. Each look reads
  the target's cumulative per-variant figures and lets ``airloop.canary.advance`` judge the step:
  continue (next share), hold (not enough time or challenger requests yet), promote or rollback. A
  rollback takes the challenger's share to 0 at once, in the same look.
* ``conclude_canary`` applies the outcome: promote moves ``champion`` to the new version (the old one
  becomes ``previous``; the alias history records both); rollback leaves the aliases as they were,
  writes an alert and fails the task with the failing figures.

Targets: the project's model server (``deployment.target: local``; its address from the Airflow
connection ``deployment.model_server_conn_id``) or a KServe InferenceService (``kserve``: Kubernetes API
through ``deployment.kubernetes_conn_id``, metrics from Prometheus at ``deployment.prometheus_conn_id``), or
any other :class:`~airloop_airflow.targets.ServingTarget` registered in ``operators/targets/``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from airloop.canary import load_rollout, save_rollout
from airloop_airflow.base import ModelOperator
from airloop_airflow.hooks.mlflow import uses_mlflow
from airloop_airflow.notifiers.alerts import OnCallFailure
from airloop_airflow.targets import build_target

if TYPE_CHECKING:
    from airflow.sdk import Context


class StartCanaryOperator(ModelOperator):
    """Load the challenger on the serving target and start its canary at the first step.

    :param version: the version to roll out (templated; default the current ``@challenger``)
    """

    template_fields: Sequence[str] = (*ModelOperator.template_fields, "version")
    ui_color = "#fdf3e8"

    def __init__(self, *, version: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.version = version

    @uses_mlflow
    def execute(self, context: Context) -> dict[str, Any]:
        from mlflow import MlflowClient

        from airloop.canary import start_rollout
        from airloop.registry import current_alias

        cfg, root = self.pipeline(), self.root()
        client = MlflowClient()
        target = build_target(cfg)
        champion = current_alias(client, cfg.name, "champion")
        challenger = current_alias(client, cfg.name, "challenger")
        version = str(self.version or "") or challenger
        if not version or version == champion:
            info = target.serve_aliases()
            raise AirflowSkipException(
                f"no challenger to roll out: champion v{champion} serves all traffic "
                f"({target.describe()}: {info.get('variants', info) if isinstance(info, dict) else info})"
            )
        if challenger != version:
            raise AirflowFailException(
                f"v{version} is not {cfg.name}@challenger; only a version that passed the "
                "gate is rolled out (set the alias through the train DAG's gate)"
            )
        state = load_rollout(root, cfg.name, version)
        if state is not None and state.status != "running":
            raise AirflowSkipException(
                f"the canary of v{version} already ended: {state.status} "
                f"({state.decisions[-1]['reason'] if state.decisions else ''})"
            )
        if state is None:
            target.prepare(version)
            state = start_rollout(cfg.name, version, champion, target.readings(), time.time())
            save_rollout(root, state)
            self.log.info(
                "Canary of %s v%s against champion v%s on %s: steps %s",
                cfg.name,
                version,
                champion,
                target.describe(),
                list(cfg.canary.steps),
            )
        else:
            self.log.info("Resuming the canary of %s v%s at step %d", cfg.name, version, state.step)
        target.set_percent(cfg.canary.steps[state.step])
        return {"version": version, "champion_version": champion, "state_uri": root.canary_state(cfg.name, version)}


class ConcludeCanaryOperator(ModelOperator):
    """Promote (aliases move, recorded) or roll back (aliases unchanged, alert, task fails)."""

    ui_color = "#fdf3e8"

    def __init__(self, *, start_task_id: str = "start_canary", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start_task_id = start_task_id

    @uses_mlflow
    def execute(self, context: Context) -> dict[str, Any]:
        from mlflow import MlflowClient

        from airloop.registry import promote

        cfg, root = self.pipeline(), self.root()
        started = context["ti"].xcom_pull(task_ids=self.start_task_id)
        state = load_rollout(root, cfg.name, started["version"])
        if state is None or state.status == "running":
            raise AirflowFailException(
                f"the canary of v{started['version']} has not ended (state {state and state.status})"
            )
        target = build_target(cfg)
        last = state.decisions[-1]
        by = f"{context['dag'].dag_id}/{context['run_id']}"
        if state.status == "promoted":
            records = promote(
                MlflowClient(), root, cfg.name, state.version, by=by, why=f"canary passed: {last['reason']}"
            )
            target.finish(promoted=True)
            self.log.info(
                "Promoted %s v%s (previous champion v%s): %s", cfg.name, state.version, state.champion_version, records
            )
            return {
                "outcome": "promoted",
                "version": state.version,
                "previous": state.champion_version,
                "steps": state.decisions,
            }
        target.finish(promoted=False)
        summary = (
            f"{cfg.name} v{state.version} rolled back at {last['percent']}% of traffic: {last['reason']}. "
            f"Champion v{state.champion_version} serves all traffic; aliases unchanged."
        )
        # the task's failure alert (AirloopFailureNotifier) carries these figures and the runbook link
        raise OnCallFailure(
            f"{summary} Figures: {json.dumps(last['figures'], default=str)}",
            kind="canary_rollback",
            details={
                "figures": last["figures"],
                "percent": last["percent"],
                "version": state.version,
                "champion_version": state.champion_version,
                "state_uri": root.canary_state(cfg.name, state.version),
            },
        )
