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
through ``deployment.kubernetes_conn_id``, metrics from Prometheus at ``deployment.prometheus_conn_id``).
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from airloop_airflow.alerting import OnCallFailure
from airloop_airflow.batch import _ModelOperator, _ModelSensor

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airloop.canary import Rollout, VariantStats
    from airloop.config import PipelineConfig
    from airloop.storage import DataRoot


def state_uri(root: DataRoot, model: str, version: str) -> str:
    return f"{root.uri}/reports/{model}/canary/v{version}.json"


def load_state(root: DataRoot, model: str, version: str) -> Rollout | None:
    from airloop.canary import Rollout

    uri = state_uri(root, model, version)
    return Rollout.from_dict(root.read_json(uri)) if root.exists(uri) else None


def save_state(root: DataRoot, state: Rollout) -> None:
    root.write_json_atomic(state_uri(root, state.model, state.version), state.to_dict())


def _http(method: str, url: str, body: Any = None, timeout: float = 30.0) -> bytes:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (an address from a connection)
        return resp.read()


class LocalServerTarget:
    """The project's model server (``airloop.serving.server``), driven through its admin routes."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    def serve_aliases(self) -> dict[str, Any]:
        """Load the registry's current ``@champion`` / ``@challenger``."""
        return json.loads(_http("POST", f"{self.base_url}/admin/reload"))

    def prepare(self, version: str) -> None:
        info = self.serve_aliases()
        served = info.get("variants", {}).get("challenger")
        if served != str(version):
            raise RuntimeError(
                f"the model server at {self.base_url} serves challenger v{served}, not v{version}: "
                "the @challenger alias moved while this rollout started"
            )

    def set_percent(self, percent: int) -> None:
        _http("PUT", f"{self.base_url}/admin/weight", {"weight": percent / 100.0})

    def readings(self) -> dict[str, VariantStats]:
        from airloop.canary import parse_metrics

        return parse_metrics(_http("GET", f"{self.base_url}/metrics").decode())

    def finish(self, promoted: bool) -> None:
        self.set_percent(0)
        if promoted:
            self.serve_aliases()  # the new champion; a newer challenger, if any, waits at 0 for its canary

    def describe(self) -> str:
        return f"model server {self.base_url}"


class KServeTarget:
    """A KServe InferenceService. ``api`` is a ``kubernetes.client.CustomObjectsApi``; ``prom_query``
    runs an instant PromQL query and returns ``data.result``."""

    def __init__(
        self,
        cfg: PipelineConfig,
        api: Any,
        prom_query: Callable[[str], list[dict[str, Any]]],
        storage_uri_of: Callable[[str], str],
    ) -> None:
        from airloop.kserve import service_name

        self.cfg, self.api, self.prom_query, self.storage_uri_of = cfg, api, prom_query, storage_uri_of
        self.name, self.namespace = service_name(cfg), cfg.deployment.namespace

    def _args(self) -> dict[str, str]:
        from airloop.kserve import GROUP, PLURAL, VERSION

        return {"group": GROUP, "version": VERSION, "namespace": self.namespace, "plural": PLURAL}

    def _get(self) -> dict[str, Any] | None:
        try:
            return self.api.get_namespaced_custom_object(**self._args(), name=self.name)
        except Exception as e:  # kubernetes.client.ApiException
            if getattr(e, "status", None) == 404:
                return None
            raise

    def _patch(self, body: dict[str, Any]) -> None:
        self.api.patch_namespaced_custom_object(**self._args(), name=self.name, body=body)

    def serve_aliases(self) -> dict[str, Any]:
        return self._get() or {}

    def prepare(self, version: str) -> None:
        from airloop.kserve import canary_patch, inference_service

        uri = self.storage_uri_of(str(version))
        if self._get() is None:  # first deployment: the new model serves everything
            self.api.create_namespaced_custom_object(**self._args(), body=inference_service(self.cfg, uri, version))
            return
        self._patch(canary_patch(uri, version, 0))

    def set_percent(self, percent: int) -> None:
        from airloop.kserve import traffic_patch

        self._patch(traffic_patch(percent))

    def readings(self) -> dict[str, VariantStats]:
        from airloop.kserve import queries, revisions, stats_from_prometheus

        out = {}
        for variant, revision in revisions(self._get() or {}).items():
            if revision:
                q = queries(self.namespace, revision)
                out[variant] = stats_from_prometheus(
                    self.prom_query(q["by_code_class"]), self.prom_query(q["latency_ms_buckets"])
                )
        return out

    def finish(self, promoted: bool) -> None:
        self.set_percent(100 if promoted else 0)

    def describe(self) -> str:
        return f"InferenceService {self.namespace}/{self.name}"


