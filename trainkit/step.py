"""The jitted, donated train step: gradient accumulation, masked updates, metrics.

A trainer supplies only `loss_fn(params, batch, rng) -> (loss, metrics)`, where `loss` is a scalar
mean over the (micro)batch and `metrics` a dict of scalars to average and log. A loss_fn with a
fourth parameter named `step` also receives the (traced) step number, for loss-weight schedules.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from trainkit.state import TrainState

LossFn = Callable[[object, dict, jax.Array], tuple[jax.Array, dict]]


def split_microbatches(batch, num_micro: int):
  """[B, ...] -> [num_micro, B/num_micro, ...] taking every num_micro-th example.

  Strided (not contiguous) so that each microbatch stays spread over all batch shards.
  """
  def split(x):
    if x.shape[0] % num_micro:
      raise ValueError(f"batch size {x.shape[0]} is not divisible by grad_accum_steps={num_micro}")
    x = x.reshape((x.shape[0] // num_micro, num_micro) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, batch)


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    state_shardings: TrainState,
    batch_sharding: NamedSharding,
    *,
    mesh: jax.sharding.Mesh,
    rules,
    schedule: optax.Schedule | None = None,
    trainable=None,
    grad_accum_steps: int = 1,
):
  """Returns `step(state, batch) -> (state, metrics)`, jitted with the state donated.

  Args:
    trainable: bool tree like params (from `make_optimizer`); frozen params are wrapped in
      stop_gradient, so no backward pass runs into them and they do not count in grad_norm.
    grad_accum_steps: the global batch is split into this many microbatches, scanned, and the
      gradients averaged (equal to one big batch for mean losses).
  Metrics: loss, grad_norm (trainable params, before clipping), learning_rate, and loss_fn's own.
  """
  takes_step = "step" in inspect.signature(loss_fn).parameters

  def compute_grads(params, batch, rng, step):
    def frozen_aware_loss(p, mb, r):
      if trainable is not None:
        p = jax.tree.map(lambda x, t: x if t else jax.lax.stop_gradient(x), p, trainable)
      return loss_fn(p, mb, r, step=step) if takes_step else loss_fn(p, mb, r)

    grad_fn = jax.value_and_grad(frozen_aware_loss, has_aux=True)
    if grad_accum_steps == 1:
      (loss, metrics), grads = grad_fn(params, batch, rng)
      return loss, metrics, grads

    micro = split_microbatches(batch, grad_accum_steps)

    def body(carry, inputs):
      index, mb = inputs
      mb = jax.lax.with_sharding_constraint(mb, batch_sharding)
      (loss, metrics), grads = grad_fn(params, mb, jax.random.fold_in(rng, index))
      carry = jax.tree.map(jnp.add, carry, (loss, metrics, grads))
      return carry, None

    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), rng))
    (loss, metrics), grads = zeros
    total, _ = jax.lax.scan(body, (loss, metrics, grads), (jnp.arange(grad_accum_steps), micro))
    return jax.tree.map(lambda x: x / grad_accum_steps, total)

  def step(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    loss, metrics, grads = compute_grads(state.params, batch, rng, state.step)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
    if schedule is not None:
      metrics["learning_rate"] = schedule(state.step)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  replicated = NamedSharding(mesh, PartitionSpec())
  jitted = jax.jit(step, in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, replicated), donate_argnums=0)
  logical_rules = tuple(tuple(r) for r in rules)

  @contextlib.contextmanager
  def context():
    # The mesh and the rules must be in context when the model traces its logical constraints.
    with jax.set_mesh(mesh), nn.logical_axis_rules(logical_rules):
      yield

  def run(state: TrainState, batch):
    with context():
      return jitted(state, batch)

  def trace(state, batch):
    """The step traced on (possibly abstract) arguments: `.jaxpr`, then `.lower().compile()` under
    `run.context()` -- ahead-of-time compilation (trainkit/plan.py)."""
    with context():
      return jitted.trace(state, batch)

  run.jitted = jitted  # for .lower()/.cost_analysis() in benchmarks
  run.context = context
  run.trace = trace
  return run


@dataclasses.dataclass
class PlannedStep:
  """A trainer's real train step with abstract arguments, for ahead-of-time compilation (trainkit/plan.py).

  step: what make_train_step returned; state: the TrainState as ShapeDtypeStructs with their shardings
  (trainkit.state.abstract_train_state); batch: {name: ShapeDtypeStruct[global_batch, ...]} with the batch
  sharding, the arrays the trainer's data pipeline yields; info: facts to report (param counts, tokens
  per example, the model's name).
  """
  step: Callable
  state: TrainState
  batch: dict
  info: dict = dataclasses.field(default_factory=dict)
