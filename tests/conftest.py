"""Test environment: offline hub, CPU only, 8 simulated devices -- set before JAX touches a backend.

Compiling is most of the suite's time on 2 cores (tiny programs; XLA's CPU backend spends seconds on each),
so the session makes it cheaper without changing what any test checks:
- one persistent compilation cache for the session (JAX_COMPILATION_CACHE_DIR, inherited by the xdist
  workers and by every subprocess a test starts), caching every program however quick its compile: many
  tests build the same tiny models, and a subprocess (launcher, preemption, notebook) recompiles what its
  parent or a sibling already compiled; likewise one TGA_JAX_CACHE, where the SmolLM2 tokenizer rebuilt
  from its GGUF file (~4 CPU-s) is saved once for every later process;
- XLA_FLAGS: LLVM at -O1 without its expensive passes. XLA's HLO passes (fusion, sharding, layouts) are
  unchanged; only the machine code is less tuned. Compiles take about a third of the time, and programs
  run about as fast as at the default -O2 (-O0, JAX_DISABLE_MOST_OPTIMIZATIONS, compiles as fast but
  halves the speed of MiniLM-size models). And XLA:CPU's older elemental emitters instead of its fusion
  emitters: a tiny TGA run takes 19.2 CPU-s instead of 23.8, SmolLM2's first generate call 27.2 instead of
  10.4 (bench/results/xla_cpu_emitters.txt); most tests compile tiny programs, so the suite gains. Tests that start a subprocess with XLA_FLAGS of their own keep these
  (test_preemption.py, test_notebook.py).
Each is set only where the environment does not set it already.

`make test` runs two xdist workers: `pytest_collection_modifyitems` below puts the costliest files first, so
the two workers finish together (see COSTLIEST_FILES).
"""
import atexit
import os
import shutil
import tempfile

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="jax-test-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The project's own cache (tokenizers rebuilt from GGUF files): one for the session, shared like the one above.
if "TGA_JAX_CACHE" not in os.environ:
  os.environ["TGA_JAX_CACHE"] = tempfile.mkdtemp(prefix="tga-jax-test-cache-")
  atexit.register(shutil.rmtree, os.environ["TGA_JAX_CACHE"], ignore_errors=True)
_flags = os.environ.get("XLA_FLAGS", "").split()
_set = {flag.split("=")[0] for flag in _flags}
os.environ["XLA_FLAGS"] = " ".join(_flags + [flag for flag in ("--xla_backend_optimization_level=1",
                                                              "--xla_llvm_disable_expensive_passes=true",
                                                              "--xla_cpu_use_fusion_emitters=false")
                                             if flag.split("=")[0] not in _set])
# `make test` runs two pytest-xdist workers: each prepares the tfds datasets it needs (BBC News) in a
# folder of its own, so two workers never build the same dataset into one folder at once.
if os.environ.get("PYTEST_XDIST_WORKER") and "TFDS_DATA_DIR" not in os.environ:
  os.environ["TFDS_DATA_DIR"] = tempfile.mkdtemp(prefix=f"tfds-{os.environ['PYTEST_XDIST_WORKER']}-")
  atexit.register(shutil.rmtree, os.environ["TFDS_DATA_DIR"], ignore_errors=True)

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

# The costliest test files, costliest first, with rough seconds on 2 cores (from `--durations`). `make test`
# hands out whole files (`--dist loadfile`: a file's module fixtures are set up once) in collection order,
# a file to whichever worker is free: these go first, so the long ones overlap and the many short files
# fill in at the end and both workers finish together. Only the order depends on this table: a file
# missing from it runs after these, in its usual place.
COSTLIEST_FILES = {
    "test_miniature_reproduce.py": 200,
    "test_multihost.py": 150,
    "test_preemption.py": 120,
    "test_tga_train.py": 110,
    "test_comploss_tasks.py": 110,
    "test_notebook.py": 100,
    "test_llama_smollm2.py": 90,
    "test_comploss_ablation.py": 60,
    "test_generate.py": 45,
    "test_llama_parity.py": 45,
    "test_evaluate.py": 35,
    "test_analysis.py": 35,
    "test_comploss_step.py": 30,
}


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
  # A stable sort: each file's tests keep their order.
  items.sort(key=lambda item: -COSTLIEST_FILES.get(item.path.name, 0))
