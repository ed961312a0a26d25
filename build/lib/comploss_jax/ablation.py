"""Nested ablation: dropout with a traced rate and a shared draw, cropped views, the submodel schedule.

Submodel k of the chain runs every dropout site at p_k = 1 - (1 - p)^k (the "dropout power" k).
Every submodel draws the SAME uniforms u at a site (the rng is not split over submodels) and keeps
a unit when u >= p_k. Since p_k grows with k, submodel k keeps a subset of what submodel k-1 keeps,
and k = 0 (p_0 = 0) keeps everything unscaled: exactly the deterministic model.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def powered_rate(rate: float, power) -> jax.Array:
  """p_k = 1 - (1 - p)^k; `power` may be traced (vmapped over submodels)."""
  return 1.0 - (1.0 - rate) ** jnp.asarray(power, jnp.float32)


class NestedDropout(nn.Module):
  """Dropout at rate `1 - (1 - rate)^power`, with the uniform draw independent of `power`.

  Call: x float[...] -> float[...]. Needs the 'dropout' rng unless deterministic.
  power: int or traced scalar; 1 is ordinary dropout, 0 the identity.
  """
  rate: float

  @nn.compact
  def __call__(self, x, *, deterministic: bool, power=1):
    if deterministic or self.rate == 0.0:
      return x
    p = powered_rate(self.rate, power)
    u = jax.random.uniform(self.make_rng("dropout"), x.shape, jnp.float32)
    keep = u >= p
    # p < 1 always for rate < 1; the where guards the scale when the rate itself is 1.
    scale = jnp.where(p < 1.0, 1.0 / (1.0 - p), 0.0)
    # The scale stays float32 and the product is rounded once to x's dtype (as torch's dropout
    # kernels do): rounded to bf16, 1/(1-p) itself is off by up to 0.2% (1/0.9 -> 1.109375), a
    # systematic bias of the activations' scale that differs from submodel to submodel.
    scaled = (x.astype(jnp.float32) * scale).astype(x.dtype)
    return jnp.where(keep, scaled, jnp.zeros_like(x))


def submodel_schedule(n_drop: int, n_crop: int) -> list[tuple[int, int]]:
  """[(view, dropout_power)] for the full model and its c = n_drop + n_crop ablated submodels.

  Crop steps come first and the two kinds interleave (odd steps crop while crops remain, even steps
  add a dropout power); both counters are cumulative, as in the paper's reference code. The full
  model runs dropout-free when any dropout submodel exists, and with ordinary dropout (power 1) in
  crop-only chains -- the reference silently ran crop-only training without dropout (a bug).
  """
  if n_drop < 0 or n_crop < 0:
    raise ValueError(f"n_drop={n_drop}, n_crop={n_crop}: both must be >= 0")
  base_power = 0 if n_drop > 0 else 1
  schedule = [(0, base_power)]
  drops = crops = 0
  for i in range(n_drop + n_crop):
    if crops < n_crop and (i % 2 == 0 or drops >= n_drop):
      crops += 1
    else:
      drops += 1
    schedule.append((crops, drops if n_drop > 0 else base_power))
  return schedule


def submodel_batch_size(batch_size: int, num_submodels: int, keep_compute_fixed: bool) -> int:
  """Examples per step. LoL style (`keep_compute_fixed`) divides the batch by the c+1 submodels, so
  a comparative step costs about what a plain step on `batch_size` examples costs."""
  if not keep_compute_fixed:
    return batch_size
  if batch_size % num_submodels:
    raise ValueError(f"batch size {batch_size} is not divisible by the {num_submodels} submodels; "
                     f"choose a multiple of {num_submodels} to keep compute fixed")
  return batch_size // num_submodels
