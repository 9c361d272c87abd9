# Two commands: `make run` (gateway in sandbox mode) and `make test` (the whole suite).
# Needs only python3 (3.11+); uv is installed from PyPI into .tools/ on first use.
PYTHON ?= python3
UV := .tools/bin/uv

.PHONY: run test sync bench lint

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet uv

sync: $(UV)
	$(UV) sync --all-packages --locked --quiet

run: sync
	$(UV) run --no-sync apimodels serve --sandbox

test: sync
	$(UV) run --no-sync pytest -q

bench: sync
	$(UV) run --no-sync python bench/overhead.py
	$(UV) run --no-sync python bench/ledger.py
	$(UV) run --no-sync python bench/tasks.py
	$(UV) run --no-sync python bench/storage.py
	$(UV) run --no-sync python bench/policy.py
	$(UV) run --no-sync python bench/speech.py

lint: sync
	$(UV) run --no-sync ruff check .
