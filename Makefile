# The README's two commands: `make demo` and `make test`. Both set themselves up (venv, install).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench lint typecheck mutate clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	DVCONNECT_LOG_LEVEL=$${DVCONNECT_LOG_LEVEL:-WARNING} $(BIN)/dvconnect demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto  # one emulator and one PostgreSQL per worker

bench: $(STAMP)
	$(BIN)/python -m benchmarks

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Mutation testing of connector/ and the jobs' write and sync paths ([tool.mutmut] in
# pyproject.toml); not part of `make test`. Each mutant runs the unit tests that reach it, on
# SQLite only (-m "not postgres"); the e2e and resilience tests run the CLI as a subprocess
# against the emulator, far too slow to run per mutant (and out of reach of mutmut's
# in-process trampolines). Results stay in mutants/; a rerun tests only changed code.
# `$(BIN)/mutmut results` lists the survivors, `$(BIN)/mutmut show NAME` shows one.
mutate: $(STAMP)
	$(BIN)/mutmut run --max-children $$(nproc)
	$(BIN)/mutmut export-cicd-stats

clean:
	rm -rf $(VENV) var mutants .pytest_cache .mypy_cache .ruff_cache
