"""The process trees of the local stack's components: which processes are a component's, and ending them.

Each component is started as the leader of a session of its own (``start_new_session``), so its session id
and process group id are its pid. What it forks stays in that session: the scheduler forks its log server
and its LocalExecutor workers into the leader's process group, and each task runner into a process group of
its own (Airflow's supervisor calls ``setpgid`` so that it can signal the task's subprocesses) in the same
session. When a leader dies (SIGKILL, the OOM killer) nothing tells its children: the executor workers wait
on a queue whose write end they hold themselves, the log server keeps its port. So a component is its
**session**, found in ``/proc`` whether its leader lives or not, plus every live descendant that moved to a
session of its own (a subprocess started with ``start_new_session``, reachable while its parent lives).

Identity, so that no stranger is ever signalled: the pid file records the leader's pid, process group,
session, start time (``/proc/<pid>/stat`` field 22, clock ticks since boot) and the boot id.

* A record of another boot is void: none of its processes can exist.
* A live process with the leader's pid and another start time is a stranger that reused the pid; Linux
  hands a pid out again only when no process has it as its pid, group or session id, so the recorded
  session is empty then, and nothing is ours.
* A process of the recorded session (or group) that started before the leader is not ours either.
* The process asking (``airloop stack stop`` run from a task, say) and its ancestors are never signalled.

``prctl(PR_SET_PDEATHSIG)`` is not the mechanism, for three reasons. It can only be set by a process on
itself, after it was forked: the processes that outlive a crash are forked by Airflow, MLflow and uvicorn,
not by us, and nothing of ours runs in them between fork and their work. Setting it on the leaders we start
would be wrong: their parent is the ``airloop stack start`` process, which exits as soon as the stack is
healthy, and the death signal would end the whole stack with it. And it fires when the parent *thread* that
forked the child exits, not the parent process, so a child forked from a worker thread dies when that thread
ends; injecting it into Airflow's forks (``os.register_at_fork``) would kill healthy processes. The session
is the mechanism; it needs no help from the processes inside it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

_PROC = Path("/proc")
#: the states of ``/proc/<pid>/stat`` of a process that has ended but not been reaped (or is being)
_ENDED = frozenset("ZXx")


@dataclass(frozen=True)
class ProcessInfo:
    """One process as ``/proc/<pid>/stat`` shows it."""

    pid: int
    state: str
    ppid: int
    pgid: int
    sid: int
    #: clock ticks after boot when the process started (field 22): with the pid, it names one process
    start: int

    @property
    def ended(self) -> bool:
        """A zombie: it holds no memory, port or file, and cannot be signalled any more."""
        return self.state in _ENDED


def read_stat(pid: int) -> ProcessInfo | None:
    """The process ``pid`` (None when there is none, or no ``/proc`` to read)."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: the fields after it follow the last ')'
    fields = text.rsplit(")", 1)[1].split()
    return ProcessInfo(
        pid=pid, state=fields[0], ppid=int(fields[1]), pgid=int(fields[2]), sid=int(fields[3]), start=int(fields[19])
    )


def process_table() -> dict[int, ProcessInfo]:
    """Every process now (a process that ends while the table is read is left out)."""
    table = {}
    try:
        entries = list(_PROC.iterdir())
    except OSError:  # no /proc (not Linux): nothing can be found beyond what a pid file names
        return {}
    for entry in entries:
        if entry.name.isdigit() and (info := read_stat(int(entry.name))) is not None:
            table[info.pid] = info
    return table


