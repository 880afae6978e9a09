"""Every failure kind has a runbook, and every command a runbook tells on-call to run exists: each
``airloop ...`` line parses with the project's CLI, each ``airloop airflow ...`` line with Airflow's."""

from __future__ import annotations

import re
import shlex

import pytest

from airloop.runbooks import RUNBOOK_DIR, RUNBOOKS, runbook_path

pytestmark = pytest.mark.unit


def commands():
    for kind, name in sorted(RUNBOOKS.items()):
        text = (RUNBOOK_DIR / name).read_text()
        for block in re.findall(r"```\n(.*?)```", text, re.S):
            for line in block.splitlines():
                if line.strip().startswith("airloop "):
                    yield pytest.param(line.strip(), id=f"{kind}: {line.strip()[:60]}")


def test_every_kind_has_a_runbook_that_says_what_it_means_and_how_to_recover():
    assert sorted(p.name for p in RUNBOOK_DIR.glob("*.md")) == sorted(RUNBOOKS.values())
    for kind in RUNBOOKS:
        text = runbook_path(kind).read_text()
        assert text.startswith("# ") and "## Recover" in text, kind
    with pytest.raises(KeyError, match="known kinds"):
        runbook_path("nope")


@pytest.mark.parametrize("line", list(commands()))
def test_every_documented_command_parses(line):
    from airflow.cli.cli_parser import get_parser
    from airloop_local.cli import build_parser

    argv = shlex.split(line)[1:]
    args = build_parser().parse_args(argv)  # SystemExit (a test error) if the command does not exist
    if argv[0] == "airflow":
        get_parser().parse_args(args.args)
