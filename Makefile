# The two commands of the README:
#   make demo   set up everything and run the main job on the embedded defaults (SQLite, local folder)
#   make test   set up everything and run the whole test suite (what CI runs)
.PHONY: demo test test-fast lint venv browser stop status clean

PYTEST_ARGS ?=

venv:
	@scripts/bootstrap.sh

demo: venv
	.venv/bin/airloop demo

# Debian's Chromium for the browser test (installed once per machine)
browser:
	@scripts/install-browser.sh

test: venv browser
	.venv/bin/python -m pytest $(PYTEST_ARGS)

# The unit layer: no Spark job, no training, no server, no Airflow database (tests marked heavy or
# integration run in `make test`).
test-fast: venv
	.venv/bin/python -m pytest -m "unit and not heavy and not integration" $(PYTEST_ARGS)

# What CI and the pre-commit hooks check: lint, format, types (mypy's targets are in pyproject.toml).
lint: venv
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

status: venv
	.venv/bin/airloop stack status

stop:
	@[ -x .venv/bin/airloop ] && .venv/bin/airloop stack stop || true

clean: stop
	rm -rf .airloop
