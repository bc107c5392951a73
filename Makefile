# The two commands a new user needs:  make repro   and   make test
# Both create the environment first if it is missing (Python 3.11+, exact pins from
# requirements.lock: the same install the Dockerfile and CI run).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip --disable-pip-version-check -q

.PHONY: deps env repro test bench lock clean-env

# The one install recipe, used by `make test`, CI and the Dockerfile alike:
#   deps: a virtual environment with exactly the pins of requirements.lock;
#   env:  deps + this package (editable, no dependency resolution of its own).
deps: $(VENV)/.deps
env: $(VENV)/.installed

$(VENV)/.deps: requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements.lock
	touch $@

$(VENV)/.installed: $(VENV)/.deps pyproject.toml
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $@

repro: env
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

test: env
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

bench: env
	$(BIN)/python benchmarks/loader.py
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/ddp_cpu.py
	$(BIN)/python benchmarks/adaptive.py

# Re-resolve requirements.lock from requirements.in (needs `uv`: pip install uv).
lock:
	uv pip compile --universal --python-version 3.11 --no-header requirements.in -o requirements.lock
	sed -i '1i # Exact pins for every dependency (Python 3.11+, any platform). Generated from\n# requirements.in by `make lock` (uv pip compile --universal); do not edit by hand.' requirements.lock

clean-env:
	rm -rf $(VENV)
