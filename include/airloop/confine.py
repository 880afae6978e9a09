"""Confinement: what a URI or a partition name that comes from outside may reach, decided in one place.

Every file read driven by outside input goes through here: a webhook's ``source_uri``, a run conf's
``source_uri`` (anyone who may trigger a DAG sets one), the day's landing file, a partition named on the
command line, a path asked of the plugin's files route.

:func:`confine_uri` takes the URI **literally** and refuses, naming the rule:

* a NUL byte (raw or ``%00``) or another control character;
* any percent-escape (``%2e%2e``, ``%2f``): nothing here decodes them, so an escaped name would not mean
  what it seems to anyone who does;
* filesystem chaining (``::`` as in ``simplecache::file://…`` or ``file://…::http://…``, and ``|``):
  only one plain filesystem is read;
* a protocol the model's source is not configured for (``source.protocols``; default: the protocol of
  the landing folder, ``file`` locally);
* a relative path, a ``file://`` URI with a host, a ``..`` segment;
* a place outside every allowed prefix. Local paths are compared **resolved**: symlinks followed
  (``os.path.realpath``) on both the URI and the prefix, then ``Path.is_relative_to``, never a string
  prefix (``/landing/m2`` is not inside ``/landing/m``). Other protocols have no symlinks; their URI must
  start with the prefix at a ``/`` boundary.

It returns what to read: the resolved local path, or the URI. :func:`read_confined` then reads a
resolved local path without following any symlink (``O_NOFOLLOW`` on every component, from ``/``), so a
link swapped in between the check and the read makes the read fail instead of leaving the zone, and
refuses anything but a regular file (a FIFO would block the reader for ever).

:func:`check_partition` accepts only the partition keys the pipeline writes (``ds=YYYY-MM-DD``, a real
date; ``run=<id>`` of the characters :func:`airloop.storage.partition_key` keeps): one path segment that
stays in its zone.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import re
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from airloop.errors import DataProblem

if TYPE_CHECKING:
    from airloop.config import PipelineConfig
    from airloop.storage import DataRoot

#: a URI's scheme, as fsspec splits it (``<protocol>://``)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_CONTROL = re.compile(r"[\x01-\x1f\x7f]")
#: longest URI accepted (PATH_MAX on Linux)
MAX_URI_CHARS = 4096
#: what fsspec calls the local filesystem
LOCAL = "file"
_ALIASES = {"local": LOCAL}

_DS = re.compile(r"ds=([0-9]{4})-([0-9]{2})-([0-9]{2})")
#: ``run=`` and the characters ``storage.partition_key`` keeps (250: the longest Airflow run id)
_RUN = re.compile(r"run=[A-Za-z0-9_.=+-]{1,250}")
PARTITION_FORMS = "ds=YYYY-MM-DD (a real date) or run=<id> (1-250 of A-Z a-z 0-9 _ . = + -)"


class UriRejected(DataProblem, ValueError):
    """A URI or partition name refused by a confinement rule; ``rule`` is its short name.

    A ``DataProblem``: the Airflow layer fails the task without retries (a retry reads the same conf).
    """

    def __init__(self, message: str, rule: str):
        super().__init__(message)
        self.rule = rule


def protocol_of(uri: str) -> str:
    """The protocol a URI names: its scheme, lower case (``file`` for a plain path)."""
    m = _SCHEME.match(uri)
    proto = m.group(1).lower() if m else LOCAL
    return _ALIASES.get(proto, proto)


def _check_text(uri: str) -> None:
    """The rules on the characters of a URI, before anything looks at its parts."""
    if not isinstance(uri, str) or not uri:
        raise UriRejected("the URI is empty", "empty")
    if len(uri) > MAX_URI_CHARS:
        raise UriRejected(f"the URI is longer than {MAX_URI_CHARS} characters", "length")
    if "\x00" in uri or "%00" in uri:
        raise UriRejected("the URI contains a NUL byte (raw or %00)", "nul")
    if _CONTROL.search(uri):
        raise UriRejected("the URI contains a control character (newline, tab, ...)", "control")
    if _PERCENT_ESCAPE.search(uri):
        raise UriRejected(
            "the URI contains a percent-escape (such as %2e or %2f): URIs are read literally, never decoded; "
            "write the characters themselves",
            "percent",
        )
    if "::" in uri or "|" in uri:
        raise UriRejected(
            "the URI chains filesystems ('::' or '|', as in simplecache::file://...): name one plain file", "chain"
        )


def _split(uri: str) -> tuple[str, str]:
    """(protocol, path): a local path is absolute; ``file://`` takes no host."""
    proto = protocol_of(uri)
    m = _SCHEME.match(uri)
    path = uri[m.end() :] if m else uri
    if proto == LOCAL:
        if m and not path.startswith("/"):
            raise UriRejected("a file:// URI names no host: write file:///absolute/path", "file-host")
        if not path.startswith("/"):
            raise UriRejected(
                "the URI is neither an absolute path nor a URI with a scheme (file:///..., s3://...)", "relative"
            )
    elif not path:
        raise UriRejected(f"the {proto}:// URI names no location", "relative")
    return proto, path


