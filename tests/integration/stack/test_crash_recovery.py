"""Crashes of the real local stack: a component killed with SIGKILL must not leave its children behind.

Each component runs as the leader of a session of its own; the scheduler's children (its log server on
``port+1``, the LocalExecutor workers and the task processes they supervise) stay alive when the leader
is killed. These tests kill leaders with SIGKILL and check what ``stack start`` and ``stack stop`` do:

* the scheduler killed mid-run (ingest runs of several intervals under way): the crash leaves its
  children running; ``stack start`` ends them, the new scheduler's log server holds ``port+1``, every run
  completes with one output per interval and no alert;
* every component's leader killed: ``stack status`` names each crashed component and its orphans;
  ``stack stop`` leaves no process of the stack alive and every port free; ``stack start`` brings the
  stack back healthy for the tests after this module.

The process checks read ``/proc`` through psutil (Linux, as CI); a process is identified by its pid
*and* its start time, so a reused pid is never taken for a survivor.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import time
from pathlib import Path

import psutil
import pytest
from airloop_local import cli, stack
from airloop_local.cli.common import wait_runs

from airloop.alerts import read_alerts
from airloop.sources import nycflights13
from airloop.storage import MANIFEST, DataRoot

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.heavy]

#: four days of the replayed feed, no other module of this folder lands them
DAYS = [dt.date(2013, 7, 1) + dt.timedelta(days=i) for i in range(4)]

Proc = tuple[int, float]  # (pid, start time): a process, not a pid that may be reused


def _session(sid: int) -> set[Proc]:
    """Every live (non-zombie) process of the session ``sid``."""
    out = set()
    for p in psutil.process_iter(["pid", "status", "create_time"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getsid(p.pid) == sid:
                out.add((p.pid, p.info["create_time"]))
        except (ProcessLookupError, PermissionError):
            continue
    return out


def _alive(procs: set[Proc]) -> set[Proc]:
    """The processes of ``procs`` still running (same pid and start time, not a zombie)."""
    out = set()
    for pid, started in procs:
        try:
            p = psutil.Process(pid)
            if p.create_time() == started and p.status() != psutil.STATUS_ZOMBIE:
                out.add((pid, started))
        except psutil.NoSuchProcess:
            continue
    return out


def _describe(procs: set[Proc]) -> list[str]:
    out = []
    for pid, _ in sorted(procs):
        try:
            out.append(f"{pid} {' '.join(psutil.Process(pid).cmdline())[:100]}")
        except psutil.NoSuchProcess:
            out.append(f"{pid} (gone)")
    return out


def _listener(port: int) -> int | None:
    """The pid of the process listening on ``127.0.0.1:port`` (None when nothing listens)."""
    for c in psutil.net_connections(kind="tcp"):
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            return int(c.pid)
    return None


def _sigkill_leader(pid: int) -> None:
    """SIGKILL a component's leader and wait until it is gone (the test process may be its parent, as the
    fixture started it: reap the zombie then)."""
    os.kill(pid, signal.SIGKILL)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:  # not our child: init reaps it
        while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            time.sleep(0.05)


def _wait_mid_run(api, dag_id: str, run_ids: set[str], timeout_s: float = 300) -> list[str]:
    """Wait until a task of the runs is running while some run is not finished; return the running tasks."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        running = [
            f"{r}.{t['task_id']}"
            for r in sorted(run_ids)
            for t in _task_instances(api, dag_id, r)
            if t["state"] == "running"
        ]
        if running:
            return running
        time.sleep(0.2)
    raise AssertionError(f"no task of {sorted(run_ids)} started within {timeout_s} s")


def _task_instances(api, dag_id: str, run_id: str) -> list[dict]:
    try:
        return api.task_instances(dag_id, run_id)
    except Exception:  # the run is not created yet
        return []


def _stack_ports(s: stack.StackSettings) -> list[int]:
    return [s.port, s.port + 1, s.port + 2, s.mlflow_port, *s.model_server_ports().values()]


