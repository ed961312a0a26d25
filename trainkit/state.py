"""The train state, created already sharded.

Params are never materialised on one device first: `jax.eval_shape` gives the abstract boxed
params, the rules give their shardings, and `jax.jit(init, out_shardings=...)` writes each shard
where it lives. Externally loaded params (HF safetensors, GGUF) are placed with the same shardings.
"""
from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from trainkit import sharding as sharding_lib


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs besides the data iterator. Plain arrays only (Orbax-friendly).

  step: int32[]; params: the model's param tree; opt_state: optax state (no entries for frozen
  params); rng: uint32[2], folded with the step inside the train step.
  """
  step: jax.Array
  params: object
  opt_state: object
  rng: jax.Array


def create_train_state(
    init_params: Callable[[jax.Array], object],
    tx: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    rules,
    seed: int,
    params=None,
) -> tuple[TrainState, TrainState]:
  """Returns (state, state_shardings); logs every param's path, shape and sharding.

  Args:
    init_params: rng -> params with `nn.LogicallyPartitioned` boxes (e.g. `lambda r:
      model.init(r, x)['params']`). Always used for the shapes and shardings.
    params: optional loaded params (unboxed, host or device arrays) with the same structure; they
      replace the random init and are placed with the rules' shardings.
  """
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed))
  abstract, shardings = abstract_train_state(init_params, tx, mesh, rules)
  param_shardings, abstract_params = shardings.params, abstract.params

  if params is None:
    def init(rng):
      p = nn.meta.unbox(init_params(rng))
      return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p), rng=state_rng)
    state = jax.jit(init, out_shardings=shardings)(init_rng)
  else:
    check_same_structure(abstract_params, params)
    cast = jax.tree.map(lambda x, a: x.astype(a.dtype), params, abstract_params)
    placed = jax.device_put(cast, param_shardings)

    def init_from(p):
      return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p), rng=state_rng)
    state = jax.jit(init_from, out_shardings=shardings, donate_argnums=0)(placed)
  sharding_lib.log_shardings(state.params, param_shardings)
  return state, shardings


def abstract_train_state(init_params: Callable[[jax.Array], object], tx: optax.GradientTransformation,
                         mesh: jax.sharding.Mesh, rules) -> tuple[TrainState, TrainState]:
  """(state, state_shardings) as create_train_state makes them, with nothing allocated: every leaf of
  `state` is a jax.ShapeDtypeStruct carrying its sharding (what ahead-of-time compilation lowers
  against, trainkit/plan.py)."""
  boxed = jax.eval_shape(init_params, jax.ShapeDtypeStruct((2,), jnp.uint32))
  param_shardings = sharding_lib.logical_to_shardings(boxed, mesh, rules)
  params = nn.meta.unbox(boxed)
  opt_state = jax.eval_shape(tx.init, params)
  opt_shardings = sharding_lib.like_params_shardings(opt_state, param_shardings, mesh)
  replicated = NamedSharding(mesh, PartitionSpec())
  shardings = TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings, rng=replicated)
  state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params, opt_state=opt_state,
                     rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
  return abstract_with_shardings(state, shardings), shardings


def check_same_structure(expected, got) -> None:
  """Raises one error listing every missing, unexpected or mis-shaped param."""
  want = {sharding_lib.path_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(expected)}
  have = {sharding_lib.path_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(got)}
  problems = [f"missing: {k} {tuple(want[k].shape)}" for k in sorted(set(want) - set(have))]
  problems += [f"unexpected: {k} {tuple(have[k].shape)}" for k in sorted(set(have) - set(want))]
  problems += [f"shape: {k} is {tuple(have[k].shape)}, expected {tuple(want[k].shape)}"
               for k in sorted(set(want) & set(have)) if tuple(want[k].shape) != tuple(have[k].shape)]
  if problems:
    raise ValueError("loaded params do not match the model:\n  " + "\n  ".join(problems))


def abstract_with_shardings(state, shardings):
  """ShapeDtypeStructs carrying shardings: the target Orbax restores into."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
