"""Confinement by resolved path (``airloop.confine``): what a URI or a partition named from outside may reach.

The attacks of the hardening review: a symlink in the landing zone pointing at ``/etc/passwd``, encoded
traversal (``%2e%2e``), ``..``, chained fsspec URLs (``…::http://…``, ``simplecache::file://…``), NUL
bytes, protocols the model's source is not configured for, and partitions such as ``../../raw/...`` on the
command line. Each is refused with a message naming the rule, and nothing outside the zone is read.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airloop.ingest import Interval, ingest_batch
from airloop.storage import DataRoot, partition_key

pytestmark = pytest.mark.unit

PASSWD = "/etc/passwd"
PART = "ds=2013-01-03"
IV = Interval("2013-01-03T00:00:00+00:00", "2013-01-04T00:00:00+00:00")


def confine():
    """The module under test, imported per test (so each test fails on its own where it is missing)."""
    from airloop import confine as mod

    return mod


@pytest.fixture()
def zone(tmp_path):
    """``landing/m`` with a real batch, a symlink to /etc/passwd, an inner symlink, and a folder beside it."""
    landing = tmp_path / "landing" / "m"
    (landing / "ds=2013-01-02").mkdir(parents=True)
    (landing / "ds=2013-01-02" / "batch.csv").write_text("a,b\n1,2\n")
    (landing / "ds=2013-01-03").mkdir()
    (landing / "ds=2013-01-03" / "batch.csv").symlink_to(PASSWD)
    (landing / "ds=2013-01-04").symlink_to(landing / "ds=2013-01-02")  # a link that stays inside: fine
    (tmp_path / "landing" / "m2").mkdir()
    (tmp_path / "landing" / "m2" / "x.csv").write_text("x\n")
    return landing


# -- confine_uri ------------------------------------------------------------------------------------
def test_a_path_inside_the_zone_comes_back_resolved(zone):
    c = confine()
    real = str((zone / "ds=2013-01-02" / "batch.csv").resolve())
    assert c.confine_uri(f"{zone}/ds=2013-01-02/batch.csv", [str(zone)], ["file"]) == real
    assert c.confine_uri(f"file://{zone}/ds=2013-01-02/batch.csv", [f"file://{zone}/"], ["file"]) == real
    assert c.confine_uri(f"{zone}/ds=2013-01-04/./batch.csv", [str(zone)], ["file"]) == real  # link inside
    # the prefix itself behind a symlink: both sides are resolved before they are compared
    alias = zone.parent.parent / "alias"
    alias.symlink_to(zone)
    assert c.confine_uri(f"{zone}/ds=2013-01-02/batch.csv", [str(alias)], ["file"]) == real


@pytest.mark.parametrize(
    ("uri", "rule"),
    [
        ("{zone}/ds=2013-01-03/batch.csv", "outside"),  # the symlink to /etc/passwd
        ("/etc/passwd", "outside"),
        ("{zone}2/x.csv", "outside"),  # landing/m2 starts with the string landing/m: not inside it
        ("{zone}/ds=2013-01-02/../../m2/x.csv", "'..'"),
        ("{zone}/%2e%2e/m2/x.csv", "percent-escape"),
        ("{zone}/%2E%2E%2Fm2/x.csv", "percent-escape"),
        ("{zone}/ds=2013-01-02/batch.csv%00.txt", "NUL"),
        ("{zone}/ds=2013-01-02/batch.csv\x00.txt", "NUL"),
        ("{zone}/ds=2013-01-02/batch\n.csv", "control character"),
        ("file://{zone}/ds=2013-01-02/batch.csv::http://127.0.0.1:1/", "chain"),
        ("simplecache::file://{zone}/ds=2013-01-02/batch.csv", "chain"),
        ("{zone}/ds=2013-01-02/batch.csv|http://127.0.0.1:1/", "chain"),
        ("http://127.0.0.1:1/etc/passwd", "protocol 'http'"),
        ("s3://bucket{zone}/ds=2013-01-02/batch.csv", "protocol 's3'"),
        ("landing/m/ds=2013-01-02/batch.csv", "absolute"),
        ("file:{zone}/ds=2013-01-02/batch.csv", "absolute"),
        ("file://otherhost{zone}/ds=2013-01-02/batch.csv", "file:///"),
    ],
)
def test_refusals_name_the_rule(zone, uri, rule):
    c = confine()
    with pytest.raises(c.UriRejected, match=re.escape(rule)) as e:
        c.confine_uri(uri.format(zone=zone), [str(zone)], ["file"])
    assert isinstance(e.value, ValueError) and e.value.rule


def test_remote_uris_are_checked_by_segment_and_protocol():
    c = confine()
    prefix = ["memory://bucket/landing/m"]
    assert c.confine_uri("memory://bucket/landing/m/ds=1/x.csv", prefix, ["memory"]) == (
        "memory://bucket/landing/m/ds=1/x.csv"
    )
    for uri, rule in [
        ("memory://bucket/landing/m2/x.csv", "outside"),
        ("memory://bucket/landing/m/../m2/x.csv", "'..'"),
        ("memory://bucket/landing/m/%2e%2e/x.csv", "percent-escape"),
        ("memory://bucket/landing/m/x.csv", "protocol 'memory'"),  # allowed prefix, protocol not configured
    ]:
        with pytest.raises(c.UriRejected, match=re.escape(rule)):
            c.confine_uri(uri, prefix, ["memory"] if "protocol" not in rule else ["file"])


def test_a_link_swapped_in_after_the_check_is_not_followed(zone, tmp_path):
    """The check returns a resolved path; the read walks it without following any link, so a folder
    replaced by a symlink between check and read makes the read fail instead of leaving the zone."""
    c = confine()
    path = c.confine_uri(f"{zone}/ds=2013-01-02/batch.csv", [str(zone)], ["file"])
    assert c.read_confined(path, 1000) == b"a,b\n1,2\n"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "batch.csv").write_text("root:x:0:0\n")
    shutil.rmtree(zone / "ds=2013-01-02")
    (zone / "ds=2013-01-02").symlink_to(outside)
    with pytest.raises(c.UriRejected, match="symlink"):
        c.read_confined(path, 1000)


def test_only_regular_files_are_read(zone):
    c = confine()
    fifo = zone / "ds=2013-01-02" / "pipe.csv"
    os.mkfifo(fifo)  # opening a FIFO with no writer would block a plain open() for ever
    path = c.confine_uri(str(fifo), [str(zone)], ["file"])
    with pytest.raises(c.UriRejected, match="regular file"):
        c.read_confined(path, 1000)
    assert c.read_confined(str(zone / "ds=2013-01-02" / "missing.csv"), 1000) is None


# -- ingestion reads only what confine_uri allows ---------------------------------------------------
def _symlinked_landing(cfg, data_root: DataRoot) -> Path:
    link = Path(data_root.landing(cfg.name, PART)) / cfg.source.file_name
    link.parent.mkdir(parents=True)
    link.symlink_to(PASSWD)
    return link


def _nothing_written(cfg, data_root: DataRoot) -> None:
    for zone in ("raw", "quarantine", "reports"):
        folder = Path(data_root.zone_uri(zone, cfg.name))
        assert not folder.exists() or not any(folder.rglob("*")), zone


def test_ingestion_does_not_follow_a_symlinked_landing_file(cfg, data_root):
    c = confine()
    _symlinked_landing(cfg, data_root)
    with pytest.raises(c.UriRejected, match="outside") as e:
        ingest_batch(cfg, data_root, partition=PART, interval=IV, run_id="r1")
    assert "root:" not in str(e.value)
    _nothing_written(cfg, data_root)  # nothing of the target is copied to quarantine (or anywhere)


@pytest.mark.parametrize(
    "uri",
    [
        PASSWD,
        "{landing}/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "{landing}/ds=2013-01-03/../../../../../etc/passwd",
        "file://{landing}/ds=2013-01-03/x.csv::http://127.0.0.1:1/",
        "simplecache::file://{landing}/ds=2013-01-03/flights.csv",
        "{landing}/ds=2013-01-03/flights.csv\x00.txt",
        "memory://airloop-confine-test/landing/flight_delays/ds=2013-01-03/flights.csv",
    ],
)
def test_ingestion_refuses_a_run_conf_source_uri_outside_the_zone(cfg, data_root, uri):
    """A run conf's ``source_uri`` can be set by anyone who can trigger the DAG: ingestion checks it itself."""
    c = confine()
    landing = data_root.landing_folder(cfg.name)
    with pytest.raises(c.UriRejected):
        ingest_batch(cfg, data_root, partition=PART, interval=IV, run_id="r1", source_uri=uri.format(landing=landing))
    _nothing_written(cfg, data_root)