def confine_uri(uri: str, allowed_prefixes: Iterable[str], protocols: Iterable[str]) -> str:
    """The canonical form of ``uri`` to read (a resolved local path, or the URI), if it lies inside one of
    ``allowed_prefixes`` and uses one of ``protocols``.

    :raises UriRejected: with a message naming the rule the URI breaks (see the module docstring)
    """
    _check_text(uri)
    proto, path = _split(uri)
    allowed = sorted({_ALIASES.get(p.lower(), p.lower()) for p in protocols})
    if proto not in allowed:
        raise UriRejected(
            f"protocol {proto!r} is not one this model's source reads: {allowed} (source.protocols)", "protocol"
        )
    if ".." in path.split("/"):
        raise UriRejected("the URI has a '..' segment: name the file by its own path", "dotdot")
    prefixes = list(allowed_prefixes)
    if proto == LOCAL:
        return _confine_local(path, prefixes)
    return _confine_remote(proto, path, prefixes)


def check_prefix(prefix: str) -> str:
    """``prefix`` if it can be an allowed prefix: an absolute path or a URI with a scheme, under the same
    character rules as a URI and without ``..`` (what a config's ``allowed_prefixes`` is checked with).

    :raises UriRejected: naming the rule
    """
    _check_text(prefix)
    _, path = _split(prefix)
    if ".." in path.split("/"):
        raise UriRejected("the prefix has a '..' segment: name the folder by its own path", "dotdot")
    return prefix


def _outside(prefixes: Sequence[str], resolved: bool) -> UriRejected:
    how = " (symlinks resolved first)" if resolved else ""
    return UriRejected(f"must lie under one of {list(prefixes)}{how}; it lies outside them", "outside")


def _confine_local(path: str, prefixes: Sequence[str]) -> str:
    real = Path(os.path.realpath(path))
    for prefix in prefixes:
        if protocol_of(prefix) != LOCAL:
            continue
        base = Path(os.path.realpath(_SCHEME.sub("", prefix, count=1)))
        if real.is_relative_to(base):
            _no_link_left(real)
            return str(real)
    raise _outside(prefixes, resolved=True)


def _no_link_left(real: Path) -> None:
    """``realpath`` leaves a symlink loop in place rather than failing: refuse a resolved path that still
    has a link in it."""
    for part in (real, *real.parents):
        try:
            link = part.is_symlink()
        except OSError:  # a folder on the way that may not be searched
            raise UriRejected("the URI cannot be checked: a folder on its path may not be searched", "access") from None
        if link:
            raise UriRejected("the URI goes through a symlink that does not resolve (a loop)", "symlink")


