# Two commands: `make run` (gateway in sandbox mode) and `make test` (the whole suite).
# Needs only python3 (3.11+); uv is installed from PyPI into .tools/ on first use.
PYTHON ?= python3
UV := .tools/bin/uv
# The environment uv syncs (uv's own variable; default .venv in this folder).
VENV := $(or $(UV_PROJECT_ENVIRONMENT),.venv)
# Plugins from outside this repository: pip requirement lines (a PyPI name, a path, a git
# URL), one a line, in a git-ignored file; see docs/self-hosting.md, "Installing a plugin".
PLUGINS_FILE ?= plugins.local.txt

.PHONY: run test sync plugins bench lint

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet uv

# --inexact: the sync keeps what the lock does not list (the plugins installed below).
sync: $(UV)
	$(UV) sync --all-packages --locked --inexact --quiet
	@if [ -f "$(PLUGINS_FILE)" ]; then $(MAKE) --no-print-directory plugins; fi

# The plugins of PLUGINS_FILE, constrained to the lock (the workspace's own packages pinned
# too): a plugin adds packages, it never changes the core or a locked version (if it needs
# another, uv says which and nothing is installed).
plugins: $(UV)
	$(UV) export --frozen --all-packages --no-hashes --no-header --no-annotate \
		--no-emit-workspace --quiet -o $(VENV)/plugin-constraints.txt
	@$(VENV)/bin/python -c 'import tomllib; lock = tomllib.load(open("uv.lock", "rb")); \
		print(*("%s==%s" % (p["name"], p["version"]) for p in lock["package"] \
		if "editable" in p["source"]), sep="\n")' >> $(VENV)/plugin-constraints.txt
	$(UV) pip install --quiet --python $(VENV) -c $(VENV)/plugin-constraints.txt \
		-r $(PLUGINS_FILE)

run: sync
	$(UV) run --no-sync apimodels serve --sandbox

# Two workers (pytest-xdist): the suite's tests mostly wait on sockets, servers and spawned
# processes, so two at once use both cores of the CI machine (10:48 -> 7:10 there).
test: sync
	$(UV) run --no-sync pytest -q -n 2

# The first line: the gateway's CPU per request, and its ratio to the direct mock's (the
# figure docs/performance.md documents and tests/test_performance.py guards).
bench: sync
	$(UV) run --no-sync python bench/side_by_side.py --guard 3000
	$(UV) run --no-sync python bench/side_by_side.py --leak-calls 100000
	$(UV) run --no-sync python bench/overhead.py
	$(UV) run --no-sync python bench/ledger.py
	$(UV) run --no-sync python bench/tasks.py
	$(UV) run --no-sync python bench/storage.py
	$(UV) run --no-sync python bench/policy.py
	$(UV) run --no-sync python bench/speech.py
	$(UV) run --no-sync python bench/fallback.py
	$(UV) run --no-sync python bench/console.py
	$(UV) run --no-sync python bench/history.py

lint: sync
	$(UV) run --no-sync ruff check .
