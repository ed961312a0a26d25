"""A dense layer's contraction written the way XLA's backward pass runs it fastest.

    y = trainkit.contract_last(x, kernel, n_in)   # x float[..., *in] @ kernel float[*in, *out] -> float[..., *out]

It computes `jnp.tensordot(x, kernel, n_in)` as one 2-D matmul [N, prod(in)] @ [prod(in), prod(out)]. The
values are the same; what changes is the backward pass. The kernel's gradient is then the 2-D x^T @ dy,
and the CPU matmul reads both operands in place. The tensordot form contracts several leading axes
(batch and length) for that gradient. XLA then transposes the activations and their gradients into
canonical order first, and fuses the elementwise backward (e.g. SiLU's) into those strided copies. With
this form and head-major attention, the SmolLM2-135M train step on 2 CPU cores went from 89.3 to 110.5
tokens/s (bench/results/cpu_llm.txt). The reshapes merge the batch axis with the length axis and the
kernel's input (and output) axes with each other; the tests compile it on sharded meshes.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def contract_last(x: jax.Array, kernel: jax.Array, n_in: int) -> jax.Array:
  """x float[..., *in] (the last `n_in` axes), kernel float[*in, *out] -> float[..., *out], in x's dtype
  promoted with the kernel's (cast both first to choose the matmul dtype)."""
  lead, inner = x.shape[:x.ndim - n_in], x.shape[x.ndim - n_in:]
  if kernel.shape[:n_in] != inner:
    raise ValueError(f"kernel shape {kernel.shape} does not start with x's last {n_in} axes {inner}")
  out = kernel.shape[n_in:]
  y = jnp.dot(x.reshape(-1, math.prod(inner)), kernel.reshape(math.prod(inner), math.prod(out)))
  return y.reshape(lead + out)