def test_a_scheduler_killed_mid_run_is_restarted_without_its_orphans(running_stack, cfg):
    import pandas as pd

    s, api = running_stack
    root = DataRoot(s.data_root)
    nycflights13.replay_days(root, cfg.name, DAYS, file_name=cfg.source.file_name)
    dag_id = cfg.dag_id("ingest")
    api.wait_for_dag(dag_id)
    api.unpause(dag_id)
    run_ids = {api.trigger_interval(dag_id, d) for d in DAYS}
    running = _wait_mid_run(api, dag_id, run_ids)

    t0 = time.monotonic()
    leader = stack.running_components(s)["scheduler"]
    children = _session(leader) - _alive({(leader, psutil.Process(leader).create_time())})
    log_port = s.port + 1
    _sigkill_leader(leader)
    orphans = _alive(children)
    # the crash as filed: the scheduler's children outlive it, its log server still holds port+1
    assert orphans, f"the scheduler had no child left to orphan (tasks running: {running})"
    assert _listener(log_port) in {pid for pid, _ in orphans}, _describe(orphans)

    stack.start(s, wait_s=240)
    t1 = time.monotonic()

    assert _alive(orphans) == set(), f"`stack start` left the crashed scheduler's processes: {_describe(orphans)}"
    restarted = stack.running_components(s)["scheduler"]
    holder = _listener(log_port)
    assert holder is not None and os.getsid(holder) == restarted, (
        f"port {log_port} is held by {holder}, not by the restarted scheduler's log server"
    )

    # every run completes, each interval published once, nothing alerted
    states = wait_runs(api, dag_id, run_ids, timeout_s=600)
    assert states == {r: "success" for r in run_ids}, states
    print(
        f"\nscheduler killed with {len(orphans)} children alive, tasks running: {running}; stack start "
        f"{t1 - t0:.0f} s, every run done {time.monotonic() - t0:.0f} s after the kill"
    )
    for day in DAYS:
        part = Path(f"{root.uri}/raw/{cfg.name}/ds={day}")
        manifests = sorted(p.relative_to(part) for p in part.rglob(MANIFEST))
        assert manifests == [Path(MANIFEST)], (day, manifests)
        rows = sum(len(pd.read_parquet(f)) for f in part.rglob("*.parquet"))
        assert rows == root.read_json(f"{part}/{MANIFEST}")["rows"], day
    events = [
        e["source_run_id"]
        for e in api.get("/api/v2/assets/events", limit=1000)["asset_events"]
        if e.get("source_run_id") in run_ids
    ]
    assert sorted(events) == sorted(run_ids), events  # one validated batch per interval, no duplicate
    alerts = [a for a in read_alerts(root, cfg.name) if a.get("run_id") in run_ids]
    keys = [(a["run_id"], a.get("task_id"), a.get("try_number"), a["kind"]) for a in alerts]
    assert len(keys) == len(set(keys)), f"duplicate alerts: {keys}"
    assert alerts == [], f"runs that all succeeded alerted: {keys}"


def test_stop_after_a_sigkill_of_every_component_ends_every_process(running_stack, capsys):
    s = running_stack[0]
    leaders = stack.running_components(s)
    assert set(stack.components(s)) <= set(leaders), leaders
    trees = {c: _session(pid) for c, pid in leaders.items()}
    try:
        for pid in leaders.values():
            _sigkill_leader(pid)
        orphans = {c: _alive(t) for c, t in trees.items()}
        assert orphans["scheduler"], "the scheduler's children died with it: nothing to check"

        capsys.readouterr()
        cli.main(["--state-dir", s.state_dir, "stack", "status", "--port", str(s.port)])
        status = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}

        t0 = time.monotonic()
        stack.stop(s, grace_s=30)
        print(f"\nstack stop after a SIGKILL of every leader: {time.monotonic() - t0:.1f} s")
        # neither what ran at the kill nor anything forked since: every session of the stack is empty
        left = set().union(*(_alive(t) for t in trees.values()), *(_session(pid) for pid in leaders.values()))
        assert left == set(), f"`stack stop` left processes of the stack: {_describe(left)}"
        taken = [p for p in _stack_ports(s) if _listener(p) is not None]
        assert taken == [], f"ports still taken after `stack stop`: {taken}"
        # before the stop, status named each crashed component and how many of its processes were left
        for c in (c for c, procs in orphans.items() if procs):
            said = re.search(r"crashed \((\d+) orphaned process(es)?\)", status[c])
            assert said and int(said[1]) >= 1, status[c]
    finally:
        # the stack comes back healthy after a SIGKILL of every component (and serves the next module)
        t0 = time.monotonic()
        stack.start(s, wait_s=240)
        print(f"stack start after that: {time.monotonic() - t0:.1f} s")
