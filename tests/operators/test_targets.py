"""Serving targets: the registry behind ``deployment.target``, and a new target added as one class.

``MemoryTarget`` below is a complete target: a class with ``@register_target`` and nothing else. The canary
operators run against it with an in-memory MLflow registry (no server, no database)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from airloop.canary import VariantStats, load_rollout, save_rollout
from airloop.errors import ConfigError
from airloop.storage import DataRoot
from airloop_airflow.targets import TARGETS, ServingTarget, build_target, register_target
from airloop_airflow.targets.kserve import KServeTarget
from airloop_airflow.targets.local import LocalServerTarget

pytestmark = pytest.mark.unit


@register_target("memory")
class MemoryTarget:
    """A model server inside this process: what it serves is shared by every task, like a real server's."""

    served: dict[str, Any] = {}

    @classmethod
    def from_config(cls, cfg):
        return cls()

    def serve_aliases(self):
        return dict(self.served)

    def prepare(self, version):
        self.served.update(challenger=version, percent=0)

    def set_percent(self, percent):
        self.served["percent"] = percent

    def readings(self):
        return {"champion": VariantStats(requests=10), "challenger": VariantStats(requests=1)}

    def finish(self, promoted):
        self.served["percent"] = 100 if promoted else 0

    def describe(self):
        return "in-memory server"


@pytest.fixture(autouse=True, scope="module")
def _unregister_memory():
    yield
    TARGETS.pop("memory", None)


def with_target(cfg, name: str):
    return cfg.model_copy(update={"deployment": cfg.deployment.model_copy(update={"target": name})})


def test_the_shipped_targets_are_registered_and_are_serving_targets():
    assert TARGETS["local"] is LocalServerTarget and TARGETS["kserve"] is KServeTarget
    assert all(issubclass(cls, ServingTarget) for cls in TARGETS.values())


def test_build_target_builds_the_class_the_config_names(cfg):
    MemoryTarget.served.clear()
    target = build_target(with_target(cfg, "memory"))
    assert isinstance(target, MemoryTarget) and isinstance(target, ServingTarget)


def test_an_unknown_target_names_the_known_ones(cfg):
    with pytest.raises(ConfigError) as info:
        build_target(with_target(cfg, "nosuch"))
    message = str(info.value)
    assert "deployment.target 'nosuch'" in message and f"model '{cfg.name}'" in message
    assert "known: kserve, local, memory" in message and "@register_target" in message


def test_a_name_belongs_to_one_class():
    class Other(MemoryTarget):
        pass

    with pytest.raises(ValueError, match="'local' is already registered to .*LocalServerTarget"):
        register_target("local")(Other)
    assert TARGETS["local"] is LocalServerTarget
    assert register_target("memory")(MemoryTarget) is MemoryTarget  # the same class again: no change


def test_the_config_takes_any_well_formed_target_name():
    from pydantic import ValidationError

    from airloop.config import DeploymentConfig

    assert DeploymentConfig(target="memory").target == "memory"
    assert DeploymentConfig().target == "local"
    with pytest.raises(ValidationError):
        DeploymentConfig(target="Not A Name")


def test_the_local_target_reads_its_servers_connection(cfg, monkeypatch):
    monkeypatch.setenv(f"AIRFLOW_CONN_{cfg.model_server_conn_id.upper()}", "http://127.0.0.1:19123")
    target = build_target(with_target(cfg, "local"))
    assert isinstance(target, LocalServerTarget) and target.base_url == "http://127.0.0.1:19123"
    assert target.describe() == "model server http://127.0.0.1:19123"


