"""The data root: one folder or fsspec URI holding every zone, partitioned by model and data interval.

Layout (``docs/architecture.md``)::

    <root>/<zone>/<model>/<partition>/...     zone in landing, raw, quarantine, features, predictions, reports
                                              partition is ds=YYYY-MM-DD (data interval start) or run=<run id>

Every place in it is named by a :class:`DataRoot` method; code elsewhere never builds these paths itself.

Writes are atomic: a partition is built in a hidden temporary folder next to its final place and renamed
into place, so a crash mid-task leaves at most a ``.tmp-*`` folder that readers ignore, never half a
partition. On object stores, where rename is a copy, ``_manifest.json`` is written last and marks a
complete partition.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

ZONES = ("landing", "raw", "quarantine", "features", "predictions", "reports")
#: written last into every partition: its presence marks a complete one
MANIFEST = "_manifest.json"
#: the frame of a raw (or quarantined) batch, as Parquet
DATA_FILE = "data.parquet"
#: the folder of Spark part files inside a features partition
FEATURES_DATA = "data"
#: a batch's validation result (JSON) and report (HTML): under ``reports/`` for every validated batch, and
#: beside the batch in quarantine (there the report is ``report.html``)
VALIDATION_RESULT = "validation.json"
VALIDATION_REPORT = "validation.html"
QUARANTINE_REPORT = "report.html"
#: on-call's decision on a quarantined batch (released, rejected) or ``superseded`` by a later good run
QUARANTINE_DECISION = "_decision.json"
#: the bytes of a batch as received, named by the source's declared format (``received.csv``): kept beside the
#: batch in the raw zone and in quarantine, whatever stage refused it; the manifest's ``source_sha256`` is their hash
RECEIVED_FILE = "received.{format}"
_TMP_PREFIX = ".tmp-"
_SAFE_KEY = re.compile(r"[^A-Za-z0-9_.=+-]")


def repo_root() -> Path | None:
    """The checkout this package runs from, if it runs from one (editable install)."""
    candidate = Path(__file__).resolve().parents[2]
    return candidate if (candidate / "pyproject.toml").is_file() else None


def checkout_state_dir() -> Path:
    """``<checkout>/.airloop`` (``~/.airloop`` outside a checkout): the state folder unless ``AIRLOOP_HOME``
    names another."""
    root = repo_root()
    return (root / ".airloop") if root else Path.home() / ".airloop"


def state_dir() -> Path:
    """The ignored local state folder: ``AIRLOOP_HOME``, else :func:`checkout_state_dir`."""
    env = os.environ.get("AIRLOOP_HOME")
    return Path(env).resolve() if env else checkout_state_dir()


def default_data_root_uri(state: str | os.PathLike[str] | None = None) -> str:
    """``AIRLOOP_DATA_ROOT``, else ``data/`` in the state folder (``state``, or :func:`state_dir`): the one
    default of the data root."""
    return os.environ.get("AIRLOOP_DATA_ROOT") or str(Path(state or state_dir()) / "data")


def partition_key(data_interval_start: Any = None, run_id: str | None = None) -> str:
    """``ds=YYYY-MM-DD`` for a run with a data interval, else ``run=<run id>`` (made path-safe)."""
    if data_interval_start is not None:
        start = data_interval_start
        day = start.date().isoformat() if hasattr(start, "date") else start
        return f"ds={day}"
    if not run_id:
        raise ValueError("a partition needs a data interval start or a run id")
    return "run=" + _SAFE_KEY.sub("_", run_id)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_hash(df: pd.DataFrame) -> str:
    """A hash of a frame's content (column names, dtypes and values), independent of file encoding."""
    import pandas as pd

    h = hashlib.sha256()
    h.update(json.dumps([[str(c), str(t)] for c, t in df.dtypes.items()]).encode())
    if len(df):
        h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return "sha256:" + h.hexdigest()


