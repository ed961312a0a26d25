"""What a train step costs in FLOPs, counted on its jaxpr, and the rates the loop logs from it.

    flops = step_flops(train_step, state, batch)          # once, before the first step runs
    rates = flop_rates(flops, steps_per_s, peak_total)    # per log interval: tflops_per_s, mfu

The count is of matmuls (dot_general, convolutions) in the traced step, the whole global batch: 2 FLOPs
per multiply-add, every scanned layer and every rematerialised recomputation included -- the work the
hardware does, so MFU here is hardware FLOPs over peak. The planner (trainkit/plan.py) counts the same way.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable

from absl import logging


def _sub_jaxprs(value):
  """The jaxprs an equation's parameter holds (a scan's body, a pjit's or remat's jaxpr, cond branches)."""
  if hasattr(value, "eqns"):
    yield value
  elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
    yield value.jaxpr
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _sub_jaxprs(v)


def matmul_flops(jaxpr) -> int:
  """FLOPs of every dot_general and convolution in a jaxpr, for the whole (global) batch: 2 per
  multiply-add. A scan body counts `length` times; the larger branch of a cond counts; a while body counts
  once (its trip count is not in the jaxpr); rematerialised computations count each time they run."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      contract = math.prod(lhs[d] for d in lhs_contract)
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * contract
      continue
    if name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape
      out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * (math.prod(rhs) // out_features)
      continue
    subs = [j for v in eqn.params.values() for j in _sub_jaxprs(v)]
    if name == "cond":
      total += max((matmul_flops(j) for j in subs), default=0)
    else:
      times = int(eqn.params.get("length", 1)) if name == "scan" else 1
      total += times * sum(matmul_flops(j) for j in subs)
  return total


def abstract(tree):
  """The tree's arrays as ShapeDtypeStructs (shape, dtype, sharding): tracing on them allocates nothing
  and reads no buffer, so it works on a state about to be donated."""
  import jax

  def shape_of(x):
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
      return x
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))

  return jax.tree.map(shape_of, tree)


def step_flops(train_step: Callable, state, batch) -> int | None:
  """FLOPs of one call of `train_step(state, batch)` (the global batch), counted on its jaxpr.

  state / batch: the arrays of the first step (or their ShapeDtypeStructs); only shapes, dtypes and
  shardings are read. The step is traced, never lowered or compiled: a step from make_train_step through
  its own `.trace` (under its mesh and logical rules), any other function through jax.make_jaxpr.
  Returns None, after a warning, when the step cannot be traced that way or holds no matmul: the run goes
  on without FLOP rates.
  """
  import jax

  start = time.perf_counter()
  try:
    state, batch = abstract(state), abstract(batch)
    if hasattr(train_step, "trace"):
      jaxpr = train_step.trace(state, batch).jaxpr
    else:
      jaxpr = jax.make_jaxpr(train_step)(state, batch)
    flops = matmul_flops(jaxpr)
  except Exception as e:  # noqa: BLE001 (a count that fails must never stop a run)
    logging.warning("could not count the train step's FLOPs (%s: %s); tflops_per_s and mfu are not logged",
                    type(e).__name__, str(e).splitlines()[0][:300] if str(e) else "")
    return None
  if flops <= 0:
    logging.warning("the train step's jaxpr holds no matmul; tflops_per_s and mfu are not logged")
    return None
  logging.info("train step: %.4g FLOPs per step (matmuls in its jaxpr, global batch; traced in %.2f s)",
               flops, time.perf_counter() - start)
  return flops


def flop_rates(flops_per_step: int | None, steps_per_s: float | None, peak_total: float | None) -> dict:
  """The achieved rate over an interval and its share of the peak.

  flops_per_step: from step_flops (None: nothing to report); steps_per_s: the interval's steps per
  second (the window tokens_per_s uses); peak_total: FLOP/s of all the run's devices together (peak per
  device x devices), None when unknown.
  Returns {'tflops_per_s': 1e12 FLOP/s achieved, 'mfu': achieved / peak, a fraction}, each only when
  computable.
  """
  if not flops_per_step or not steps_per_s:
    return {}
  achieved = flops_per_step * steps_per_s
  rates = {"tflops_per_s": achieved / 1e12}
  if peak_total:
    rates["mfu"] = achieved / peak_total
  return rates
