"""The full model and its c ablated submodels as one `jax.vmap` inside one loss function.

    loss_fn = make_loss_fn(per_example_loss, CmpSettings(n_drop=2))
    step = trainkit.make_train_step(loss_fn, ...)   # one jitted, sharded step for all c+1 passes

`per_example_loss(params, inputs, rng, dropout_power) -> float[B]` (or float[B, K] for K losses
compared separately, e.g. span start and end). Params and the rng are broadcast over submodels, so
every submodel draws the same dropout uniforms: the masks nest (see ablation.py).

Batches: inputs that differ per cropped view live under batch['views'] with shape [B, V, ...]
(view 0 = the full input); everything else is shared by all submodels.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from comploss_jax.ablation import submodel_schedule
from comploss_jax.loss import comparative_loss, primary_loss, regularised_loss


@dataclasses.dataclass(frozen=True)
class CmpSettings:
  """How the chain is built and ranked (spec §2-3). n_drop = n_crop = 0 is plain training."""
  n_drop: int = 0
  n_crop: int = 0
  target: str = "ultra"
  temperature: float = 1.0
  ranking: str = "hinge"
  mode: str = "cmp"  # 'cmp': L_cmp alone; 'regulariser': primary + weight * ranking
  primary: str = "max"
  weight: float = 1.0
  skip_above: float | None = None
  remat: bool = False  # recompute each submodel's activations in the backward pass
  vmap: bool = True  # False: a Python loop over submodels (the reference's sequential way)

  @property
  def num_submodels(self) -> int:
    return 1 + self.n_drop + self.n_crop


def _select_views(batch, views):
  """batch['views'] leaves [B, V, ...] -> [B, c+1, ...] (column k = view of submodel k)."""
  index = jnp.asarray(views)
  return jax.tree.map(lambda x: jnp.take(x, index, axis=1), batch["views"])


def submodel_losses(per_example_loss: Callable, params, batch, rng, settings: CmpSettings) -> jax.Array:
  """Task losses of the chain: float[B, c+1] (or [B, c+1, K])."""
  schedule = submodel_schedule(settings.n_drop, settings.n_crop)
  views = [v for v, _ in schedule]
  powers = jnp.asarray([p for _, p in schedule], jnp.float32)
  shared = {k: v for k, v in batch.items() if k != "views"}
  fn = jax.checkpoint(per_example_loss) if settings.remat else per_example_loss

  if "views" in batch:
    viewed = _select_views(batch, views)
  else:
    if settings.n_crop:
      raise ValueError(f"n_crop={settings.n_crop} needs batch['views'] with [B, V, ...] inputs")
    viewed = None

  def one(view_inputs, power):
    inputs = dict(shared, **view_inputs) if view_inputs is not None else shared
    return fn(params, inputs, rng, power)

  if settings.vmap:
    return jax.vmap(one, in_axes=(1 if viewed is not None else None, 0), out_axes=1)(viewed, powers)
  columns = []
  for k in range(len(schedule)):
    view_k = jax.tree.map(lambda x: x[:, k], viewed) if viewed is not None else None
    columns.append(one(view_k, powers[k]))
  return jnp.stack(columns, axis=1)


def combine(losses: jax.Array, settings: CmpSettings) -> jax.Array:
  """float[B, c+1(, K)] -> the training loss.

  'cmp': each of the K columns ranked separately, then averaged. 'regulariser': the primary loss
  of the K-averaged losses plus the K-averaged ranking term (regularised_loss), as the reference.
  """
  if losses.ndim == 2:
    losses = losses[..., None]
  if settings.num_submodels == 1:
    return losses[:, 0].mean()
  if settings.mode == "cmp":
    per_k = [comparative_loss(losses[..., k], settings.target, settings.temperature, settings.ranking)
             for k in range(losses.shape[-1])]
    return sum(per_k) / len(per_k)
  if settings.mode == "regulariser":
    return regularised_loss(losses, settings.primary, settings.weight, settings.temperature, settings.ranking,
                            settings.skip_above)
  raise ValueError(f"mode={settings.mode!r}: expected 'cmp' or 'regulariser'")


def make_loss_fn(per_example_loss: Callable, settings: CmpSettings):
  """A trainkit loss_fn(params, batch, rng) -> (loss, metrics) running the whole chain.

  metrics: 'task_loss/k' (batch mean of submodel k's task loss) and 'primary'.
  """
  def loss_fn(params, batch, rng):
    losses = submodel_losses(per_example_loss, params, batch, rng, settings)
    flat = losses.mean(axis=2) if losses.ndim == 3 else losses
    metrics = {f"task_loss/{k}": flat[:, k].mean() for k in range(flat.shape[1])}
    metrics["primary"] = primary_loss(flat, settings.primary).mean()
    return combine(losses, settings), metrics
  return loss_fn