def test_the_kserve_target_reads_prometheus_through_its_hook(cfg, monkeypatch):
    """``from_config``: the cluster from the Kubernetes connection, figures from Prometheus's connection."""
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
    from kubernetes.client import ApiClient

    from tests.operators.test_hooks import serve_stub

    monkeypatch.setattr(KubernetesHook, "get_conn", lambda self: ApiClient())
    with serve_stub() as stub:
        monkeypatch.setenv(
            "AIRFLOW_CONN_PROM_TEST", json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": stub.port})
        )
        d = cfg.deployment.model_copy(update={"target": "kserve", "prometheus_conn_id": "prom_test"})
        target = build_target(cfg.model_copy(update={"deployment": d}))
        assert isinstance(target, KServeTarget) and target.describe() == "InferenceService ml-serving/flight-delays"
        stub.answer("GET", "/api/v1/query", (200, {"status": "success", "data": {"result": []}}))
        isvc = {"status": {"components": {"predictor": {"latestCreatedRevision": "r-2"}}}}
        target.api = SimpleNamespace(get_namespaced_custom_object=lambda **kw: isvc)
        assert set(target.readings()) == {"challenger"}
        assert [p.split("?")[0] for _, p, _, _ in stub.requests] == ["/api/v1/query"] * 2


# --- the canary operators against the one-class target ---------------------------------------------------


class Registry:
    """An in-memory MLflow registry: the alias calls the canary's operators make."""

    def __init__(self, **aliases: str) -> None:
        self.aliases = aliases

    def get_model_version_by_alias(self, model: str, alias: str) -> Any:
        from mlflow.exceptions import MlflowException

        if alias not in self.aliases:
            raise MlflowException(f"no alias {alias}")
        return SimpleNamespace(version=self.aliases[alias])

    def set_registered_model_alias(self, model: str, alias: str, version: str) -> None:
        self.aliases[alias] = version

    def delete_registered_model_alias(self, model: str, alias: str) -> None:
        del self.aliases[alias]


@pytest.fixture
def on_memory(cfg, monkeypatch):
    import mlflow

    from airloop import config

    mcfg = with_target(cfg, "memory")
    registry = Registry(champion="1", challenger="2")
    monkeypatch.setattr(config, "get_pipeline", lambda name, folder=None: mcfg)
    monkeypatch.setattr(mlflow, "MlflowClient", lambda *a, **k: registry)
    MemoryTarget.served.clear()
    return mcfg, registry


def ctx(started: dict[str, Any]) -> dict[str, Any]:
    return {
        "ti": SimpleNamespace(xcom_pull=lambda task_ids: started),
        "dag": SimpleNamespace(dag_id="m__deploy"),
        "run_id": "manual__test",
    }


def end_rollout(root: DataRoot, model: str, version: str, status: str) -> None:
    state = load_rollout(root, model, version)
    state.status = status
    state.decisions.append({"step": 0, "percent": 10, "action": status, "reason": "test", "figures": {}})
    save_rollout(root, state)


@pytest.mark.parametrize("outcome", ["promoted", "rolled_back"])
def test_the_canary_operators_run_on_a_one_class_target(on_memory, tmp_path, outcome):
    from airloop_airflow.notifiers.alerts import OnCallFailure
    from airloop_airflow.operators.canary import ConcludeCanaryOperator, StartCanaryOperator

    mcfg, registry = on_memory
    kw = {"model": mcfg.name, "data_root": str(tmp_path)}
    started = StartCanaryOperator(task_id="start_canary", **kw).execute({})
    assert started["version"] == "2" and started["champion_version"] == "1"
    assert MemoryTarget.served == {"challenger": "2", "percent": mcfg.canary.steps[0]}

    end_rollout(DataRoot(str(tmp_path)), mcfg.name, "2", outcome)
    conclude = ConcludeCanaryOperator(task_id="conclude_canary", **kw)
    if outcome == "promoted":
        assert conclude.execute(ctx(started))["outcome"] == "promoted"
        assert registry.aliases == {"champion": "2", "previous": "1"} and MemoryTarget.served["percent"] == 100
    else:
        with pytest.raises(OnCallFailure, match="rolled back at 10% of traffic"):
            conclude.execute(ctx(started))
        assert registry.aliases == {"champion": "1", "challenger": "2"} and MemoryTarget.served["percent"] == 0
