"""Training on Kubernetes GPU pods, or as a local process with the identical command and arguments.

``TrainModelOperator`` decides at run time: when the model's Kubernetes connection
(``training.kubernetes_conn_id``) exists, it builds a ``KubernetesPodOperator`` from the model config
(GPU limits, node selector, tolerations, labels, MLflow address and its credentials from a Secret,
non-root security context, a start-up timeout long enough for a GPU node to scale up) and runs it;
otherwise it runs ``python -m airloop.training.train`` locally. The task log says which mode ran.
The Kubernetes client is imported only inside ``execute``/``build_pod_operator``, never at parse time.

``ChampionChallengerGateOperator`` scores the new version against ``@champion`` on the same holdout and
sets the aliases (see ``airloop.registry``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from airloop_airflow.assets import model_asset
from airloop_airflow.base import ModelOperator
from airloop_airflow.hooks.mlflow import uses_mlflow
from airloop_airflow.links.ui import MLFLOW_URL_KEY, MlflowLink, mlflow_ui_url
from airloop_airflow.notifiers.alerts import POD_PENDING_EXCEPTIONS, OnCallFailure

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airloop.config import PipelineConfig

ENTRYPOINT = ["python", "-m", "airloop.training.train"]
POD_RESULT = "/airflow/xcom/return.json"


def git_commit() -> str:
    """The commit of the code that runs (``AIRLOOP_GIT_COMMIT`` in images, else ``git rev-parse``)."""
    if os.environ.get("AIRLOOP_GIT_COMMIT"):
        return os.environ["AIRLOOP_GIT_COMMIT"]
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def training_window(root: Any, cfg: PipelineConfig) -> list[str]:
    """The most recent ``training.window_days`` complete feature partitions."""
    parts = sorted(uri.rsplit("/", 1)[-1] for uri in root.list_partitions("features", cfg.name))
    return parts[-cfg.training.window_days :]


class TrainModelOperator(ModelOperator):
    """Train, log and register one model version for this DAG run (a GPU pod or a local process).

    :param reason: why this training runs: ``schedule``, ``drift`` or ``manual`` (templated)
    :param drift: the drift context that caused it, if any (templated; JSON-serialisable)
    :param mode: ``auto`` (pod if the Kubernetes connection exists), ``kubernetes`` or ``local``
    """

    template_fields: Sequence[str] = (*ModelOperator.template_fields, "reason", "drift")
    ui_color = "#e8fde9"
    operator_extra_links = (MlflowLink(),)

    def __init__(self, *, reason: str = "schedule", drift: Any = None, mode: str = "auto", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reason = reason
        self.drift = drift
        self.mode = mode
        self._process: subprocess.Popen[str] | None = None

    # -- what runs, identical in both modes --------------------------------------------------------
    def run_key(self, context: Context) -> str:
        # one model version per DAG run: a retry (new try number) reuses the key
        return f"{context['dag'].dag_id}/{context['run_id']}"

    def lineage(self, context: Context, cfg: PipelineConfig, image: str) -> dict[str, str]:
        drift = self.drift if isinstance(self.drift, str) else json.dumps(self.drift or {}, sort_keys=True)
        return {
            "airloop.dag_id": context["dag"].dag_id,
            "airloop.run_id": context["run_id"],
            "airloop.try_number": str(context["ti"].try_number),
            "airloop.reason": str(self.reason or "schedule"),
            "airloop.drift": drift[:5000],
            "airloop.git_commit": git_commit(),
            "airloop.image": image,
        }

    def arguments(
        self, context: Context, cfg: PipelineConfig, partitions: list[str], image: str, data_root: str, result_file: str
    ) -> list[str]:
        return [
            "--model",
            cfg.name,
            "--data-root",
            data_root,
            "--partitions",
            ",".join(partitions),
            "--run-key",
            self.run_key(context),
            "--lineage",
            json.dumps(self.lineage(context, cfg, image), sort_keys=True),
            "--seed",
            str(cfg.training.seed),
            "--max-epochs",
            str(cfg.training.max_epochs),
            "--result-file",
            result_file,
        ]

    def use_kubernetes(self, cfg: PipelineConfig) -> bool:
        if self.mode != "auto":
            return self.mode == "kubernetes"
        from airflow.sdk import BaseHook

        try:
            BaseHook.get_connection(cfg.training.kubernetes_conn_id)
            return True
        except Exception:  # AirflowNotFoundException: no cluster configured
            return False

    # -- Kubernetes --------------------------------------------------------------------------------
    def build_pod_operator(self, context: Context, cfg: PipelineConfig, partitions: list[str]) -> Any:
        """The exact ``KubernetesPodOperator`` this task runs in Kubernetes mode."""
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
        from kubernetes.client import models as k8s

        t = cfg.training
        limits = {"cpu": t.cpu, "memory": t.memory}
        if t.gpus:
            limits["nvidia.com/gpu"] = str(t.gpus)
        return KubernetesPodOperator(
            task_id=self.task_id,
            kubernetes_conn_id=t.kubernetes_conn_id,
            namespace=t.namespace,
            name=f"train-{cfg.name.replace('_', '-')}",
            image=t.image,
            cmds=list(ENTRYPOINT),
            arguments=self.arguments(context, cfg, partitions, t.image, self.root_uri(), POD_RESULT),
            labels={
                "app.kubernetes.io/name": "airloop-training",
                "app.kubernetes.io/part-of": "airloop",
                "airloop/model": cfg.name.replace("_", "-"),
                "airloop/dag-id": context["dag"].dag_id.replace("_", "-"),
                "airloop/run-id": _label_value(context["run_id"]),
            },
            container_resources=k8s.V1ResourceRequirements(requests={"cpu": t.cpu, "memory": t.memory}, limits=limits),
            node_selector=dict(t.node_selector),
            tolerations=[
                k8s.V1Toleration(key=x.key, operator=x.operator, value=x.value, effect=x.effect) for x in t.tolerations
            ],
            env_vars=[
                k8s.V1EnvVar(name="MLFLOW_TRACKING_URI", value=t.mlflow_tracking_uri),
                k8s.V1EnvVar(name="AIRLOOP_DATA_ROOT", value=self.root_uri()),
                k8s.V1EnvVar(name="AIRLOOP_GIT_COMMIT", value=git_commit()),
            ],
            env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=t.mlflow_secret))],
            security_context=k8s.V1PodSecurityContext(
                run_as_non_root=True, run_as_user=1000, run_as_group=1000, fs_group=1000
            ),
            container_security_context=k8s.V1SecurityContext(
                allow_privilege_escalation=False, capabilities=k8s.V1Capabilities(drop=["ALL"])
            ),
            service_account_name=t.service_account,
            startup_timeout_seconds=t.startup_timeout_seconds,
            on_finish_action="delete_succeeded_pod",  # keep failed pods for on-call to inspect
            do_xcom_push=True,
            get_logs=True,
        )

    # -- local ---------------------------------------------------------------------------------------
    def run_local(self, context: Context, cfg: PipelineConfig, partitions: list[str]) -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            result_file = f"{tmp}/return.json"
            args = self.arguments(context, cfg, partitions, "local", self.root().uri, result_file)
            cmd = [sys.executable, *ENTRYPOINT[1:], *args]
            self.log.info(
                "Training mode: local process (no Kubernetes connection %r). Command: %s",
                cfg.training.kubernetes_conn_id,
                shlex.join(["python", *ENTRYPOINT[1:], *args]),
            )
            env = {**os.environ, "AIRLOOP_DATA_ROOT": self.root().uri}
            self._process = subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
            )
            assert self._process.stdout is not None
            for line in self._process.stdout:
                self.log.info("%s", line.rstrip())
            rc = self._process.wait()
            if rc != 0:
                raise RuntimeError(f"training process exited with {rc}; see the lines above")
            result: dict[str, Any] = json.loads(Path(result_file).read_text())
            return result

    def on_kill(self) -> None:
        if self._process and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)

    @uses_mlflow
    def execute(self, context: Context) -> dict[str, Any]:
        cfg = self.pipeline()
        if str(self.reason or "schedule") == "schedule" and cfg.training.on_new_features == "until_champion":
            from mlflow import MlflowClient

            from airloop.registry import current_alias

            champion = current_alias(MlflowClient(), cfg.name, "champion")
            if champion:
                raise AirflowSkipException(
                    f"{cfg.name} has a champion (v{champion}) and training.on_new_features is until_champion: "
                    "new features alone do not retrain; drift does (or trigger with conf reason=manual)."
                )
        partitions = training_window(self.root(), cfg)
        if len(partitions) < cfg.training.min_partitions:
            # not an error: an asset-triggered run early in a model's life simply has too little data yet
            raise AirflowSkipException(
                f"{cfg.name}: only {len(partitions)} feature partition(s) available, training needs "
                f"{cfg.training.min_partitions} (training.min_partitions); skipping until more days arrive."
            )
        if self.use_kubernetes(cfg):
            self.log.info(
                "Training mode: Kubernetes pod in namespace %s on image %s with %s GPU(s)",
                cfg.training.namespace,
                cfg.training.image,
                cfg.training.gpus,
            )
            pod = self.build_pod_operator(context, cfg, partitions)
            try:
                return self._link_run(context, pod.execute(context))
            except Exception as e:
                if type(e).__name__ not in POD_PENDING_EXCEPTIONS:
                    raise
                raise OnCallFailure(
                    f"the training pod never started: {e}. Within startup_timeout_seconds="
                    f"{cfg.training.startup_timeout_seconds} no node could take it: usually no GPU node "
                    f"({cfg.training.gpus} x nvidia.com/gpu, node selector {dict(cfg.training.node_selector)}) "
                    "could be scaled up, or the image could not be pulled; the pod's events are in the log above.",
                    kind="training_pod_pending",
                    details={
                        "namespace": cfg.training.namespace,
                        "image": cfg.training.image,
                        "gpus": cfg.training.gpus,
                    },
                ) from e
        return self._link_run(context, self.run_local(context, cfg, partitions))

    def _link_run(self, context: Context, result: dict[str, Any]) -> dict[str, Any]:
        """Point the task's MLflow link at the run it trained."""
        from mlflow import MlflowClient

        run_id = (result or {}).get("run_id")
        if run_id:
            experiment = MlflowClient().get_run(run_id).info.experiment_id
            url = mlflow_ui_url(f"experiments/{experiment}/runs/{run_id}")
            if url:
                context["ti"].xcom_push(key=MLFLOW_URL_KEY, value=url)
        return result