def boot_id() -> str | None:
    """This boot's id: a start time counted in ticks after boot means something only within one boot."""
    try:
        return (_PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        return None


@dataclass(frozen=True)
class Record:
    """What a component's pid file says about the session its leader started."""

    pid: int
    pgid: int
    sid: int
    #: the leader's start time; None in a pid file written before start times were recorded (a bare pid)
    start: int | None = None
    boot_id: str | None = None

    @classmethod
    def of(cls, pid: int) -> Record:
        """The record of a process just started (as the leader of a new session)."""
        info = read_stat(pid)
        return cls(
            pid=pid,
            pgid=info.pgid if info else pid,
            sid=info.sid if info else pid,
            start=info.start if info else None,
            boot_id=boot_id(),
        )

    @classmethod
    def parse(cls, text: str) -> Record | None:
        """A pid file's record: JSON, or a bare pid (the leader of its own session and group)."""
        text = text.strip()
        if not text:
            return None
        if text.isdigit():
            return cls(pid=int(text), pgid=int(text), sid=int(text))
        try:
            data = json.loads(text)
            return cls(
                pid=int(data["pid"]),
                pgid=int(data["pgid"]),
                sid=int(data["sid"]),
                start=None if data.get("start") is None else int(data["start"]),
                boot_id=data.get("boot_id"),
            )
        except (ValueError, KeyError, TypeError):
            return None  # a damaged pid file names nothing that may be signalled

    def dumps(self) -> str:
        return json.dumps(asdict(self))

    def void(self) -> bool:
        """Whether the record is of another boot (its processes cannot exist)."""
        return self.boot_id is not None and self.boot_id != boot_id()

    def is_leader(self, info: ProcessInfo | None) -> bool:
        """Whether ``info`` is the recorded leader, alive (same pid and start time, not a zombie)."""
        if info is None or info.ended or info.pid != self.pid or self.void():
            return False
        return self.start is None or info.start == self.start


def leader_alive(record: Record) -> bool:
    """Whether the component's leader still runs."""
    return record.is_leader(read_stat(record.pid))


def members(record: Record, table: dict[int, ProcessInfo] | None = None) -> set[int]:
    """The live processes of the component ``record`` names, its leader included when alive: the recorded
    session and group, and every live descendant of theirs (see the module doc for what is never included)."""
    table = process_table() if table is None else table
    if record.void():
        return set()
    holder = table.get(record.pid)
    if holder is not None and not holder.ended and not record.is_leader(holder):
        return set()  # a stranger reused the leader's pid: the recorded session has ended
    found = {
        p.pid
        for p in table.values()
        if (p.sid == record.sid or p.pgid == record.pgid)
        and not p.ended
        and (record.start is None or p.start >= record.start)
    }
    return _with_descendants(found, table) - _self_and_ancestors(table)


def _with_descendants(pids: set[int], table: dict[int, ProcessInfo]) -> set[int]:
    children: dict[int, list[int]] = {}
    for p in table.values():
        if not p.ended:
            children.setdefault(p.ppid, []).append(p.pid)
    out, todo = set(pids), list(pids)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _self_and_ancestors(table: dict[int, ProcessInfo]) -> set[int]:
    out, pid = set(), os.getpid()
    while pid > 0 and pid not in out:
        out.add(pid)
        info = table.get(pid)
        pid = info.ppid if info else 0
    return out


def listening_ports(pids: Iterable[int]) -> dict[int, int]:
    """port -> pid for every TCP port one of ``pids`` listens on (IPv4 and IPv6)."""
    inodes = {}
    for name in ("tcp", "tcp6"):
        try:
            lines = (_PROC / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == "0A":  # LISTEN
                inodes[f"socket:[{f[9]}]"] = int(f[1].rsplit(":", 1)[1], 16)
    out = {}
    for pid in pids:
        try:
            fds = list((_PROC / str(pid) / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                port = inodes.get(os.readlink(fd))
            except OSError:
                continue
            if port is not None:
                out[port] = pid
    return out


def port_holders(ports: Iterable[int], table: dict[int, ProcessInfo] | None = None) -> dict[int, int]:
    """port -> pid of the process listening on it, for those of ``ports`` that are taken."""
    table = process_table() if table is None else table
    wanted = set(ports)
    return {port: pid for port, pid in listening_ports(table).items() if port in wanted}


def terminate(graces: dict[int, float], table: dict[int, ProcessInfo] | None = None) -> set[int]:
    """End processes: SIGTERM to each, then SIGKILL to each still running after its grace period (pid ->
    seconds); return those that were signalled. A pid is signalled only while it is the process it was when
    ``table`` was read (same start time), so a pid reused meanwhile is left alone."""
    table = process_table() if table is None else table
    known = {pid: table[pid].start for pid in graces if pid in table}
    signalled = _signal(known, signal.SIGTERM)
    began, killed = time.monotonic(), set[int]()
    while waiting := _running(known) - killed:
        overdue = {pid for pid in waiting if time.monotonic() - began >= graces[pid]}
        killed |= _signal({pid: known[pid] for pid in overdue}, signal.SIGKILL) | overdue
        time.sleep(0.1)
    deadline = time.monotonic() + 10.0  # SIGKILL cannot be caught: the kernel ends them at once
    while _running({pid: known[pid] for pid in killed}) and time.monotonic() < deadline:
        time.sleep(0.05)
    return signalled


def _running(known: dict[int, int]) -> set[int]:
    out = set()
    for pid, start in known.items():
        info = read_stat(pid)
        if info is not None and info.start == start and not info.ended:
            out.add(pid)
    return out


def _signal(known: dict[int, int], sig: signal.Signals) -> set[int]:
    """Send ``sig`` to each process of ``known`` still running, through a pidfd where the system has them: the
    start time is checked after the pidfd is open, so the signal cannot reach a process that reused the pid."""
    sent = set()
    for pid, start in known.items():
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        except OSError:  # no pidfds here (an old kernel): check, then signal by pid
            fd = -1
        try:
            info = read_stat(pid)
            if info is None or info.start != start or info.ended:
                continue
            if fd >= 0:
                signal.pidfd_send_signal(fd, sig)
            else:
                os.kill(pid, sig)
            sent.add(pid)
        except (ProcessLookupError, PermissionError):
            continue
        finally:
            if fd >= 0:
                os.close(fd)
    return sent