class DataRoot:
    """A data root on any fsspec filesystem (a local folder by default).

    :param uri: a local path or an fsspec URI such as ``s3://bucket/airloop``
    """

    def __init__(self, uri: str | os.PathLike[str]):
        self.uri = str(uri).rstrip("/")
        self.fs, self._base = fsspec.core.url_to_fs(self.uri)
        self.is_local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        if self.is_local:
            self.uri = str(Path(self._base).resolve())
            self._base = self.uri

    def __repr__(self) -> str:
        return f"DataRoot({self.uri!r})"

    # -- paths: the one home of the data root's layout ---------------------------------------------
    def zone_uri(self, zone: str, model: str) -> str:
        """``<root>/<zone>/<model>``: every batch of one model in one zone."""
        if zone not in ZONES:
            raise ValueError(f"unknown zone {zone!r}; zones are {ZONES}")
        return f"{self.uri}/{zone}/{model}"

    def partition_uri(self, zone: str, model: str, key: str) -> str:
        """``<root>/<zone>/<model>/<key>``: one batch (``key`` is a partition such as ``ds=2024-01-31``)."""
        return f"{self.zone_uri(zone, model)}/{key}"

    @staticmethod
    def manifest(partition_uri: str) -> str:
        """The manifest of a partition (any zone), written last: a partition without one is incomplete."""
        return f"{partition_uri}/{MANIFEST}"

    def landing_folder(self, model: str) -> str:
        """Where an upstream system drops a model's batches (when the config names no other place)."""
        return self.zone_uri("landing", model)

    def landing(self, model: str, partition: str) -> str:
        """Where an upstream system drops the batch of one interval (when the config names no other place)."""
        return self.partition_uri("landing", model, partition)

    def raw(self, model: str, partition: str) -> str:
        """An accepted batch, as received, with its manifest."""
        return self.partition_uri("raw", model, partition)

    def quarantine(self, model: str, partition: str) -> str:
        """A refused batch: the bytes received, the validation result and its report."""
        return self.partition_uri("quarantine", model, partition)

    def quarantine_report(self, model: str, partition: str) -> str:
        """The HTML report of a quarantined batch (what on-call opens first)."""
        return f"{self.quarantine(model, partition)}/{QUARANTINE_REPORT}"

    def features(self, model: str, partition: str) -> str:
        """The feature table the Spark job built from one raw batch."""
        return self.partition_uri("features", model, partition)

    def features_data(self, model: str, partition: str) -> str:
        """The Parquet folder (Spark part files) of one features partition."""
        return f"{self.features(model, partition)}/{FEATURES_DATA}"

    def predictions(self, model: str) -> str:
        """The model server's prediction log of one model."""
        return self.zone_uri("predictions", model)

    def report(self, model: str, *parts: str) -> str:
        """``<root>/reports/<model>/<parts...>``: reports, logs and state files of one model."""
        return "/".join([self.zone_uri("reports", model), *parts])

    def validation_result(self, model: str, partition: str) -> str:
        """The validation result (JSON) of one batch, with the content hash it was computed on."""
        return self.report(model, partition, VALIDATION_RESULT)

    def validation_report(self, model: str, partition: str) -> str:
        """The validation report (HTML) of one batch."""
        return self.report(model, partition, VALIDATION_REPORT)

    def canary_state(self, model: str, version: str) -> str:
        """The state of one version's canary rollout (resumed by a retry or a restarted scheduler)."""
        return self.report(model, "canary", f"v{version}.json")

    def canary_folder(self, model: str) -> str:
        """Every canary rollout state of one model."""
        return self.report(model, "canary")

    def drift_folder(self, model: str, day: str | None = None) -> str:
        """Drift reports of one model; of one checked interval when ``day`` (``YYYY-MM-DD``) is given."""
        return self.report(model, "drift", *([day] if day else []))

    def drift_history(self, model: str) -> str:
        """The figures of every drift check of one model (JSON lines)."""
        return self.report(model, "drift", "history.jsonl")

    def drift_trend(self, model: str) -> str:
        """The plot of the drift history (HTML)."""
        return self.report(model, "drift", "trend.html")

    def retrain_log(self, model: str) -> str:
        """Drift-triggered retrainings of one model (JSON lines): the cooldown reads it."""
        return self.report(model, "drift", "retrain_log.jsonl")

    def alias_history(self, model: str) -> str:
        """Every change of a model's MLflow aliases (JSON lines): which version served when."""
        return self.report(model, "alias_history.jsonl")

    def alert_log(self, model: str) -> str:
        """On-call alerts of one model (JSON lines), the local alert channel."""
        return self.report(model, "alerts.jsonl")

    def mlflow_artifacts(self, model: str) -> str:
        """Where a model's MLflow artifacts go when training has no artifact store of its own (local runs)."""
        return f"{self.uri}/mlflow-artifacts/{model}"

    def relative(self, uri: str) -> str | None:
        """The path of ``uri`` inside this root (``reports/...``), or None when it lies elsewhere."""
        prefix = self.uri + "/"
        return uri[len(prefix) :] if uri.startswith(prefix) else None

    def _path(self, uri: str) -> str:
        """The filesystem path of a URI inside (or outside) this root."""
        if self.is_local:
            return str(Path(uri.removeprefix("file://")).resolve())
        return str(self.fs._strip_protocol(uri))

    # -- reading -----------------------------------------------------------------------------------
    def exists(self, uri: str) -> bool:
        return bool(self.fs.exists(self._path(uri)))

    def read_bytes(self, uri: str) -> bytes:
        return bytes(self.fs.cat_file(self._path(uri)))

    def read_json(self, uri: str) -> Any:
        return json.loads(self.read_bytes(uri))

    def list_names(self, uri: str) -> list[str]:
        """Names of the entries of a folder, sorted (empty when it does not exist)."""
        path = self._path(uri)
        if not self.fs.exists(path):
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in self.fs.ls(path, detail=False))

    def list_partitions(self, zone: str, model: str) -> list[str]:
        """Complete partitions (those with a manifest) of one zone and model, sorted by key."""
        base = self._path(self.zone_uri(zone, model))
        if not self.fs.exists(base):
            return []
        out = []
        for entry in sorted(self.fs.ls(base, detail=False)):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith(".") or not self.fs.exists(self.manifest(entry)):
                continue
            out.append(self.partition_uri(zone, model, name))
        return out

    # -- atomic writing ----------------------------------------------------------------------------
    def write_bytes_atomic(self, uri: str, data: bytes) -> None:
        """Write one file so that readers see the old content or the new, never part of it."""
        path = self._path(uri)
        parent, name = path.rsplit("/", 1)
        self.fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/{_TMP_PREFIX}{name}-{uuid.uuid4().hex}"
        self.fs.pipe_file(tmp, data)
        if self.is_local:
            os.replace(tmp, path)
        else:
            self.fs.mv(tmp, path)

    def write_json_atomic(self, uri: str, obj: Any) -> None:
        self.write_bytes_atomic(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    # -- JSON-lines logs (alias history, alerts, drift history): small, rewritten whole, atomically ----
    def read_jsonl(self, uri: str) -> list[Any]:
        """The records of a JSON-lines file (empty when it does not exist)."""
        if not self.exists(uri):
            return []
        return [json.loads(line) for line in self.read_bytes(uri).decode().splitlines() if line.strip()]

    def write_jsonl_atomic(self, uri: str, records: list[Any]) -> None:
        """Replace a JSON-lines file at once: a reader or a crash never sees half a line."""
        self.write_bytes_atomic(
            uri, "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in records).encode()
        )

    @contextlib.contextmanager
    def atomic_dir(self, uri: str) -> Iterator[str]:
        """Build a folder at a temporary URI, then swap it in for ``uri`` (replacing what was there).

        Yields the temporary URI to write into. On an exception the temporary folder is removed and
        ``uri`` is left as it was.
        """
        path = self._path(uri)
        parent, name = path.rsplit("/", 1)
        self.fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/{_TMP_PREFIX}{name}-{uuid.uuid4().hex}"
        self.fs.makedirs(tmp, exist_ok=True)
        try:
            yield tmp if self.is_local else f"{self.fs.unstrip_protocol(tmp)}"
        except BaseException:
            self.fs.rm(tmp, recursive=True)
            raise
        self._swap_in(tmp, path)

    def _swap_in(self, tmp: str, path: str) -> None:
        parent, name = path.rsplit("/", 1)
        old = f"{parent}/{_TMP_PREFIX}old-{name}-{uuid.uuid4().hex}"
        had_old = self.fs.exists(path)
        if had_old:
            self.fs.mv(path, old, recursive=True)
        self.fs.mv(tmp, path, recursive=True)
        if had_old:
            self.fs.rm(old, recursive=True)

    def remove(self, uri: str) -> None:
        path = self._path(uri)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def write_partition(self, uri: str, files: dict[str, bytes], manifest: dict[str, Any]) -> None:
        """Write a whole partition atomically: ``files`` first, the manifest last."""
        with self.atomic_dir(uri) as tmp:
            for fname, data in files.items():
                self.fs.pipe_file(f"{self._path(tmp)}/{fname}", data)
            self.fs.pipe_file(
                self.manifest(self._path(tmp)),
                json.dumps(manifest, indent=2, sort_keys=True, default=str).encode(),
            )

    def file_uri(self, uri: str) -> str:
        """A URI other tools can open: ``file://`` for local paths, the fsspec URI otherwise."""
        return f"file://{self._path(uri)}" if self.is_local else uri


def frame_to_parquet_bytes(df: pd.DataFrame) -> bytes:
    import io

    buf = io.BytesIO()
    # microsecond timestamps: Spark cannot read Parquet's nanosecond timestamps
    df.to_parquet(buf, index=False, coerce_timestamps="us", allow_truncated_timestamps=False)
    return buf.getvalue()


def read_parquet_bytes(data: bytes) -> pd.DataFrame:
    import io

    import pandas as pd

    return pd.read_parquet(io.BytesIO(data))
