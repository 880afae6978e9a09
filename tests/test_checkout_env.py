"""Two checkouts side by side, bootstrapped against one environment cache, each run their own code."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# what the project runs from .venv/bin (Makefile, .ci/run, the local stack, the Spark operator)
SCRIPTS = ["python", "airloop", "airflow", "pytest", "ruff", "mypy", "mlflow", "spark-submit"]
SHOW_PACKAGES = (
    "import airloop, airloop_airflow, airloop_local; "
    "print(airloop.__file__, airloop_airflow.__file__, airloop_local.__file__)"
)

pytestmark = [pytest.mark.integration, pytest.mark.bootstrap]


def clean_env() -> dict[str, str]:
    """The caller's environment without what would point a child process at another environment."""
    return {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}


def clone_working_tree(dest: Path) -> None:
    """A git checkout of this repository holding this working tree's files (changes not yet committed too)."""
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(dest)], check=True)
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for rel in filter(None, (name.decode() for name in listed)):
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)


def bootstrap(checkout: Path) -> None:
    """Run the checkout's bootstrap against the existing cache (never a cold build inside a test)."""
    proc = subprocess.run(
        ["scripts/bootstrap.sh"],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=600,
        env={**clean_env(), "AIRLOOP_CACHE_ONLY": "1"},
    )
    if proc.returncode == 3:
        pytest.skip(f"no cached environment for this lock file: run `make venv` first ({proc.stderr.strip()})")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def checkouts(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout of the repository")
    base = tmp_path_factory.mktemp("checkouts")
    made = [base / "one", base / "two"]
    for checkout in made:
        clone_working_tree(checkout)
    for checkout in made:  # the second bootstrap must leave the first checkout's environment alone
        bootstrap(checkout)
    return made


def run_in(checkout: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run one of the checkout's .venv/bin programs from a neutral folder."""
    return subprocess.run(
        [str(checkout / ".venv" / "bin" / args[0]), *args[1:]],
        cwd=checkout.parent,
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(),
    )


@pytest.mark.parametrize("which", [0, 1])
def test_each_checkout_imports_its_own_packages(checkouts: list[Path], which: int) -> None:
    checkout = checkouts[which]
    proc = run_in(checkout, "python", "-c", SHOW_PACKAGES)
    assert proc.returncode == 0, proc.stderr
    for module_file in proc.stdout.split():
        assert Path(module_file).resolve().is_relative_to(checkout.resolve()), (module_file, checkout)


@pytest.mark.parametrize("which", [0, 1])
def test_each_checkout_runs_its_cli(checkouts: list[Path], which: int) -> None:
    proc = run_in(checkouts[which], "airloop", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage: airloop" in proc.stdout


def test_console_scripts_run_the_checkouts_interpreter(checkouts: list[Path]) -> None:
    for checkout in checkouts:
        bin_dir = checkout / ".venv" / "bin"
        assert [s for s in SCRIPTS if not (bin_dir / s).exists()] == []
        for name in ("airloop", "airflow", "pytest", "mypy", "mlflow"):
            first_line = (bin_dir / name).read_text().splitlines()[0]
            assert first_line == f"#!{bin_dir / 'python'}", (name, first_line)


def test_the_cache_holds_no_install_of_a_checkout(checkouts: list[Path]) -> None:
    proc = run_in(checkouts[0], "python", "-c", "import _airloop_cached_env as c; print(c.CACHED)")
    assert proc.returncode == 0, proc.stderr
    cached_site = Path(proc.stdout.strip())
    assert cached_site.is_dir()
    installed = "".join(p.read_text() for p in cached_site.glob("__editable__*") if p.is_file())
    assert not [c for c in checkouts if str(c) in installed]
