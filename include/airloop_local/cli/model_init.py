"""``airloop model init | check``: write a new model's config and starter suite from a sample batch, or check
one (its config, suite, and a sample through the gate and the features)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airloop_local.cli import common
from airloop_local.cli.sample_inference import (
    Draft,
    InitRequest,
    check_declared_types,
    draft_model,
    model_yaml,
    read_sample_as_batch,
    suite_text,
)

if TYPE_CHECKING:
    from airloop.config import PipelineConfig
    from airloop_local.stack import StackSettings


def cmd_model_init(args: argparse.Namespace) -> int:
    """Write ``<dir>/NAME.yaml`` and a starter suite ``<dir>/NAME.json`` from a sample batch."""
    from airloop.config import pipelines_dir
    from airloop.errors import ConfigError

    folder = Path(args.pipelines_dir) if args.pipelines_dir else pipelines_dir()
    request = InitRequest(args.name, args.sample, args.target, args.task, args.positive_above)
    _check_new_name(folder, request.name, force=args.force)
    draft = draft_model(request)
    suite = suite_text(request.name, draft.sample, draft.columns, request.sample)
    try:
        cfg = write_model_files(folder, request.name, model_yaml(request, draft), suite, request.sample)
    except (ConfigError, ValueError) as e:
        raise ConfigError(
            f"the config written from {request.sample} does not work, so nothing was written: {e}"
        ) from None
    print_init_report(common.settings(args), cfg, folder, draft, request.sample, named_folder=bool(args.pipelines_dir))
    return common.EXIT_OK


def _check_new_name(folder: Path, name: str, force: bool) -> None:
    """A usable name for a new model, whose files do not exist yet (unless ``force``)."""
    from airloop.config import _NAME_RE

    if not _NAME_RE.match(name):
        raise common.UsageError(f"model name {name!r} must be lower_snake_case (it becomes part of DAG ids and paths)")
    existing = [p for p in (folder / f"{name}.yaml", folder / f"{name}.json") if p.exists()]
    if existing and not force:
        raise common.UsageError(f"{', '.join(map(str, existing))} already exist(s); pass --force to overwrite")


def write_model_files(folder: Path, name: str, yaml_text: str, suite: str, sample: Path) -> PipelineConfig:
    """Write both files through a temporary folder, load the config and compute the sample's features
    there, then move them into place: a config that does not load is never left behind."""
    import shutil
    import tempfile

    from airloop.config import load_pipeline_config
    from airloop.features import compute_features

    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder))
    try:
        (tmp / f"{name}.yaml").write_text(yaml_text)
        (tmp / f"{name}.json").write_text(suite)
        cfg = load_pipeline_config(tmp / f"{name}.yaml")
        batch = read_sample_as_batch(cfg, sample)
        check_declared_types(cfg, batch)
        compute_features(batch, cfg.features, search_dirs=cfg.feature_search_dirs)
        for suffix in (".json", ".yaml"):
            os.replace(tmp / f"{name}{suffix}", folder / f"{name}{suffix}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load_pipeline_config(folder / f"{name}.yaml")


def print_init_report(
    s: StackSettings, cfg: PipelineConfig, folder: Path, draft: Draft, sample: Path, named_folder: bool
) -> None:
    """What was written and inferred, what was flagged, and the next steps."""
    from airloop.features import categorical_features, numeric_features

    print(f"wrote {folder / (cfg.name + '.yaml')} and {cfg.suite_path}")
    print(
        f"  task {cfg.task.type}: label from {cfg.task.label.source_column}; gate {cfg.gate.metric} "
        f"{'>=' if cfg.gate.metric == 'roc_auc' else '<='} {cfg.gate.min_metric}"
    )
    print(
        f"  {len(cfg.data_schema.columns)} columns; event time {cfg.event_time or 'none (no timestamp column)'}; "
        f"{len(numeric_features(cfg.features))} numeric and {len(categorical_features(cfg.features))} "
        "categorical features"
    )
    if draft.flagged:
        print("  flagged: confirm or move back to features:")
        for c, why in draft.flagged.items():
            print(f"    {c}: {why}")
    for note in draft.notes:
        print(f"  note: {note}")
    _print_next_steps(s, cfg, folder, sample, named_folder)


def _print_next_steps(s: StackSettings, cfg: PipelineConfig, folder: Path, sample: Path, named_folder: bool) -> None:
    from airloop.config import pipelines_dir
    from airloop_local import stack
    from airloop_local.cli.runs import landing_pattern

    ingest = cfg.dag_id("ingest")
    print("Next steps:")
    print(f"  1. review {cfg.name}.yaml (features, schema.leakage_columns, gate) and {cfg.name}.json (ranges, sets)")
    print(
        f"  2. airloop model check {cfg.name} --sample {sample}"
        + (f" --pipelines-dir {folder}" if named_folder else "")
    )
    print(f"  3. land batches: one {cfg.source.format} file per day at {landing_pattern(s, cfg)}")
    if folder.resolve() != pipelines_dir().resolve():
        print(f"     (the stack reads configs from {pipelines_dir()}: export AIRLOOP_PIPELINES_DIR={folder} first)")
    print(
        "  4. restart the stack so Airflow and a model server pick the model up "
        f"({stack.cli_command(s, 'stack', 'stop')}; {stack.cli_command(s, 'stack', 'start')}), unpause {ingest} "
        f"and trigger it: `{stack.cli_command(s, 'airflow', 'dags', 'unpause', ingest)}`, then "
        f"`{stack.cli_command(s, 'airflow', 'dags', 'trigger', ingest)} -c "
        '\'{"source_uri": "<a landed file>"}\'` (training starts once training.min_partitions days are in)'
    )


def cmd_model_check(args: argparse.Namespace) -> int:
    """Load a model's config and suite; with a sample, validate it and compute its features."""
    from airloop.errors import AirloopError
    from airloop.features import feature_columns
    from airloop.validation import load_suite_dict

    cfg = common.known_model(args.name, args.pipelines_dir)
    try:
        suite = load_suite_dict(cfg)
    except ValueError as e:
        raise AirloopError(str(e)) from None
    print(f"{cfg.name}: config OK ({cfg.folder / (cfg.name + '.yaml')})")
    print(f"  task {cfg.task.type} on {cfg.task.label.source_column}; gate {cfg.gate.metric} {cfg.gate.min_metric}")
    print(f"  a request carries {cfg.request_columns}")
    print(f"  features: {feature_columns(cfg.features)}")
    print(f"  suite {cfg.suite_path}: {len(suite['expectations'])} expectations, plus the schema's checks")
    print(f"  model server connection: {cfg.model_server_conn_id}")
    if args.sample is None:
        return common.EXIT_OK
    try:
        df = read_sample_as_batch(cfg, args.sample)
    except AirloopError as e:  # an unreadable batch is a domain failure; a bad path is a UsageError
        raise AirloopError(f"sample {args.sample}: {e}") from None
    return common.EXIT_OK if check_sample(cfg, df, args.sample) else common.EXIT_FAILURE