def test_ingestion_reads_under_a_webhook_sources_allowed_prefix(cfg, data_root, tmp_path):
    """The places a model's webhook sources may point at are places its ingestion may read."""
    from airloop.sources import nycflights13

    feeds = tmp_path / "feeds"
    feeds.mkdir()
    (feeds / "day.csv").write_bytes(nycflights13.to_csv_bytes(nycflights13.day_frame(dt.date(2013, 1, 3))))
    hook = cfg.webhooks[0].model_copy(update={"allowed_prefixes": (str(feeds),)})
    other = cfg.model_copy(update={"webhooks": (hook,)})
    m = ingest_batch(other, data_root, partition=PART, interval=IV, run_id="r1", source_uri=f"{feeds}/day.csv")
    assert m["rows"] == len(nycflights13.day_frame(dt.date(2013, 1, 3)))
    c = confine()
    with pytest.raises(c.UriRejected, match="outside"):  # the same file, for a model without that prefix
        ingest_batch(cfg, data_root, partition=PART, interval=IV, run_id="r1", source_uri=f"{feeds}/day.csv")


def test_source_protocols_default_to_the_landing_folders(cfg, data_root):
    c = confine()
    assert c.source_protocols(cfg, data_root) == ("file",)
    s3 = cfg.model_copy(update={"source": cfg.source.model_copy(update={"landing_uri": "s3://bucket/feeds"})})
    assert c.source_protocols(s3, data_root) == ("s3",)
    both = cfg.model_copy(update={"source": cfg.source.model_copy(update={"protocols": ("file", "s3")})})
    assert c.source_protocols(both, data_root) == ("file", "s3")


