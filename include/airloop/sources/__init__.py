"""Source adapters: code that fills the landing layout of :mod:`airloop.ingest` from somewhere else.

The generic ``files`` source needs no adapter: an upstream system writes the files itself.
"""

from __future__ import annotations

from types import ModuleType


def replay_adapter() -> ModuleType:
    """The adapter behind ``source.kind: replay``: ``replay_days``, ``day_frame`` and ``CORRUPTIONS`` of the
    real data set the demo replays (which one is the model's YAML's business, not the caller's)."""
    from airloop.sources import nycflights13

    return nycflights13