def check_sample(cfg: PipelineConfig, df: Any, sample: Path) -> bool:
    """Validate a sample against the model's suite and compute its features; print what was found."""
    from airloop.features import compute_features, label
    from airloop.validation import validate_frame

    outcome = validate_frame(cfg, df)
    evaluated = outcome.statistics.get("evaluated_expectations", len(outcome.expectations))
    if outcome.success:
        print(f"sample {sample} ({len(df)} rows): passes the suite ({evaluated} expectations)")
    else:
        print(f"sample {sample} ({len(df)} rows): {len(outcome.failures)} of {evaluated} expectations FAILED:")
        for f in outcome.failures:
            print(f"  FAILED {f.describe()}")
    try:
        keep = [cfg.event_time] if cfg.event_time else []
        features = compute_features(df, cfg.features, keep=keep, search_dirs=cfg.feature_search_dirs)
    except ValueError as e:
        print(f"features FAILED on {sample}: {e}")
        return False
    names = [c for c in features.columns if c not in keep]
    empty = [c for c in names if features[c].isna().all()]
    y = label(df, cfg.task.label.source_column, cfg.task.label.positive_above)
    print(f"features: {len(features)} rows x {len(names)} features" + (f"; all null: {empty}" if empty else ""))
    print(
        f"labels: {int(y.notna().sum())} known"
        + (f", {float(y.mean()):.1%} positive" if cfg.task.label.positive_above is not None else "")
    )
    return outcome.success


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``model init`` and ``model check``."""
    sp = common.add_command(sub, "model", help="write a new model's config from a sample, or check one")
    msub = sp.add_subparsers(dest="action", required=True, metavar="ACTION")
    m = common.add_command(
        msub, "init", help="write <dir>/NAME.yaml and a starter suite <dir>/NAME.json from a sample batch"
    )
    m.add_argument("name", help="the model's name, lower_snake_case (DAG ids and paths are made from it)")
    m.add_argument(
        "--sample",
        type=Path,
        required=True,
        help="a representative batch: .csv, .parquet or .jsonl (types, ranges and leakage come from it)",
    )
    m.add_argument("--target", required=True, help="the column the model predicts (its label source; numeric)")
    m.add_argument(
        "--task",
        choices=["regression", "binary_classification"],
        help="default: binary_classification for a 0/1 or true/false target or with --positive-above, else regression",
    )
    m.add_argument(
        "--positive-above",
        type=float,
        metavar="X",
        help="binary_classification: the label is target > X (default 0.5 for a 0/1 target)",
    )
    m.add_argument(
        "--pipelines-dir",
        type=Path,
        help="where to write (default: $AIRLOOP_PIPELINES_DIR or the package's pipelines folder)",
    )
    m.add_argument("--force", action="store_true", help="overwrite NAME.yaml and NAME.json if they exist")
    m.set_defaults(func=cmd_model_init)

    m = common.add_command(
        msub, "check", help="load a model's config and suite; with --sample, validate it and compute features"
    )
    m.add_argument("name", help="the model's name (its YAML's file name)")
    m.add_argument("--sample", type=Path, help="a batch (.csv, .parquet or .jsonl) to validate and compute features on")
    m.add_argument(
        "--pipelines-dir",
        type=Path,
        help="where the config is (default: $AIRLOOP_PIPELINES_DIR or the package's pipelines folder)",
    )
    m.set_defaults(func=cmd_model_check)
