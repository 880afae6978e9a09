"""What a serving target is (:class:`ServingTarget`) and the registry that maps ``deployment.target`` names
to target classes."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from airloop.errors import ConfigError

if TYPE_CHECKING:
    from airloop.canary import VariantStats
    from airloop.config import PipelineConfig


@runtime_checkable
class ServingTarget(Protocol):
    """Where a model's canary runs: the deploy DAG loads the challenger, moves its share of traffic and
    reads each variant's cumulative figures through these calls only."""

    @classmethod
    def from_config(cls, cfg: PipelineConfig) -> ServingTarget:
        """The target of a model's config (its Airflow connections, cluster, ...)."""
        ...

    def serve_aliases(self) -> dict[str, Any]:
        """Serve the registry's current ``@champion`` / ``@challenger``; what is served now."""
        ...

    def prepare(self, version: str) -> None:
        """Load ``version`` as the challenger, at no traffic; fail if it cannot be."""
        ...

    def set_percent(self, percent: int) -> None:
        """Send ``percent`` (0..100) of the traffic to the challenger."""
        ...

    def readings(self) -> dict[str, VariantStats]:
        """Each variant's cumulative figures (requests, server errors, latency and prediction histograms)."""
        ...

    def finish(self, promoted: bool) -> None:
        """End the rollout: the new champion serves everything, or the old one does again."""
        ...

    def describe(self) -> str:
        """The target in a few words, for logs and skip messages."""
        ...


#: the registered serving targets, by ``deployment.target`` name
TARGETS: dict[str, type[ServingTarget]] = {}

T = TypeVar("T", bound=type[ServingTarget])


def register_target(name: str) -> Callable[[T], T]:
    """Class decorator: the class serves the models whose ``deployment.target`` is ``name``."""

    def register(cls: T) -> T:
        known = TARGETS.get(name)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"serving target {name!r} is already registered to {known.__module__}.{known.__name__}")
        TARGETS[name] = cls
        return cls

    return register


def target_class(cfg: PipelineConfig) -> type[ServingTarget]:
    """The class registered under the config's ``deployment.target``.

    :raises ConfigError: no target of that name is registered (the message lists those that are)
    """
    name = cfg.deployment.target
    cls = TARGETS.get(name)
    if cls is None:
        raise ConfigError(
            f"model {cfg.name!r}: deployment.target {name!r} is not a registered serving target; "
            f"known: {', '.join(sorted(TARGETS)) or 'none'} (a target is a class decorated with "
            "@register_target(<name>) in operators/targets/)"
        )
    return cls


def target_summary(cfg: PipelineConfig) -> str:
    """The target in a few words for the deploy DAG's docs, without touching a connection: the class's
    optional ``summary(cfg)`` classmethod, else its name."""
    cls = target_class(cfg)
    summary = getattr(cls, "summary", None)
    return str(summary(cfg)) if callable(summary) else f"the `{cfg.deployment.target}` serving target"


def logs_predictions(cfg: PipelineConfig) -> bool:
    """Whether the target writes the served predictions to the data root's prediction log (optional class
    attribute ``logs_predictions``), which the canary's online metric and the drift check read."""
    return bool(getattr(target_class(cfg), "logs_predictions", False))


def build_target(cfg: PipelineConfig) -> ServingTarget:
    """The serving target of a model's config (``deployment.target``), built by its class's ``from_config``.

    :raises ConfigError: no target of that name is registered (the message lists those that are)
    """
    return target_class(cfg).from_config(cfg)
