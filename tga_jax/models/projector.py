"""The vision -> language projector, from LLaVA's `mm_projector_type`: 'linear' or 'mlp{N}x_gelu'.

    tokens, aux = Projector(ProjectorConfig('mlp2x_gelu', 1024, 4096)).apply({'params': p}, features)

'mlp{N}x_gelu' is Linear(vision_dim -> d), then N-1 times [GELU (exact, erf), Linear(d -> d)]; params are
named linear_1 .. linear_N (llava-hf's `multi_modal_projector.linear_1/2` for N = 2).
"""
from __future__ import annotations

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from tga_jax.models.clip import Dense

_MLP = re.compile(r"mlp(\d+)x_gelu")


def projector_depth(kind: str) -> int:
  """Number of linear layers of a projector type ('linear' -> 1, 'mlp2x_gelu' -> 2)."""
  if kind == "linear":
    return 1
  match = _MLP.fullmatch(kind)
  if not match or int(match.group(1)) < 1:
    raise ValueError(f"projector type {kind!r}: expected 'linear' or 'mlp<N>x_gelu' (e.g. 'mlp2x_gelu')")
  return int(match.group(1))


@dataclasses.dataclass(frozen=True)
class ProjectorConfig:
  kind: str = "mlp2x_gelu"
  in_dim: int = 1024
  out_dim: int = 4096
  use_bias: bool = True
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    projector_depth(self.kind)

  @property
  def depth(self) -> int:
    return projector_depth(self.kind)


class Projector(nn.Module):
  """features float[..., vision_dim] -> (tokens float[..., d], aux {})."""
  config: ProjectorConfig

  @nn.compact
  def __call__(self, x: jax.Array):
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    for i in range(1, cfg.depth + 1):
      if i > 1:
        x = jax.nn.gelu(x, approximate=False)
      last = i == cfg.depth
      # Megatron-style: the hidden width splits over 'mlp' (tensor), the last layer contracts it.
      names = ("mlp" if i > 1 else None, "embed") if last else (None, "mlp")
      x = Dense((x.shape[-1],), (cfg.out_dim,), names, cfg.use_bias, dtype, param_dtype, name=f"linear_{i}")(x)
    return x, {}