# -- partitions -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ds=2013-01-02", "ds=2024-02-29", "run=manual__2013-01-02T00_00_00+00_00", "run=x"])
def test_valid_partitions(name):
    c = confine()
    assert c.check_partition(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "../../raw/flight_delays/ds=2013-01-02",
        "ds=2013-01-02/../../x",
        "ds=2013-13-45",
        "ds=2013-02-29",
        "ds=13-01-02",
        "ds=2013-01-02\x00",
        "ds=2013-01-02\n",
        "ds=٢٠١٣-٠١-٠٢",  # digits, but not the ASCII ones a partition key is written with
        "run=a/b",
        "run=",
        "run=" + "x" * 251,
        "2013-01-02",
        "",
        ".",
        "..",
    ],
)
def test_invalid_partitions_are_refused_with_the_rule(name):
    c = confine()
    with pytest.raises(c.UriRejected, match="partition") as e:
        c.check_partition(name)
    assert "ds=YYYY-MM-DD" in str(e.value)


def _published(cfg, data_root: DataRoot, day: str) -> str:
    raw = data_root.raw(cfg.name, f"ds={day}")
    data_root.write_partition(raw, {"data.parquet": b"x"}, {"partition": f"ds={day}", "rows": 1})
    return f"../../raw/{cfg.name}/ds={day}"


def test_get_quarantined_refuses_a_partition_outside_the_quarantine(cfg, data_root):
    from airloop import quarantine
    from airloop.errors import QuarantineError

    published = _published(cfg, data_root, "2013-01-02")
    with pytest.raises(QuarantineError, match="partition"):
        quarantine.get_quarantined(data_root, cfg.name, published)
    with pytest.raises(QuarantineError, match="partition"):
        quarantine.reject(data_root, cfg.name, published, reason="probe")
    assert not list(Path(data_root.raw(cfg.name, "ds=2013-01-02")).glob("*decision*"))


@pytest.mark.parametrize("verb", [["show"], ["reject", "--reason", "probe"], ["release"]])
def test_cli_partitions_are_checked(tmp_path, monkeypatch, capsys, cfg, verb):
    from airloop_local import cli

    data_root = DataRoot(tmp_path / "data")
    monkeypatch.setenv("AIRLOOP_DATA_ROOT", data_root.uri)
    published = _published(cfg, data_root, "2013-01-02")
    for partition in (published, "ds=2013-13-45", "run=a/b"):
        rc = cli.main(["--state-dir", str(tmp_path / "state"), "quarantine", verb[0], cfg.name, partition, *verb[1:]])
        err = capsys.readouterr().err
        assert rc == 2, (partition, err)
        assert "partition" in err and "ds=YYYY-MM-DD" in err
    assert not list(Path(data_root.raw(cfg.name, "ds=2013-01-02")).glob("*decision*"))


