"""The full model and its c ablated submodels as one `jax.vmap` inside one loss function.

    loss_fn = make_loss_fn(per_example_loss, CmpSettings(n_drop=2))
    step = trainkit.make_train_step(loss_fn, ...)   # one jitted, sharded step for all c+1 passes

`per_example_loss(params, inputs, rng, dropout_power) -> float[B]` (or float[B, K] for K losses
compared separately, e.g. span start and end), or a pair `(losses, valid)` with valid bool[B] when an
input may lack a target (a HotpotQA view whose answer lies outside its window): that submodel's
entry is then left out of the ranking and of the primary loss (loss.py, "Missing targets"), never
ranked as if its (zero) loss were real. Params and the rng are broadcast over submodels, so every
submodel draws the same dropout uniforms: the masks nest (see ablation.py).

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
  """Task losses of the chain: float[B, c+1] (or [B, c+1, K]); entries without a target as the
  per-example loss gives them (see `submodel_losses_and_valid` for which those are)."""
  return submodel_losses_and_valid(per_example_loss, params, batch, rng, settings)[0]


def submodel_losses_and_valid(per_example_loss: Callable, params, batch, rng,
                              settings: CmpSettings) -> tuple[jax.Array, jax.Array | None]:
  """(losses float[B, c+1(, K)], valid bool[B, c+1] or None when the per-example loss gives none)."""
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
    out = fn(params, inputs, rng, power)
    return out if isinstance(out, tuple) else (out, None)

  if settings.vmap:
    return jax.vmap(one, in_axes=(1 if viewed is not None else None, 0), out_axes=1)(viewed, powers)
  columns = []
  for k in range(len(schedule)):
    view_k = jax.tree.map(lambda x: x[:, k], viewed) if viewed is not None else None
    columns.append(one(view_k, powers[k]))
  return jax.tree.map(lambda *xs: jnp.stack(xs, axis=1), *columns)


def combine(losses: jax.Array, settings: CmpSettings, valid: jax.Array | None = None) -> jax.Array:
  """float[B, c+1(, K)] -> the training loss.

  'cmp': each of the K columns ranked separately, then averaged. 'regulariser': the primary loss
  of the K-averaged losses plus the K-averaged ranking term (regularised_loss), as the reference.
  valid: bool[B, c+1] or None; entries without a target count 0 everywhere (plain training too:
  the batch mean stays over all B examples).
  """
  if losses.ndim == 2:
    losses = losses[..., None]
  if settings.num_submodels == 1:
    column = losses[:, 0]
    if valid is not None:
      column = jnp.where(valid[:, :1], column, 0.0)
    return column.mean()
  if settings.mode == "cmp":
    per_k = [comparative_loss(losses[..., k], settings.target, settings.temperature, settings.ranking, valid)
             for k in range(losses.shape[-1])]
    return sum(per_k) / len(per_k)
  if settings.mode == "regulariser":
    return regularised_loss(losses, settings.primary, settings.weight, settings.temperature, settings.ranking,
                            settings.skip_above, valid)
  raise ValueError(f"mode={settings.mode!r}: expected 'cmp' or 'regulariser'")


def make_loss_fn(per_example_loss: Callable, settings: CmpSettings):
  """A trainkit loss_fn(params, batch, rng) -> (loss, metrics) running the whole chain.

  metrics: 'task_loss/k' (batch mean of submodel k's task loss) and 'primary'. When the per-example
  loss gives validity: 'task_loss/k' is the mean over the examples with a target in that submodel's
  input, and 'has_target/k' the fraction of examples with one.
  """
  def loss_fn(params, batch, rng):
    losses, valid = submodel_losses_and_valid(per_example_loss, params, batch, rng, settings)
    flat = losses.mean(axis=2) if losses.ndim == 3 else losses
    if valid is None:
      metrics = {f"task_loss/{k}": flat[:, k].mean() for k in range(flat.shape[1])}
    else:
      counts = valid.sum(axis=0)
      sums = jnp.where(valid, flat, 0.0).sum(axis=0)
      metrics = {f"task_loss/{k}": sums[k] / jnp.maximum(counts[k], 1) for k in range(flat.shape[1])}
      metrics.update({f"has_target/{k}": valid[:, k].mean() for k in range(flat.shape[1])})
    metrics["primary"] = primary_loss(flat, settings.primary, valid).mean()
    return combine(losses, settings, valid), metrics
  return loss_fn
