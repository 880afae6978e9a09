"""A KServe InferenceService as a serving target."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from airloop_airflow.targets.base import register_target

if TYPE_CHECKING:
    from airloop.canary import VariantStats
    from airloop.config import PipelineConfig


@register_target("kserve")
class KServeTarget:
    """A KServe InferenceService.

    :param api: a ``kubernetes.client.CustomObjectsApi``
    :param prom_query: runs an instant PromQL query and returns ``data.result`` (``PrometheusHook.query``)
    :param storage_uri_of: the model artifact's URI of a registered version
    """

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

    @classmethod
    def summary(cls, cfg: PipelineConfig) -> str:
        from airloop.kserve import service_name

        return f"KServe InferenceService `{cfg.deployment.namespace}/{service_name(cfg)}`"

    @classmethod
    def from_config(cls, cfg: PipelineConfig) -> KServeTarget:
        """The InferenceService of a model: the cluster at ``deployment.kubernetes_conn_id``, its figures
        from Prometheus at ``deployment.prometheus_conn_id``, its artifacts from the MLflow registry."""
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
        from kubernetes.client import CustomObjectsApi
        from mlflow import MlflowClient

        from airloop_airflow.hooks.prometheus import PrometheusHook

        d = cfg.deployment
        api = CustomObjectsApi(KubernetesHook(conn_id=d.kubernetes_conn_id).get_conn())
        prometheus = PrometheusHook(d.prometheus_conn_id)
        return cls(cfg, api, prometheus.query, lambda v: MlflowClient().get_model_version_download_uri(cfg.name, v))

    def _args(self) -> dict[str, str]:
        from airloop.kserve import GROUP, PLURAL, VERSION

        return {"group": GROUP, "version": VERSION, "namespace": self.namespace, "plural": PLURAL}

    def _get(self) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.api.get_namespaced_custom_object(**self._args(), name=self.name)
        except Exception as e:  # kubernetes.client.ApiException
            if getattr(e, "status", None) == 404:
                return None
            raise
        return found

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
