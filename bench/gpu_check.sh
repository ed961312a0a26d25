#!/usr/bin/env bash
# The GPU check, run on a lent GPU machine (one short script; the machine has no network):
#   wheels of our pinned pure-Python stack in .whl/ are installed to /tmp/site first, then the
#   comparative-loss step and the LLM benchmarks run with random weights of the real architectures
#   (the model packages are too large to carry). Logs go to $OUT (or ./gpu_logs).
set -u
OUT=${OUT:-gpu_logs}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
export JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import jax, flax, torch, transformers; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
timeout 240 python3 bench/comploss_step.py --synthetic --max-c 4 --repeats 10 2>&1 | grep -v Warning | tee "$OUT/comploss_step.txt"
timeout 200 python3 bench/llm.py --synthetic --steps 5 2>&1 | grep -v Warning | tee "$OUT/llm.txt"
