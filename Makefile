# Two entry points for a newcomer (README quick start): `make demo` and `make test`.
# Each creates .venv and installs the project with its test tools first, so a fresh machine with
# Python 3.11+ and gcc needs nothing else.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup demo test lint typecheck pytest ctest bench vectors wireshark clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "eis-hil needs Python 3.11 or newer; set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/eis-hil demo

test: lint typecheck ctest pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python tools/gen_vectors.py --check
	$(BIN)/python tools/gen_wireshark.py --check
	$(BIN)/python tools/gen_spec.py --check
	$(BIN)/pytest -q

ctest:
	@if [ -f firmware_stub/Makefile ]; then $(MAKE) -C firmware_stub test; else echo "firmware_stub: no C tests yet"; fi

bench: $(STAMP)
	$(BIN)/python tools/bench_protocol.py

vectors: $(STAMP)
	$(BIN)/python tools/gen_vectors.py

wireshark: $(STAMP)
	$(BIN)/python tools/gen_wireshark.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
	@if [ -f firmware_stub/Makefile ]; then $(MAKE) -C firmware_stub clean; fi
