# The two commands a new user needs:  make repro   and   make test
# Both create the environment first if it is missing (Python 3.11+, exact pins from
# requirements.lock: the same install the Dockerfile and CI run).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip --disable-pip-version-check -q

.PHONY: deps env plots-assets repro test lint bench lock clean-env

# The one install recipe, used by `make test`, CI and the Dockerfile alike:
#   deps: a virtual environment with exactly the pins of requirements.lock;
#   env:  deps + this package (editable, no dependency resolution of its own).
deps: $(VENV)/.deps
env: $(VENV)/.installed

# uv (itself pinned in the lock) installs the lock's exact pins, downloading in parallel: ~35 s
# where pip takes ~3 min (benchmarks/RESULTS.md). A PIP_INDEX_URL mirror is passed on to it; it
# trusts the system's certificates as pip does (a TLS-inspecting proxy's CA, as in the image test).
$(VENV)/.deps: requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PIP) install "$$(grep -m1 '^uv==' requirements.lock)"
	$(BIN)/uv pip install -q --system-certs --python $(BIN)/python $${PIP_INDEX_URL:+--index-url "$$PIP_INDEX_URL"} -r requirements.lock
	touch $@

$(VENV)/.installed: $(VENV)/.deps pyproject.toml $(VENV)/.location
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $@

# A venv copied or moved with its checkout (`cp -a`) would run the original's code: its scripts
# start the original's python (absolute shebangs) and its editable install points at the
# original's src/. .location records where the venv was made; when it differs, the scripts are
# pointed here and the rule above reinstalls this checkout's src/ (no download: seconds).
# `dpstudy` itself refuses, in one line, to run code that is not its checkout's (dpstudy.checkout).
$(VENV)/.location: $(VENV)/.deps FORCE
	@here="$(abspath $(VENV))"; old="$$(cat $@ 2>/dev/null || true)"; \
	if [ -n "$$old" ] && [ "$$old" != "$$here" ]; then \
	    echo "$(VENV) was made at $$old: pointing its scripts at $$here"; \
	    grep -rlIZ -F "$$old" $(BIN) | xargs -0 -r sed -i "s|$$old|$$here|g"; \
	fi; \
	[ "$$old" = "$$here" ] || echo "$$here" > $@

.PHONY: FORCE
FORCE:

# `dvc plots show` offline (clusters, containers): DVC's own page loads vega, vega-lite and
# vega-embed from a CDN, so without internet every interactive plot is blank. .dvc/config names
# .dvc/plots/offline_page.html as the page (plots.html_template); it loads the same versions from
# $(PLOTS_ASSETS)/ (relative to dvc_plots/index.html), falling back to the CDN where they are
# missing. This fetches them from the npm registry (`npm pack`, or the registry's tarball URL where
# npm is missing) and checks them against .dvc/plots/vega-assets.sha256. A build asset (0.8 MB,
# git-ignored); fetched once, a no-op afterwards.
VEGA_PKGS    := vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2
PLOTS_ASSETS := build/dvc-plots

plots-assets: $(PLOTS_ASSETS)/vega-assets.sha256

$(PLOTS_ASSETS)/vega-assets.sha256: .dvc/plots/vega-assets.sha256
	@rm -rf $(@D)/npm && mkdir -p $(@D)/npm
	@echo "Fetching $(VEGA_PKGS) from the npm registry (for dvc plots show offline)..."
	@cd $(@D)/npm && for p in $(VEGA_PKGS); do n=$${p%@*}; v=$${p##*@}; \
	    if command -v npm >/dev/null 2>&1; then npm pack --silent "$$p" >/dev/null; \
	    else $(PYTHON) -c 'import sys, urllib.request as r; r.urlretrieve(*sys.argv[1:])' \
	        "https://registry.npmjs.org/$$n/-/$$n-$$v.tgz" "$$n-$$v.tgz"; fi \
	    && tar -xzf "$$n-$$v.tgz" -O "package/build/$$n.min.js" > "$$n.min.js" || exit 1; done
	@cd $(@D)/npm && if command -v sha256sum >/dev/null 2>&1; then sha256sum --quiet -c; \
	    else shasum -a 256 -c; fi < $(abspath .dvc/plots/vega-assets.sha256)
	@mv $(@D)/npm/*.min.js $(@D)/ && rm -rf $(@D)/npm && cp .dvc/plots/vega-assets.sha256 $@
	@echo "$(@D): vega, vega-lite and vega-embed for dvc plots show"

# dvc.yaml's commands are plain `dpstudy ...`, found on PATH (as in the Docker image and on Slurm
# and Kubernetes), so dvc runs with the venv's bin first; by hand: `source .venv/bin/activate`.
repro: env
	@$(MAKE) --no-print-directory plots-assets || echo "note: vega not fetched (no registry?): dvc plots show will load it from the CDN" >&2
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro
	@echo "Report: results/REPORT.md. For dvc commands (README): source $(BIN)/activate"

# The session's pipeline run goes on in the background beside the tests (tests/conftest.py). With 4
# cores or more, pytest-xdist adds a worker per 2 cores; on 2 cores (CI) the one pytest process
# beside that run is the faster choice (-n 2 measured 27 min there: benchmarks/RESULTS.md).
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -ge 4 ] && echo $$((n / 2)) || echo 0)

test: env plots-assets lint
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -n $(TEST_WORKERS)

# ruff's lint and format check (rules in pyproject.toml); `ruff format` fixes the layout.
lint: env
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: env
	$(BIN)/python benchmarks/loader.py
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/ddp_cpu.py
	$(BIN)/python benchmarks/adaptive.py
	$(BIN)/python benchmarks/cli_startup.py

# Re-resolve requirements.lock from requirements.in (needs `uv`: pip install uv).
lock: deps
	$(BIN)/uv pip compile --universal --python-version 3.11 --no-header requirements.in -o requirements.lock
	sed -i '1i # Exact pins for every dependency (Python 3.11+, any platform). Generated from\n# requirements.in by `make lock` (uv pip compile --universal); do not edit by hand.' requirements.lock

clean-env:
	rm -rf $(VENV)
include docker/image.mk