def _confine_remote(proto: str, path: str, prefixes: Sequence[str]) -> str:
    uri = f"{proto}://{path}"
    for prefix in prefixes:
        if protocol_of(prefix) != proto:
            continue
        base = f"{proto}://{_SCHEME.sub('', prefix, count=1)}".rstrip("/")
        if uri.startswith(base + "/"):
            return uri
    raise _outside(prefixes, resolved=False)


def read_confined(path: str, max_bytes: int) -> bytes | None:
    """Read a local path :func:`confine_uri` returned, following no symlink on the way; None when it
    does not exist.

    :raises UriRejected: a symlink is found on the path (swapped in after the check), it is not a regular
        file, or it is larger than ``max_bytes`` (rule ``size``)
    """
    parts = Path(path).parts
    if not parts or parts[0] != "/":
        raise UriRejected("read_confined needs an absolute, resolved path", "relative")
    directory = getattr(os, "O_DIRECTORY", 0)
    folder = os.O_RDONLY | os.O_NOFOLLOW | directory | getattr(os, "O_CLOEXEC", 0)
    file = (folder & ~directory) | os.O_NONBLOCK  # a FIFO must not block the open
    fd = os.open("/", folder)
    try:
        for name in parts[1:-1]:
            nxt = _open_at(name, fd, folder)
            os.close(fd)
            fd = nxt
            if fd < 0:
                return None
        leaf = _open_at(parts[-1], fd, file) if parts[1:] else -1
    finally:
        if fd >= 0:
            os.close(fd)
    if leaf < 0:
        return None
    try:
        info = os.fstat(leaf)
        if not stat.S_ISREG(info.st_mode):
            raise UriRejected("the URI names something that is not a regular file (a folder, a FIFO, a device)", "type")
        if info.st_size > max_bytes:
            raise UriRejected(f"the file is {info.st_size} bytes, over the limit of {max_bytes}", "size")
        with os.fdopen(leaf, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    finally:
        os.close(leaf)
    if len(data) > max_bytes:  # it grew while being read
        raise UriRejected(f"the file is over the limit of {max_bytes} bytes", "size")
    return data


def _open_at(name: str, dir_fd: int, flags: int) -> int:
    """``openat`` one component without following a symlink; -1 when nothing (or a file where a folder
    should be) is there; a symlink there is refused."""
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            raise
    try:
        is_link = stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except FileNotFoundError:
        return -1
    if is_link:
        raise UriRejected(
            "a symlink is on the path: it appeared after the path was checked, and is not followed", "symlink"
        )
    return -1


def check_partition(name: str) -> str:
    """``name`` if it is a partition key the pipeline writes (one path segment that stays in its zone).

    :raises UriRejected: naming the forms a partition takes
    """
    ds = _DS.fullmatch(name) if isinstance(name, str) else None
    if ds:
        try:
            dt.date(*(int(g) for g in ds.groups()))
        except ValueError:
            raise UriRejected(f"partition {name!r} is not a real date: use {PARTITION_FORMS}", "partition") from None
        return name
    if isinstance(name, str) and _RUN.fullmatch(name):
        return name
    raise UriRejected(f"{name!r} is not a partition: use {PARTITION_FORMS}", "partition")


# -- what one model's source may read ---------------------------------------------------------------
def source_prefixes(cfg: PipelineConfig, root: DataRoot) -> tuple[str, ...]:
    """Where the model's batches may be read from: its landing folder, and every ``allowed_prefixes`` of
    its webhook sources (a manual run's conf may name what a webhook could)."""
    from airloop.ingest import landing_prefix

    extra = [p for hook in cfg.webhooks for p in hook.allowed_prefixes]
    return tuple(dict.fromkeys([landing_prefix(cfg, root), *extra]))


def source_protocols(cfg: PipelineConfig, root: DataRoot) -> tuple[str, ...]:
    """``source.protocols``, else the protocol of the model's landing folder (``file`` locally)."""
    from airloop.ingest import landing_prefix

    if cfg.source.protocols:
        return tuple(cfg.source.protocols)
    return (protocol_of(landing_prefix(cfg, root)),)
