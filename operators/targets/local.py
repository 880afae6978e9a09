"""The project's own model server as a serving target."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airloop_airflow.targets.base import register_target

if TYPE_CHECKING:
    from airloop.canary import VariantStats
    from airloop.config import PipelineConfig
    from airloop.serving.client import ModelServerClient


@register_target("local")
class LocalServerTarget:
    """The project's model server (``airloop.serving.server``), driven through its admin routes.

    :param client: the server's client (from the model's connection: :meth:`from_config`)
    """

    #: the server writes every served prediction to the data root (the canary's online metric reads it)
    logs_predictions = True

    def __init__(self, client: ModelServerClient) -> None:
        self.client = client

    @classmethod
    def summary(cls, cfg: PipelineConfig) -> str:
        return f"the project's model server (connection `{cfg.model_server_conn_id}`)"

    @classmethod
    def from_config(cls, cfg: PipelineConfig) -> LocalServerTarget:
        """The server at the model's Airflow connection (``cfg.model_server_conn_id``), whose password is
        the server's admin token: every call that moves traffic or aliases (reload, weight) sends it."""
        from airloop_airflow.hooks.model_server import ModelServerHook

        return cls(ModelServerHook(cfg.model_server_conn_id).get_conn())

    @property
    def base_url(self) -> str:
        return self.client.base_url

    def serve_aliases(self) -> dict[str, Any]:
        """Load the registry's current ``@champion`` / ``@challenger``."""
        return self.client.reload()

    def prepare(self, version: str) -> None:
        info = self.serve_aliases()
        served = info.get("variants", {}).get("challenger")
        if served != str(version):
            raise RuntimeError(
                f"the model server at {self.base_url} serves challenger v{served}, not v{version}: "
                "the @challenger alias moved while this rollout started"
            )

    def set_percent(self, percent: int) -> None:
        self.client.set_weight(percent / 100.0)

    def readings(self) -> dict[str, VariantStats]:
        from airloop.canary import parse_metrics

        return parse_metrics(self.client.metrics_text())

    def finish(self, promoted: bool) -> None:
        self.set_percent(0)
        if promoted:
            self.serve_aliases()  # the new champion; a newer challenger, if any, waits at 0 for its canary

    def describe(self) -> str:
        return f"model server {self.base_url}"