# -- properties -------------------------------------------------------------------------------------
_PIECES = st.sampled_from(
    ["", ".", "..", "%2e%2e", "%2E", "%00", "\x00", "::", "|", "//", "/", "a", "in", "out", "loop", "ds=2013-01-02"]
)
_SCHEMES = st.sampled_from(["", "file://", "file:", "FILE://", "s3://", "memory://", "simplecache::file://", "http://"])


def _layout(base: Path, links: list[tuple[str, int]]) -> tuple[Path, list[Path]]:
    """``base/zone`` and ``base/outside``, with symlinks named ``links[i][0]`` inside the zone pointing at
    one of: a file inside, a folder inside, a file outside, /etc/passwd, a dangling name, another link."""
    zone, outside = base / "zone", base / "outside"
    (zone / "in").mkdir(parents=True)
    outside.mkdir()
    (zone / "in" / "a").write_text("inside\n")
    (outside / "a").write_text("root:x:0:0\n")
    targets = [zone / "in" / "a", zone / "in", outside / "a", outside, Path(PASSWD), zone / "nowhere", zone / "loop"]
    made = [zone / "in" / "a"]
    for name, which in links:
        link = zone / name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(targets[which % len(targets)])
            made.append(link)
    return zone, made


def _inside(path: str, prefix: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(Path(os.path.realpath(prefix)))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    links=st.lists(
        st.tuples(st.sampled_from(["l1", "l2", "loop", "in2", "ds=2013-01-02"]), st.integers(0, 6)), max_size=5
    ),
    scheme=_SCHEMES,
    pieces=st.lists(_PIECES, max_size=6),
)
def test_property_confined_paths_resolve_inside_the_zone(links, scheme, pieces):
    c = confine()
    with tempfile.TemporaryDirectory() as tmp:
        zone, made = _layout(Path(tmp), links)
        candidates = [f"{scheme}{zone}/{'/'.join(pieces)}", *(f"{scheme}{p}" for p in made)]
        for uri in candidates:
            try:
                out = c.confine_uri(uri, [str(zone)], ["file"])
            except c.UriRejected:
                continue
            assert _inside(out, zone), (uri, out)
            try:
                data = c.read_confined(out, 1 << 20)
            except c.UriRejected:  # a folder, a loop: refused when read
                continue
            assert data is None or b"root:" not in data, (uri, out)


@settings(max_examples=300, deadline=None)
@given(uri=st.text(max_size=80) | st.binary(max_size=40).map(lambda b: b.decode("latin-1")))
def test_property_any_string_is_refused_or_confined(uri):
    c = confine()
    zone = Path(tempfile.gettempdir()) / "airloop-confine-property-zone"
    try:
        out = c.confine_uri(uri, [str(zone)], ["file"])
    except c.UriRejected as e:
        assert e.rule and str(e)
        return
    assert _inside(out, zone) and "\x00" not in out


_DATES = st.dates(min_value=dt.date(1, 1, 1), max_value=dt.date(9999, 12, 31))


@settings(max_examples=300, deadline=None)
@given(name=st.text(max_size=40) | _DATES.map(lambda d: f"ds={d}") | st.from_regex(r"\Arun=[A-Za-z0-9_.=+/-]{0,12}\Z"))
def test_property_check_partition_accepts_exactly_the_partition_forms(name):
    c = confine()
    ds = re.fullmatch(r"ds=([0-9]{4})-([0-9]{2})-([0-9]{2})", name)
    if ds:
        try:
            dt.date(*(int(g) for g in ds.groups()))
            valid = True
        except ValueError:
            valid = False
    else:
        valid = re.fullmatch(r"run=[A-Za-z0-9_.=+-]{1,250}", name) is not None
    try:
        assert c.check_partition(name) == name
        accepted = True
    except c.UriRejected:
        accepted = False
    assert accepted == valid, name
    if accepted:  # one segment that stays in its zone
        root = DataRoot("/srv/airloop-data")
        assert Path(os.path.normpath(root.quarantine("m", name))).parent == Path(root.zone_uri("quarantine", "m"))


@settings(max_examples=200, deadline=None)
@given(run_id=st.text(min_size=1, max_size=250), day=_DATES)
def test_property_every_key_the_pipeline_writes_is_a_valid_partition(run_id, day):
    c = confine()
    assert c.check_partition(partition_key(run_id=run_id))
    assert c.check_partition(partition_key(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)))
