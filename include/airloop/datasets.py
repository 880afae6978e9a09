"""Reading batches back from the data root as one table (training, the gate, the canary's outcomes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from airloop.storage import DataRoot

#: the column that says which partition a row came from
PARTITION_COLUMN = "_partition"


def load_partitions(root: DataRoot, zone: str, model: str, partitions: Sequence[str]) -> pd.DataFrame:
    """Concatenate the given partitions of a zone (features: the ``data/`` folder Spark wrote; other zones: the
    data file the manifest names), each row tagged with its partition in ``_partition``."""
    import pandas as pd

    frames = []
    for partition in partitions:
        frame = _read_partition(root, zone, model, partition)
        frame[PARTITION_COLUMN] = partition
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _read_partition(root: DataRoot, zone: str, model: str, partition: str) -> pd.DataFrame:
    import pandas as pd

    from airloop.storage import MANIFEST

    uri = root.partition_uri(zone, model, partition)
    manifest = root.read_json(f"{uri}/{MANIFEST}")
    path = f"{uri}/data" if zone == "features" else f"{uri}/{manifest.get('data_file', 'data.parquet')}"
    return pd.read_parquet(root._path(path)) if root.is_local else pd.read_parquet(path)
