"""The shared bases of airloop's operators and sensors, and the helpers every operator uses.

An operator or sensor is bound to one model's pipeline config (looked up by name when it runs) and a data
root; data problems fail it without retries (:func:`data_problems_fail_fast`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, BaseSensorOperator
from airflow.sdk.exceptions import AirflowFailException

from airloop_airflow.links.ui import report_url

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airloop.config import PipelineConfig
    from airloop.storage import DataRoot


@contextlib.contextmanager
def data_problems_fail_fast() -> Iterator[None]:
    """Turn data problems into non-retryable failures; let everything else retry."""
    from airloop.errors import DataProblem

    try:
        yield
    except DataProblem as e:
        raise AirflowFailException(str(e)) from e


def partition_of(context: Context) -> str:
    from airloop.storage import partition_key

    return partition_key(context.get("data_interval_start"), context["run_id"])


def report_link(root: DataRoot, uri: str) -> str:
    """A UI link for a report under a local data root; the URI itself for object storage."""
    rel = root.relative(uri) if root.is_local else None
    return report_url(rel) if rel is not None else uri


def event_extra(result: dict[str, Any]) -> dict[str, Any]:
    """What downstream DAGs need to find the batch: URIs, hashes and counts, never data."""
    keys = ("uri", "partition", "rows", "content_hash", "source_uri", "source_sha256", "data_interval", "report_uri")
    extra = {k: result.get(k) for k in keys}
    extra["validation"] = {k: result["validation"][k] for k in ("suite", "evaluated", "failed")}
    return extra


class ModelBound:
    """Bound to one model's pipeline config (looked up by name at run time) and a data root."""

    template_fields: Collection[str] = ("model",)

    def __init__(self, *, model: str, data_root: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.data_root = data_root

    def pipeline(self) -> PipelineConfig:
        from airloop.config import get_pipeline

        return get_pipeline(self.model)

    def root_uri(self) -> str:
        from airloop.storage import default_data_root_uri

        return self.data_root or default_data_root_uri()

    def root(self) -> DataRoot:
        from airloop.storage import DataRoot

        return DataRoot(self.root_uri())


class ModelOperator(ModelBound, BaseOperator):
    """Base for operators bound to one model's pipeline config."""

    def __init__(self, **kwargs: Any) -> None:  # an own __init__: Airflow's operator metaclass wraps it
        super().__init__(**kwargs)


class ModelSensor(ModelBound, BaseSensorOperator):
    """Base for sensors bound to one model; reschedule mode by default (no slot held while waiting)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("mode", "reschedule")
        super().__init__(**kwargs)
