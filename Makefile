# vtlvisor: `make demo` and `make test` do everything on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: all venv guest tools demo test lint bench clean

all: venv guest

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

guest:
	$(MAKE) -C guest

demo: venv guest
	@# the test kernel exits through isa-debug-exit with value 0: process status (0 << 1) | 1 = 1
	$(BIN)/vtlvisor run guest/build/testkernel.elf --timeout 120 --append quiet; \
	  status=$$?; test $$status -eq 1 || { echo "test kernel failed (status $$status)"; exit 1; }
	$(BIN)/vtlvisor run guest/build/vbs.elf --hyperv --timeout 120; \
	  status=$$?; test $$status -eq 1 || { echo "VBS guest failed (status $$status)"; exit 1; }
	$(BIN)/vtlvisor attacks --json build-attacks.json

test: venv guest tools
	$(BIN)/pytest -q -n 2 tests

# Debian tools the tests drive for real (gdb for the gdb-stub tests).
tools:
	@command -v gdb >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq --no-install-recommends gdb; }

lint: venv
	$(BIN)/ruff check src tests bench

# A bounded, seeded fuzz campaign of hostile guests (fuzz/README.md); exit 1 if anything was found.
.PHONY: fuzz
fuzz: venv
	$(BIN)/python -m fuzz --seconds $(or $(FUZZ_SECONDS),180)

bench: venv guest
	$(BIN)/python bench/run_bench.py

clean:
	$(MAKE) -C guest clean
	rm -rf $(VENV) .pytest_cache
