"""Serving targets: where a model's canary runs (``deployment.target`` in its config).

A target is one class that implements :class:`ServingTarget` (including ``from_config``) and carries
``@register_target("<name>")``; every module in this folder is imported here, so its registration is all a
new target needs. :func:`build_target` builds the one a config names.
"""

from __future__ import annotations

import importlib
import pkgutil

from airloop_airflow.targets.base import (
    TARGETS,
    ServingTarget,
    build_target,
    logs_predictions,
    register_target,
    target_class,
    target_summary,
)


def _import_targets() -> None:
    """Import every module of this package, so each target class registers itself."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_import_targets()

__all__ = [
    "TARGETS",
    "ServingTarget",
    "build_target",
    "logs_predictions",
    "register_target",
    "target_class",
    "target_summary",
]
