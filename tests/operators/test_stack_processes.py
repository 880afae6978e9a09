"""The local stack's process trees, with a stand-in component shaped like Airflow's scheduler.

The stand-in leads its session as every component does and forks what the scheduler forks: a "log server"
listening on a port (in the leader's process group), a "task runner" in a process group of its own (as
Airflow's supervisor puts it), and a child whose own subprocess moved to a session of its own. Its leader
is then killed with SIGKILL, which leaves all of them running, as a crashed scheduler does.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time

import psutil
import pytest
from airloop_local import cli, stack

pytestmark = pytest.mark.unit

COMPONENT = "scheduler"
#: the leader forks a port holder, a process group of its own, and a child with a subprocess in its own session
STAND_IN = """
import os, socket, subprocess, sys, time
port = int(sys.argv[1])
if os.fork() == 0:  # the log server
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    time.sleep(600)
    os._exit(0)
if os.fork() == 0:  # a task runner: a process group of its own, the same session
    os.setpgid(0, 0)
    time.sleep(600)
    os._exit(0)
if os.fork() == 0:  # a task whose subprocess starts a session of its own
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    time.sleep(600)
    os._exit(0)
time.sleep(600)
"""
#: the stand-in's processes below its leader once it is up: log server, task runner, task, its subprocess
TREE_SIZE = 4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _tree(pid: int) -> set[psutil.Process]:
    """The leader and every live descendant (psutil's process objects compare by pid and start time)."""
    leader = psutil.Process(pid)
    return {leader, *leader.children(recursive=True)}


def _alive(procs: set[psutil.Process]) -> set[psutil.Process]:
    return {p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE}


@pytest.fixture()
def crashed(tmp_path, monkeypatch):
    """The stand-in launched as the stack's scheduler, its tree grown, then its leader killed with SIGKILL;
    yields (settings, its processes, its port). Whatever is left is killed afterwards."""
    s = stack.StackSettings(state_dir=str(tmp_path / "state"), port=_free_port())
    port = _free_port()
    monkeypatch.setattr(stack, "component_command", lambda _s, _c: [sys.executable, "-c", STAND_IN, str(port)])
    s.run_dir.mkdir(parents=True)
    (tmp_path / "logs").mkdir()
    stack._launch(s, COMPONENT, tmp_path / "logs")
    leader = stack.running_components(s)[COMPONENT]
    deadline = time.monotonic() + 30
    while (len(_tree(leader)) < TREE_SIZE + 1 or not _port_taken(port)) and time.monotonic() < deadline:
        time.sleep(0.05)
    procs = _tree(leader)
    assert len(procs) == TREE_SIZE + 1, procs
    os.kill(leader, signal.SIGKILL)
    os.waitpid(leader, 0)
    orphans = _alive(procs)
    assert len(orphans) == TREE_SIZE and _port_taken(port)  # the crash: everything but the leader lives on
    try:
        yield s, orphans, port
    finally:
        for p in _alive(orphans):
            p.kill()


def test_stop_ends_the_tree_of_a_crashed_component_and_frees_its_port(crashed):
    s, orphans, port = crashed
    assert stack.stop(s, grace_s=5) == [COMPONENT]
    assert _alive(orphans) == set()
    assert not _port_taken(port)
    assert not stack._pid_file(s, COMPONENT).exists()


def test_start_first_reaps_a_crashed_component(crashed):
    s, orphans, port = crashed
    assert stack.running_components(s) == {}
    assert stack.reap_crashed(s, grace_s=5) == {COMPONENT: TREE_SIZE}
    assert _alive(orphans) == set()
    assert not _port_taken(port)
    assert not stack._pid_file(s, COMPONENT).exists()  # reaped: start launches it again


def test_status_names_a_crashed_component_and_its_orphans(crashed, capsys):
    s, _, _ = crashed
    assert stack.component_states(s)[COMPONENT] == stack.ComponentState(
        "crashed", stack._record(s, COMPONENT).pid, TREE_SIZE
    )
    cli.main(["--state-dir", s.state_dir, "stack", "status", "--port", str(s.port)])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert lines[COMPONENT].split(None, 1)[1] == f"crashed ({TREE_SIZE} orphaned processes)"
    assert lines["api-server"].split(None, 1)[1] == "stopped"


def test_the_pid_file_records_the_session_and_the_leaders_start_time(tmp_path, monkeypatch):
    s = stack.StackSettings(state_dir=str(tmp_path / "state"), port=_free_port())
    s.run_dir.mkdir(parents=True)
    monkeypatch.setattr(
        stack, "component_command", lambda _s, _c: [sys.executable, "-c", "import time; time.sleep(60)"]
    )
    stack._launch(s, COMPONENT, tmp_path)
    record = json.loads(stack._pid_file(s, COMPONENT).read_text())
    try:
        with open(f"/proc/{record['pid']}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        assert (record["pgid"], record["sid"]) == (record["pid"], record["pid"])  # the leader of its own session
        assert record["start"] == int(fields[19])  # field 22 of /proc/<pid>/stat
        with open("/proc/sys/kernel/random/boot_id") as fh:
            assert record["boot_id"] == fh.read().strip()
    finally:
        assert stack.stop(s, grace_s=5) == [COMPONENT]
    assert not psutil.pid_exists(record["pid"]) or psutil.Process(record["pid"]).status() == psutil.STATUS_ZOMBIE


def test_a_pid_reused_by_another_program_is_never_signalled(tmp_path):
    """A pid file whose pid now belongs to another process (another start time, or another boot) names
    nothing: the process is not reported running, and stop leaves it and its session alone."""
    import subprocess

    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    stranger = subprocess.Popen([sys.executable, "-c", code + "time.sleep(60)"], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not psutil.Process(stranger.pid).children() and time.monotonic() < deadline:
            time.sleep(0.05)
        procs = _tree(stranger.pid)
        with open(f"/proc/{stranger.pid}/stat") as fh:
            start = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
        s = stack.StackSettings(state_dir=str(tmp_path / "state"), port=_free_port())
        s.run_dir.mkdir(parents=True)
        pid_file = stack._pid_file(s, COMPONENT)
        for record in (
            {"pid": stranger.pid, "pgid": stranger.pid, "sid": stranger.pid, "start": start - 1, "boot_id": boot},
            {"pid": stranger.pid, "pgid": stranger.pid, "sid": stranger.pid, "start": start, "boot_id": "another"},
        ):
            pid_file.write_text(json.dumps(record))
            assert stack.running_components(s) == {}
            assert stack.component_states(s)[COMPONENT].orphans == 0
            assert stack.reap_crashed(s, grace_s=1) == {COMPONENT: 0}
            pid_file.write_text(json.dumps(record))
            assert stack.stop(s, grace_s=1) == []
            assert _alive(procs) == procs
    finally:
        for p in _alive(_tree(stranger.pid)):
            p.kill()
        stranger.wait()