def _label_value(value: str) -> str:
    """A Kubernetes label value: at most 63 chars of [A-Za-z0-9-_.], alphanumeric at both ends."""
    v = re.sub(r"[^A-Za-z0-9_.-]", "-", value)[:63]
    return v.strip("-_.") or "none"


class ChampionChallengerGateOperator(ModelOperator):
    """Score the new version against ``@champion`` on the training run's holdout and set aliases.

    Pass: alias ``challenger`` (or ``champion`` when there is none yet), and an event on
    ``<model>.challenger``. Fail: aliases unchanged, the task fails (no retry) giving both scores.

    :param train_task_id: the task whose XCom holds the training result
    """

    ui_color = "#f3e8fd"
    operator_extra_links = (MlflowLink(),)

    def __init__(self, *, train_task_id: str = "train_model", **kwargs: Any) -> None:
        model = kwargs["model"]
        kwargs.setdefault("outlets", [model_asset(model, "challenger")])
        super().__init__(**kwargs)
        self.train_task_id = train_task_id

    @uses_mlflow
    def execute(self, context: Context) -> dict[str, Any]:
        from mlflow import MlflowClient

        from airloop.datasets import load_partitions
        from airloop.registry import run_gate

        cfg, root = self.pipeline(), self.root()
        result = context["ti"].xcom_pull(task_ids=self.train_task_id)
        if not result or "version" not in result:
            raise AirflowFailException(f"no training result in XCom of {self.train_task_id}")
        holdout = load_partitions(root, "raw", cfg.name, tuple(result["holdout_partitions"]))
        decision = run_gate(
            cfg, MlflowClient(), root, result["version"], holdout, by=f"{context['dag'].dag_id}/{context['run_id']}"
        )
        self.log.info("Gate for %s v%s: %s", cfg.name, result["version"], decision.reason)
        url = mlflow_ui_url(f"models/{cfg.name}/versions/{result['version']}")
        if url:
            context["ti"].xcom_push(key=MLFLOW_URL_KEY, value=url)
        if not decision.passed:
            raise OnCallFailure(
                f"{cfg.name} v{decision.challenger_version} did not pass the gate: {decision.reason}. "
                f"Challenger {decision.metric}={decision.challenger_score:.4f}, champion "
                f"(v{decision.champion_version}) {decision.metric}="
                f"{'n/a' if decision.champion_score is None else f'{decision.champion_score:.4f}'}. Aliases unchanged.",
                kind="gate_refused",
                details={"gate": decision.to_dict()},
            )
        extra = {
            "version": result["version"],
            "run_id": result["run_id"],
            "model_uri": result["model_uri"],
            "metrics": result.get("metrics", {}),
            "gate": decision.to_dict(),
        }
        context["outlet_events"][model_asset(cfg.name, "challenger")].extra = extra
        return extra


class ModelRollbackOperator(ModelOperator):
    """On-call: make an earlier version ``champion`` at once (recorded in the alias history).

    :param version: the version to restore (templated; from the run conf)
    :param reason: why (templated; required)
    """

    template_fields: Sequence[str] = (*ModelOperator.template_fields, "version", "reason")

    def __init__(self, *, version: str, reason: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.version = version
        self.reason = reason

    @uses_mlflow
    def execute(self, context: Context) -> list[dict[str, Any]]:
        from mlflow import MlflowClient

        from airloop.registry import rollback

        try:
            records = rollback(
                MlflowClient(),
                self.root(),
                self.model,
                str(self.version),
                by=f"{context['dag'].dag_id}/{context['run_id']}",
                why=str(self.reason or ""),
            )
        except ValueError as e:
            raise AirflowFailException(str(e)) from e
        self.log.info("Rolled back %s: %s", self.model, records)
        return records
