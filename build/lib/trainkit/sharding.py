"""Logical axis names -> mesh shardings for params, optimizer state and batches.

Models annotate params with logical names (`nn.with_logical_partitioning(init, ('embed', 'mlp'))`);
a config's rules table maps each logical name to a mesh axis (or a tuple of them, or None):

    rules = (('batch', ('data', 'fsdp')), ('embed', 'fsdp'), ('mlp', 'tensor'), ('vocab', 'tensor'))

Names missing from the table are replicated.
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

# A reasonable default for transformer-style models: batch over data x fsdp, weights split over
# fsdp along the model dimension and over tensor along heads / MLP width / vocabulary.
DEFAULT_RULES: tuple = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("classes", None),
    ("layers", None),
    ("length", None),
    ("head_dim", None),
)


def path_str(path) -> str:
  """'/'-joined key path, e.g. 'params/layers/attn/q/kernel' (the form trainable patterns match)."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def logical_to_shardings(boxed_tree, mesh: jax.sharding.Mesh, rules: Rules):
  """NamedSharding for every leaf of a (possibly abstract) tree of logically boxed params.

  Args:
    boxed_tree: params as `init` returns them, with `nn.LogicallyPartitioned` boxes; unboxed
      leaves are replicated.
  Returns:
    A tree with the structure of `nn.meta.unbox(boxed_tree)` whose leaves are NamedShardings.
  """
  logical_specs = nn.get_partition_spec(boxed_tree)
  return nn.logical_to_mesh_sharding(logical_specs, mesh, tuple(tuple(r) for r in rules))


def batch_sharding(mesh: jax.sharding.Mesh, rules: Rules = DEFAULT_RULES) -> NamedSharding:
  """Sharding of the leading (batch) dimension of every input array; other dims replicated."""
  batch_axes = dict((name, axes) for name, axes in rules).get("batch", ("data", "fsdp"))
  return NamedSharding(mesh, PartitionSpec(batch_axes))


def like_params_shardings(tree, param_shardings, mesh: jax.sharding.Mesh):
  """Shardings for a tree (e.g. optimizer state) whose leaves mirror params.

  Each leaf whose key path ends with a param's key path (and has its shape) takes that param's
  sharding -- Adam's `mu/params/dense/kernel` takes `params/dense/kernel`'s; every other leaf
  (step counters, scalars) is replicated.
  """
  by_path = {}
  for path, sharding in jax.tree_util.tree_leaves_with_path(param_shardings):
    by_path[tuple(path_str([k]) for k in path)] = sharding
  longest = max((len(p) for p in by_path), default=0)
  replicated = NamedSharding(mesh, PartitionSpec())

  def pick(path, leaf):
    keys = tuple(path_str([k]) for k in path)
    for n in range(min(longest, len(keys)), 0, -1):
      sharding = by_path.get(keys[-n:])
      if sharding is not None and _fits(sharding, leaf):
        return sharding
    return replicated

  return jax.tree_util.tree_map_with_path(pick, tree)


def _fits(sharding: NamedSharding, leaf) -> bool:
  ndim = len(getattr(leaf, "shape", ()))
  return len(sharding.spec) <= ndim


def log_shardings(tree, shardings, title: str = "params") -> None:
  """Logs every leaf's path, shape, dtype and PartitionSpec (once, at start-up)."""
  lines = []
  total = 0
  for (path, leaf), sharding in zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(shardings)):
    total += leaf.size
    lines.append(f"  {path_str(path):60s} {str(tuple(leaf.shape)):20s} {str(leaf.dtype):9s} {sharding.spec}")
  logging.info("%s: %d arrays, %s values\n%s", title, len(lines), f"{total:,}", "\n".join(lines))
