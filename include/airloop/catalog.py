"""What each zone holds for a model: which raw partitions passed the gate, which features are stale.

The feature job uses this to catch up: asset events tell it what is new, and the catalog makes sure a
validated partition whose features are missing or built from older data is never left behind (events
that arrive while a run is in flight are folded into one later run by Airflow).
"""

from __future__ import annotations

from airloop.storage import DataRoot


def validated_partitions(root: DataRoot, model: str) -> list[str]:
    """Raw partitions whose current content passed the gate (validation result for that content hash)."""
    out = []
    for raw_uri in root.list_partitions("raw", model):
        part = raw_uri.rsplit("/", 1)[-1]
        result_uri = root.validation_result(model, part)
        if not root.exists(result_uri):
            continue
        result = root.read_json(result_uri)
        manifest = root.read_json(root.manifest(raw_uri))
        if result.get("success") and result.get("content_hash") == manifest.get("content_hash"):
            out.append(part)
    return out


def stale_feature_partitions(root: DataRoot, model: str, feature_version: str) -> list[str]:
    """Validated partitions without features, or with features from other data or feature code."""
    out = []
    for part in validated_partitions(root, model):
        f_manifest = root.manifest(root.features(model, part))
        if not root.exists(f_manifest):
            out.append(part)
            continue
        fm = root.read_json(f_manifest)
        raw = root.read_json(root.manifest(root.raw(model, part)))
        if fm.get("source_content_hash") != raw.get("content_hash") or fm.get("feature_version") != feature_version:
            out.append(part)
    return out
