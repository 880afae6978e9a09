"""Spark job: features for validated raw partitions, written atomically per partition.

Run by ``spark-submit`` (the feature DAG submits it through the ``spark_default`` connection)::

    spark-submit include/airloop/spark/build_features.py --model <model> \
        --data-root /path/to/data --partitions ds=2013-01-01,ds=2013-01-02

Airflow-free: it imports only ``airloop`` and PySpark. One Spark session per job; each partition is read
from ``raw/<model>/<partition>/data.parquet``, mapped through the model's feature definition
(:func:`airloop.features.compute_features`, the function serving uses) with ``mapInPandas``, and written to
``features/<model>/<partition>/`` via a temporary folder that replaces the old partition in one rename, with a
``_manifest.json`` written last.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from airloop.config import PipelineConfig

log = logging.getLogger("airloop.spark.build_features")

#: Spark settings of the job, whether it builds its own session or is submitted (the feature operator
#: passes them to spark-submit); ``AIRLOOP_SPARK_SHUFFLE_PARTITIONS`` overrides the shuffle partitions
SPARK_CONF = {
    "spark.sql.shuffle.partitions": "4",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
}
#: the master of a session the job builds itself (no ``SPARK_MASTER``, no ``--master``)
LOCAL_MASTER = "local[2]"


def kept_columns(cfg: PipelineConfig) -> list[str]:
    """Raw columns carried into the feature partitions untouched: the event time (training's order)."""
    return [cfg.event_time] if cfg.event_time else []


def spark_schema(cfg: PipelineConfig) -> Any:
    """The feature partition's schema: numeric features as doubles, categorical as strings, the event
    time, the label."""
    from pyspark.sql import types as T

    from airloop.features import categorical_features, numeric_features

    fields = [T.StructField(c, T.DoubleType()) for c in numeric_features(cfg.features)]
    fields += [T.StructField(c, T.StringType()) for c in categorical_features(cfg.features)]
    fields += [T.StructField(c, T.TimestampNTZType()) for c in kept_columns(cfg)]
    fields.append(T.StructField(cfg.task.target, T.DoubleType()))
    return T.StructType(fields)


def make_mapper(cfg: PipelineConfig) -> Any:
    """The per-batch function Spark runs: the model's features plus the label."""
    label_cfg = cfg.task.label
    features, keep, search_dirs = cfg.features, kept_columns(cfg), [str(d) for d in cfg.feature_search_dirs]

    def mapper(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from airloop.features import compute_features, feature_columns, label

        for pdf in batches:
            out = compute_features(pdf, features, keep=keep, search_dirs=search_dirs)[
                [*feature_columns(features), *keep]
            ]
            out[cfg.task.target] = label(pdf, label_cfg.source_column, label_cfg.positive_above)
            yield out

    return mapper


def spark_conf() -> dict[str, str]:
    """:data:`SPARK_CONF` with the environment's override of the shuffle partitions."""
    shuffle = os.environ.get("AIRLOOP_SPARK_SHUFFLE_PARTITIONS")
    return {**SPARK_CONF, **({"spark.sql.shuffle.partitions": shuffle} if shuffle else {})}


def build_session(app_name: str) -> Any:
    from pyspark.sql import SparkSession

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Python workers must import airloop: run them on the driver's interpreter unless told otherwise
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    for key, value in spark_conf().items():
        builder = builder.config(key, value)
    if not os.environ.get("SPARK_MASTER") and "spark.master" not in " ".join(sys.argv):
        builder = builder.master(os.environ.get("AIRLOOP_SPARK_MASTER", LOCAL_MASTER))
    return builder.getOrCreate()


def run(model: str, data_root: str, partitions: list[str], spark: Any = None) -> list[dict[str, Any]]:
    """Build the feature partitions; return their manifests. Reuses ``spark`` when given (tests)."""
    from airloop.config import get_pipeline
    from airloop.features import feature_version
    from airloop.storage import DATA_FILE, FEATURES_DATA, DataRoot

    cfg = get_pipeline(model)
    root = DataRoot(data_root)
    own = spark is None
    spark = spark or build_session(f"airloop-features-{model}")
    schema = spark_schema(cfg)
    mapper = make_mapper(cfg)
    version = feature_version(cfg.features, cfg.feature_search_dirs)
    manifests = []
    try:
        for part in partitions:
            t = time.monotonic()
            raw_uri = root.raw(model, part)
            raw_manifest = root.read_json(root.manifest(raw_uri))
            df = spark.read.parquet(f"{raw_uri}/{raw_manifest.get('data_file', DATA_FILE)}")
            feats = df.mapInPandas(mapper, schema=schema)
            out_uri = root.features(model, part)
            with root.atomic_dir(out_uri) as tmp:
                feats.coalesce(1).write.mode("overwrite").parquet(f"{tmp}/{FEATURES_DATA}")
                written = spark.read.parquet(f"{tmp}/{FEATURES_DATA}")
                rows = written.count()
                labelled = written.filter(written[cfg.task.target].isNotNull()).count()
                manifest = {
                    "model": model,
                    "partition": part,
                    "rows": rows,
                    "labelled_rows": labelled,
                    "source_uri": raw_uri,
                    "source_content_hash": raw_manifest.get("content_hash"),
                    "feature_version": version,
                    "data_interval": raw_manifest.get("data_interval"),
                    "columns": [f.name for f in schema.fields],
                }
                root.fs.pipe_file(
                    root.manifest(root._path(tmp)), json.dumps(manifest, indent=2, sort_keys=True).encode()
                )
            manifests.append({**manifest, "uri": out_uri})
            log.info("features %s/%s: %d rows in %.1f s -> %s", model, part, rows, time.monotonic() - t, out_uri)
    finally:
        if own:
            spark.stop()
    return manifests


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build feature partitions from validated raw partitions")
    ap.add_argument("--model", required=True)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--partitions", required=True, help="comma-separated partition keys, e.g. ds=2013-01-01")
    ap.add_argument("--result-file", help="write the manifests here as JSON (read back by the Airflow task)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parts = [p for p in args.partitions.split(",") if p]
    manifests = run(args.model, args.data_root, parts)
    if args.result_file:
        with open(args.result_file, "w") as fh:
            json.dump(manifests, fh)
    print(json.dumps({"partitions": len(manifests), "rows": sum(m["rows"] for m in manifests)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
