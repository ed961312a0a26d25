"""Test environment: offline hub, CPU only, 8 simulated devices -- set before JAX touches a backend.

Compiling is most of the suite's time on 2 cores (tiny programs; XLA's CPU backend spends seconds on each),
so the session makes it cheap without changing what any test checks:
- one persistent compilation cache for the session (JAX_COMPILATION_CACHE_DIR, inherited by the xdist
  workers and by every subprocess a test starts), caching every program however quick its compile: many
  tests build the same tiny models, and a subprocess (launcher, preemption, notebook) recompiles what its
  parent or a sibling already compiled;
- JAX_DISABLE_MOST_OPTIMIZATIONS=1: XLA's LLVM backend at -O0 (the HLO passes, sharding and numerics are
  unchanged up to float rounding order); compiles take about a quarter of the time and the tiny programs
  run as fast. Tests that read what the compiler decides for a TPU (test_plan.py) turn it off again.
Both are set only when the environment does not set them already (JAX_DISABLE_MOST_OPTIMIZATIONS=0 runs
the suite with the optimising backend).

`make test` runs two xdist workers: `pytest_collection_modifyitems` below puts the longest tests first, so
the two workers finish together (see SLOWEST).
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
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# `make test` runs two pytest-xdist workers: each prepares the tfds datasets it needs (BBC News) in a
# folder of its own, so two workers never build the same dataset into one folder at once.
if os.environ.get("PYTEST_XDIST_WORKER") and "TFDS_DATA_DIR" not in os.environ:
  os.environ["TFDS_DATA_DIR"] = tempfile.mkdtemp(prefix=f"tfds-{os.environ['PYTEST_XDIST_WORKER']}-")
  atexit.register(shutil.rmtree, os.environ["TFDS_DATA_DIR"], ignore_errors=True)

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

# The longest tests (module file, or file::test), longest first, with their rough seconds on 2 cores.
# They run first, in this order, and everything else after them in its usual order: with
# `--dist loadgroup` (see the Makefile) each worker takes the next test when it is free, so the long
# ones overlap and the short ones fill in at the end. Only the order depends on this list: a test
# missing from it still runs.
SLOWEST = {
    "test_miniature_reproduce.py::test_reproduce_runs_every_stage_and_caches_them": 200,
    "test_multihost.py::test_two_processes_match_one_process_on_tiny_tga_and_comparative_loss": 150,
    "test_runtime_without_torch.py": 100,
    "test_notebook.py::test_quickstart_notebook_runs_headless": 90,
    "test_llama_smollm2.py": 90,
    "test_preemption.py": 90,
    "test_tga_train.py::test_two_stages_with_resume_and_bad_records_counted": 80,
    "test_comploss_tasks.py::test_tiny_end_to_end_run_per_task_family": 70,
    "test_tga_train.py::test_guidance_alone_reaches_the_projector_and_raises_cosine": 40,
    "test_comploss_ablation.py": 40,
    "test_comploss_step.py": 30,
}


def _expected_seconds(item) -> float:
  path = item.nodeid.split("/")[-1]
  by_test = path.split("[")[0]
  return SLOWEST.get(by_test, SLOWEST.get(path.split("::")[0], 0))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
  # A stable sort: the tests of one module keep their order (and their module fixtures one setup).
  items.sort(key=lambda item: -_expected_seconds(item))
