"""Test environment: offline hub, CPU only, 8 simulated devices -- set before JAX touches a backend.

Compiled programs go to one persistent cache for the session (JAX_COMPILATION_CACHE_DIR, inherited by
the subprocesses tests start): many tests build the same tiny models, and on 2 cores compiling them
is most of the suite's time. The xdist workers share it too.
"""
import atexit
import os
import shutil
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="jax-test-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
# Cache every program that takes a noticeable time to compile (the default skips those under 1 s).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
# `make test` runs two pytest-xdist workers: each prepares the tfds datasets it needs (BBC News) in a
# folder of its own, so two workers never build the same dataset into one folder at once.
if os.environ.get("PYTEST_XDIST_WORKER") and "TFDS_DATA_DIR" not in os.environ:
  os.environ["TFDS_DATA_DIR"] = tempfile.mkdtemp(prefix=f"tfds-{os.environ['PYTEST_XDIST_WORKER']}-")
  atexit.register(shutil.rmtree, os.environ["TFDS_DATA_DIR"], ignore_errors=True)

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
