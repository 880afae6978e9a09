"""How the parse time of the DAG folder grows with the number of models.

For 1, 2 and 10 model files in a temporary ``AIRLOOP_PIPELINES_DIR`` (renamed copies of a real pipeline
config, each with its suite), each sample is a fresh interpreter that builds
``DagBag(dag_folder="dags")``, as the DAG processor parses each file of the folder. Two figures per run:
the whole process (interpreter start and Airflow import included) and the ``DagBag`` build alone. Each
folder is also checked to give every model its DAGs and no import error, so a fast parse cannot be an
empty one. Ratios are against the 1-model folder measured in the same run.

Run:  .venv/bin/python benchmarks/bench_dag_parse.py [--repeat N] [--models 1 2 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

PARSE = r"""
import json, time
t = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
imported = time.perf_counter()
bag = DagBag(dag_folder="dags")
done = time.perf_counter()
errors = {k: str(v)[-500:] for k, v in bag.import_errors.items()}
print("RESULT" + json.dumps({"bag_ms": (done - imported) * 1000, "import_ms": (imported - t) * 1000,
                             "dags": sorted(bag.dags), "errors": errors}))
"""


def write_models(folder: Path, n: int) -> list[str]:
    """``n`` renamed copies of the first real pipeline config, each with a copy of its suite."""
    from airloop.config import load_all_pipelines

    src = load_all_pipelines()[0]
    text = (src.folder / f"{src.name}.yaml").read_text()
    suite = json.loads(src.suite_path.read_text())
    names = [f"bench_model_{i:02d}" for i in range(1, n + 1)]
    for name in names:
        raw = yaml.safe_load(text.replace(src.name, name).replace(src.name.replace("_", "-"), name.replace("_", "-")))
        if src.features.module:
            raw["features"]["module"] = src.features.module
            for f in src.folder.glob("*.py"):
                (folder / f.name).write_text(f.read_text())
        raw["validation"]["suite"] = f"{name}.json"
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        (folder / f"{name}.json").write_text(json.dumps({**suite, "name": name}))
    return names


def sample(env: dict[str, str]) -> dict:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PARSE], capture_output=True, text=True, env=env, cwd=REPO)
    wall_ms = (time.perf_counter() - t) * 1000
    if proc.returncode != 0:
        raise SystemExit(f"parsing dags/ failed:\n{proc.stderr[-3000:]}")
    res = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")).removeprefix("RESULT"))
    return {**res, "wall_ms": wall_ms}


def bench(counts: list[int], repeat: int) -> list[dict]:
    home = tempfile.mkdtemp(prefix="airloop-bench-parse-")
    base = {
        **os.environ,
        "AIRFLOW_HOME": home,
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    }
    folders = {}
    for n in counts:
        folder = Path(home) / f"pipelines_{n}"
        folder.mkdir()
        folders[n] = (folder, write_models(folder, n))
    samples: dict[int, list[dict]] = {n: [] for n in counts}
    for _ in range(repeat):  # interleaved, so a busy moment of the machine hits every size alike
        for n in counts:
            samples[n].append(sample({**base, "AIRLOOP_PIPELINES_DIR": str(folders[n][0])}))
    rows = []
    for n in counts:
        names = folders[n][1]
        for s in samples[n]:
            missing = [m for m in names if not any(d.startswith(f"{m}__") for d in s["dags"])]
            if s["errors"] or missing:
                raise SystemExit(f"{n} models: import errors {s['errors']}, models without DAGs {missing}")
        rows.append(
            {
                "models": n,
                "dags": len(samples[n][0]["dags"]),
                "wall_ms": statistics.median(s["wall_ms"] for s in samples[n]),
                "import_ms": statistics.median(s["import_ms"] for s in samples[n]),
                "bag_ms": statistics.median(s["bag_ms"] for s in samples[n]),
            }
        )
    for r in rows:
        r["wall_ratio"] = r["wall_ms"] / rows[0]["wall_ms"]
        r["bag_ratio"] = r["bag_ms"] / rows[0]["bag_ms"]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--models", type=int, nargs="+", default=[1, 2, 10], help="model counts; the first is the baseline")
    args = ap.parse_args()
    print(
        f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; median of {args.repeat} fresh "
        f"interpreters per folder\n"
    )
    rows = bench(args.models, args.repeat)
    print(
        f"{'models':>6s} {'dags':>5s} {'process ms':>11s} {'x 1st':>6s} {'airflow import ms':>18s} "
        f"{'DagBag ms':>10s} {'x 1st':>6s}"
    )
    for r in rows:
        print(
            f"{r['models']:>6d} {r['dags']:>5d} {r['wall_ms']:>11.0f} {r['wall_ratio']:>6.2f} {r['import_ms']:>18.0f} "
            f"{r['bag_ms']:>10.0f} {r['bag_ratio']:>6.2f}"
        )
    first, last = rows[0], rows[-1]
    if last["models"] > first["models"]:
        per_model = (last["bag_ms"] - first["bag_ms"]) / (last["models"] - first["models"])
        print(f"\nDagBag build per extra model: {per_model:.0f} ms (from {first['models']} to {last['models']} models)")


if __name__ == "__main__":
    main()
