"""``airloop``: the project's command line, one module per command group.

Exit codes: 0 ok, 1 a failure (a run or check failed, the stack is down or refused), 2 a usage error (a bad
option or value, an unknown model, version, batch or webhook source).
"""

from __future__ import annotations

import argparse
import sys

from airloop_local.cli import demo, model_init, models, quarantine, runs
from airloop_local.cli import stack as stack_commands
from airloop_local.cli.common import EXIT_FAILURE, EXIT_USAGE, UsageError

__all__ = ["build_parser", "main"]

DESCRIPTION = "Run airloop's local stack (Airflow, MLflow, model servers) and look after its models."
EPILOG = (
    "Exit codes: 0 ok, 1 a failure (a run or check failed, the stack is down), 2 a usage error (a bad option "
    "or value, an unknown model, version, batch or webhook source). `airloop COMMAND -h` shows a command's "
    "options; `airloop airflow -h` shows Airflow's own help."
)


def build_parser() -> argparse.ArgumentParser:
    """The ``airloop`` parser: global options, then each command group's subcommands."""
    parser = argparse.ArgumentParser(prog="airloop", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--state-dir", help="local state folder (default: $AIRLOOP_HOME or <checkout>/.airloop)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    for group in (demo, stack_commands, runs, quarantine, models, model_init):
        group.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit code (argparse exits with 2 itself on a usage error it finds)."""
    from airloop.errors import AirloopError
    from airloop.http import HttpError
    from airloop_local.stack import StackError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"airloop: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (AirloopError, StackError, HttpError) as e:
        print(f"airloop: {e}", file=sys.stderr)
        return EXIT_FAILURE
