"""Shared benchmark helpers: timing, the measured matmul peak, XLA cost and memory figures."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def timeit(fn, *, repeats: int = 5, warmup: int = 1) -> float:
  """Median seconds of fn() (which must block until its result is ready)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return sorted(times)[len(times) // 2]


def matmul_peak_flops(n: int = 2048) -> float:
  """FLOP/s of an f32 n x n matmul on the default device: the physical limit MFU is quoted against."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  seconds = timeit(lambda: f(a).block_until_ready(), repeats=5)
  return 2 * n ** 3 / seconds


def compiled_peak_bytes(jitted, *args) -> int:
  """XLA's peak memory of one call: arguments + outputs + temporaries (donated buffers counted once).

  (XLA's cost_analysis FLOPs are not used: they count a scanned layer's while-loop body once.)
  """
  mem = jitted.lower(*args).compile().memory_analysis()
  return int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
             - mem.alias_size_in_bytes)


def encoder_forward_flops(cfg, batch: int, length: int) -> float:
  """Matmul FLOPs of one BERT-style encoder forward: projections, FFN and attention scores/context."""
  d, f, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
  per_token = 2 * (4 * d * d + 2 * d * f) + 2 * 2 * length * d  # weights + (QK^T, PV)
  return float(layers * per_token * batch * length)


def torch_device() -> str:
  """'cuda' when JAX runs on a GPU and torch sees one (then both stacks share the card), else 'cpu'."""
  import torch
  return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
