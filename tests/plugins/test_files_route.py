"""The plugin's files route (``GET /airloop/files/<path>``) against NUL bytes, traversal and symlinks: every
such request is a 4xx with a reason, never a 500, and nothing outside ``reports/`` and ``quarantine/`` of
the data root is served."""

from __future__ import annotations

import importlib.util

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import REPO

pytestmark = pytest.mark.unit

SECRET_LINE = "root:x:0:0"


@pytest.fixture(scope="module")
def plugin():
    spec = importlib.util.spec_from_file_location("airloop_plugin_files", REPO / "plugins" / "airloop_plugin.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def served(plugin, tmp_path_factory):
    """A data root with one report, a report that is a symlink to /etc/passwd, and a file outside it."""
    from airflow.api_fastapi.core_api.security import get_user

    base = tmp_path_factory.mktemp("files-route")
    root = base / "data"
    reports = root / "reports" / "m" / "ds=2013-01-02"
    reports.mkdir(parents=True)
    (reports / "validation.html").write_text("<h1>report</h1>")
    (reports / "leak.html").symlink_to("/etc/passwd")
    (root / "raw" / "m").mkdir(parents=True)
    (root / "raw" / "m" / "_manifest.json").write_text("{}")
    (base / "outside.html").write_text(SECRET_LINE)
    mp = pytest.MonkeyPatch()
    mp.setenv("AIRLOOP_DATA_ROOT", str(root))
    plugin.app.dependency_overrides[get_user] = lambda: object()
    yield TestClient(plugin.app, raise_server_exceptions=False)
    plugin.app.dependency_overrides.clear()
    mp.undo()


@pytest.mark.parametrize(
    ("path", "status", "why"),
    [
        ("reports/a%00.html", 400, "NUL"),
        ("reports/m/ds=2013-01-02/validation.html%00.json", 400, "NUL"),
        ("reports/%2525%32%65.html", 400, "percent-escape"),  # %25 decodes to a literal %: never decoded again
    ],
)
def test_nul_and_escapes_are_400_not_500(served, path, status, why):
    assert served.get("/files/reports/m/ds=2013-01-02/validation.html").status_code == 200  # the route works
    r = served.get(f"/files/{path}")
    assert r.status_code == status and why in r.json()["detail"], r.text


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    path=st.lists(
        st.sampled_from(
            ["reports", "quarantine", "raw", "m", "ds=2013-01-02", "..", ".", "%2e%2e", "%00", "%2f", "leak.html"]
        )
        | st.text(max_size=12),
        max_size=7,
    ).map("/".join)
)
def test_property_any_path_is_a_report_or_a_4xx(served, path):
    """Paths built from zone names, ``..``, escapes, NUL and a symlink to /etc/passwd (``leak.html``)."""
    try:
        r = served.get(f"/files/{path}")
    except Exception:  # a URL httpx itself refuses to build never reaches the route
        return
    assert r.status_code < 500, (path, r.status_code, r.text[:200])
    assert SECRET_LINE not in r.text
    if r.status_code == 200:
        assert "report" in r.text