def build_target(cfg: PipelineConfig) -> LocalServerTarget | KServeTarget:
    """The serving target of a model's config, built from its Airflow connections."""
    from airflow.sdk import BaseHook

    d = cfg.deployment
    if d.target == "local":
        conn = BaseHook.get_connection(cfg.model_server_conn_id)
        return LocalServerTarget(f"{conn.schema or 'http'}://{conn.host}:{conn.port}")
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
    from kubernetes.client import CustomObjectsApi
    from mlflow import MlflowClient

    prom = BaseHook.get_connection(d.prometheus_conn_id)
    prom_url = f"{prom.schema or 'http'}://{prom.host}:{prom.port or 9090}"

    def prom_query(q: str) -> list[dict[str, Any]]:
        body = json.loads(_http("GET", f"{prom_url}/api/v1/query?{urllib.parse.urlencode({'query': q})}"))
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus query failed: {body}")
        return body["data"]["result"]

    api = CustomObjectsApi(KubernetesHook(conn_id=d.kubernetes_conn_id).get_conn())
    return KServeTarget(cfg, api, prom_query, lambda v: MlflowClient().get_model_version_download_uri(cfg.name, v))


class StartCanaryOperator(_ModelOperator):
    """Load the challenger on the serving target and start its canary at the first step.

    :param version: the version to roll out (templated; default the current ``@challenger``)
    """

    template_fields: Sequence[str] = (*_ModelOperator.template_fields, "version")
    ui_color = "#fdf3e8"

    def __init__(self, *, version: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.version = version

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
        state = load_state(root, cfg.name, version)
        if state is not None and state.status != "running":
            raise AirflowSkipException(
                f"the canary of v{version} already ended: {state.status} "
                f"({state.decisions[-1]['reason'] if state.decisions else ''})"
            )
        if state is None:
            target.prepare(version)
            state = start_rollout(cfg.name, version, champion, target.readings(), time.time())
            save_state(root, state)
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
        return {"version": version, "champion_version": champion, "state_uri": state_uri(root, cfg.name, version)}


class CanaryStepSensor(_ModelSensor):
    """Judge the running canary step at each look (reschedule mode: no slot held in between)."""

    ui_color = "#fdf3e8"

    def __init__(self, *, start_task_id: str = "start_canary", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start_task_id = start_task_id

    def poke(self, context: Context) -> PokeReturnValue:
        from airloop.canary import advance

        cfg, root = self.pipeline(), self.root()
        started = context["ti"].xcom_pull(task_ids=self.start_task_id)
        state = load_state(root, cfg.name, started["version"])
        if state is None:
            raise AirflowFailException(f"no canary state at {started['state_uri']}")
        if state.status != "running":
            return PokeReturnValue(is_done=True, xcom_value=state.decisions[-1] if state.decisions else {})
        from airloop.config import higher_is_better

        target = build_target(cfg)
        readings = target.readings()
        if cfg.deployment.target == "local" and cfg.deployment.outcome_key and root.is_local:
            self.add_online_metrics(cfg, root, state, readings)
        decision = advance(
            state, cfg.canary, readings, time.time(), lower_is_better=not higher_is_better(cfg.gate.metric)
        )
        if decision.action == "rollback":
            target.set_percent(0)  # first stop the harm, then record
        save_state(root, state)
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


class ConcludeCanaryOperator(_ModelOperator):
    """Promote (aliases move, recorded) or roll back (aliases unchanged, alert, task fails)."""

    ui_color = "#fdf3e8"

    def __init__(self, *, start_task_id: str = "start_canary", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start_task_id = start_task_id

    def execute(self, context: Context) -> dict[str, Any]:
        from mlflow import MlflowClient

        from airloop.registry import promote

        cfg, root = self.pipeline(), self.root()
        started = context["ti"].xcom_pull(task_ids=self.start_task_id)
        state = load_state(root, cfg.name, started["version"])
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
                "state_uri": state_uri(root, cfg.name, state.version),
            },
        )
