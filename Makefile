# Two commands: `make demo` and `make test`. Both set up what they need first
# (a .venv with torch from local disk, the package, test tools, Debian packages)
# and are idempotent: a second run only re-installs what changed.
SHELL := /bin/bash
# a pipeline fails when its first command fails (pip behind the log filter below)
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
STAMP_TORCH := $(VENV)/.stamp-torch
STAMP_PKG := $(VENV)/.stamp-pkg
STAMP_SYS := $(VENV)/.stamp-sysdeps
STAMP_BENCH := $(VENV)/.stamp-bench
# Quiet setup logs: pip is quiet (-q, no version check), and the one warning this
# machine's pip configuration prints per package (a find-links directory that does not
# exist here) is dropped; every other line, and pip's exit status, go through.
PIP_INSTALL := $(PIP) install -q --disable-pip-version-check
QUIET := 2>&1 | { grep -v "is neither a file nor a directory" || true; }

.PHONY: demo test lint typecheck pytest setup sysdeps bench clean

setup: $(STAMP_PKG) $(STAMP_SYS)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip $(QUIET)

# torch first, pinned: here it comes from local disk (about 2 minutes, 5.5 GB, once).
$(STAMP_TORCH): | $(VENV)/bin/python
	$(PIP_INSTALL) $(TORCH_PINS) $(QUIET)
	$(PY) -c "import torch, torchvision"
	touch $@

$(STAMP_PKG): pyproject.toml $(STAMP_TORCH)
	$(PIP_INSTALL) -e '.[test,demo]' $(QUIET)
	touch $@

# Debian packages the suite needs (listed in scripts/system-deps.txt); installed only if missing.
$(STAMP_SYS): scripts/system-deps.txt scripts/ensure-system-deps.sh
	bash scripts/ensure-system-deps.sh scripts/system-deps.txt
	@mkdir -p $(VENV) && touch $@

demo: setup
	$(VENV)/bin/netsight demo --out out

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: setup
	$(VENV)/bin/mypy

# The tests marked `parity` (comparisons with independent references and numeric
# tolerances) run a second time on another family of CPU kernels: ATen's baseline
# kernels (ATEN_CPU_CAPABILITY=default) and PyTorch's native convolutions instead of
# oneDNN's (NETSIGHT_TEST_NO_ONEDNN=1), so a tolerance that holds on one kernel family
# only fails here, not on someone else's machine.
pytest: setup
	$(VENV)/bin/pytest -n 2 --dist loadgroup -q --durations=15
	ATEN_CPU_CAPABILITY=default NETSIGHT_TEST_NO_ONEDNN=1 \
	  $(VENV)/bin/pytest -n 2 --dist loadgroup -q -m parity -p no:cacheprovider --durations=15

test: lint typecheck pytest

# The benchmarks' peers at pinned versions (pyproject's `bench` extra; see BENCHMARKS.md).
$(STAMP_BENCH): pyproject.toml $(STAMP_PKG)
	$(PIP_INSTALL) -e '.[test,demo,bench]' $(QUIET)
	touch $@

bench: setup $(STAMP_BENCH)
	$(PY) benchmarks/bench_summary.py --threads 1

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
