"""LoRA on param trees: low-rank factors for chosen kernels, merged into the weights where they are used.

Model-agnostic: it sees only the param tree ('/'-joined paths, shapes and the logical axis names of
`nn.with_logical_partitioning`), never a module. For a targeted kernel W float[*S, *in, *out] (S: the
stacked-layer axes that `nn.scan` adds, e.g. 'layers'; in: the axes the layer contracts with its input;
out: the rest) it keeps

    A float[*S, *in, r]   uniform(+-1/sqrt(prod(in))), as loralib / PEFT's kaiming_uniform(a=sqrt(5))
    B float[*S, r, *out]  zeros, so the first forward equals the base model's exactly

and the model runs with W_eff = W + (alpha / r) * reshape(A @ B) (one A, B pair per stacked layer).

Config (`config.lora`, an ml_collections ConfigDict any trainer config can carry; plain dicts work too):
    rank=0          0 = LoRA off (`enabled(cfg)` is False)
    alpha=0.0       the scale is alpha / rank; 0 means alpha = rank (scale 1)
    targets=()      regexes, re.fullmatch-ed against '/'-joined param paths of the base params, e.g.
                    'llm/layers/attn/(q|k|v|o)/kernel', 'llm/layers/mlp/(gate|up|down)/kernel'
    input_axes=()   pairs (regex, n), first full match wins: how many leading axes of a matched kernel
                    (after its stacked axes) are input features. LLaMA (tga_jax/models/llama.py):
                    q/k/v [D, heads, head_dim] -> 1, gate/up [D, F] -> 1, down [F, D] -> 1,
                    o [heads, head_dim, D] -> 2
    stack_axes=('layers',)  logical axis names that mark stacked-layer axes (nn.scan's PARTITION_NAME)

A trainer's state params become {'base': params, 'lora': factors}; only 'lora/.*' trains (see
`TRAINABLE`), so trainkit.make_optimizer keeps no optimizer state for the frozen base:

    init_base = lambda r: model.init(r, x)['params']                  # boxed, as create_train_state wants
    init = trainkit.lora.with_lora(init_base, config.lora)            # rng -> {'base', 'lora'}, boxed
    config.optimizer.trainable = trainkit.lora.TRAINABLE              # (+ e.g. 'base/projector/.*')
    tx, schedule, trainable = trainkit.make_optimizer(config.optimizer, steps,
                                                      nn.meta.unbox(jax.eval_shape(init, rng)))
    params = trainkit.lora.attach_lora(loaded, init_base, config.lora, rng) if loaded else None
    state, shardings = trainkit.create_train_state(init, tx, mesh, config.rules, config.seed, params=params)
    step = trainkit.make_train_step(trainkit.lora.lora_loss_fn(loss_fn, config.lora), tx, shardings, ...)
    export = trainkit.lora.merged_params(state.params, config.lora)   # plain params, W_eff in place of W
"""
from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from trainkit.sharding import path_str

RANK_AXIS = "lora_rank"  # the logical name of the rank axis; absent from rules tables -> unsharded
TRAINABLE = ("lora/.*",)  # optimizer.trainable for a {'base', 'lora'} state: the base stays frozen
# Folded into the init rng for the factors, so that switching LoRA on leaves the base init unchanged.
_RNG_TAG = 0x10A


def default_config() -> ml_collections.ConfigDict:
  """`config.lora` with every field at its default (LoRA off). Configs may also write the fields inline."""
  return ml_collections.ConfigDict(dict(rank=0, alpha=0.0, targets=(), input_axes=(), stack_axes=("layers",)))


def enabled(cfg) -> bool:
  """True when `cfg` (a `config.lora`, or None) asks for LoRA (rank > 0)."""
  return cfg is not None and int(cfg.get("rank", 0) or 0) > 0


def scale(cfg) -> float:
  """alpha / rank (alpha defaults to rank, i.e. scale 1)."""
  rank = _rank(cfg)
  return float(cfg.get("alpha", 0.0) or rank) / rank


def _rank(cfg) -> int:
  rank = int(cfg.get("rank", 0) or 0) if cfg is not None else 0
  if rank <= 0:
    raise ValueError(f"lora.rank={rank}: LoRA is off; check trainkit.lora.enabled(config.lora) first")
  return rank


def _pairs(spec) -> list[tuple[str, int]]:
  items = spec.items() if isinstance(spec, (Mapping, ml_collections.ConfigDict)) else spec
  pairs = []
  for item in items:
    try:
      regex, n = item
    except (TypeError, ValueError):
      raise ValueError(f"lora.input_axes: expected (regex, n) pairs, got {item!r}") from None
    pairs.append((str(regex), int(n)))
  return pairs


def _strings(value) -> tuple[str, ...]:
  return (value,) if isinstance(value, str) else tuple(value)


def _compile(pattern: str, field: str) -> re.Pattern:
  try:
    return re.compile(pattern)
  except re.error as err:
    raise ValueError(f"lora.{field}: {pattern!r} is not a valid regex ({err})") from None


def _is_box(x) -> bool:
  return isinstance(x, nn.Partitioned)


def plan(params, cfg) -> dict[str, tuple[int, int]]:
  """{path: (stacked axes, input axes)} for every kernel the config targets, validated.

  Args:
    params: the base params as `init` returns them, boxed with logical names (concrete, or abstract from
      `jax.eval_shape`): the names tell stacked axes from feature axes.
  Raises:
    ValueError naming the regex or path: a target regex that matches no param; a matched param that is
      not boxed, or not a kernel of >= 2 axes after its stacked axes; a matched path with no input_axes
      entry, or one that leaves no input or no output axis.
  """
  _rank(cfg)
  targets = [_compile(t, "targets") for t in _strings(cfg.get("targets", ()))]
  if not targets:
    raise ValueError("lora.targets is empty: name the kernels to adapt, e.g. 'layers/attn/(q|k|v|o)/kernel'")
  axes = [(_compile(r, "input_axes"), n) for r, n in _pairs(cfg.get("input_axes", ()))]
  stack_names = set(_strings(cfg.get("stack_axes", ("layers",))))
  leaves = jax.tree_util.tree_leaves_with_path(params, is_leaf=_is_box)
  paths = [path_str(p) for p, _ in leaves]
  used, found = set(), {}
  for name, leaf in zip(paths, (x for _, x in leaves)):
    hits = [t.pattern for t in targets if t.fullmatch(name)]
    if not hits:
      continue
    used.update(hits)
    if not _is_box(leaf):
      raise ValueError(f"lora: target {name} (matched by {hits[0]!r}) carries no logical axis names; pass the "
                       f"params boxed, as init / jax.eval_shape(init) return them (a model without names can "
                       f"box its leaves as nn.LogicallyPartitioned(x, (None,) * x.ndim))")
    shape, names = tuple(leaf.value.shape), tuple(leaf.names)
    stacked = 0
    while stacked < len(names) and names[stacked] in stack_names:
      stacked += 1
    if len(shape) - stacked < 2:
      raise ValueError(f"lora: target {name} (matched by {hits[0]!r}) has shape {shape} with {stacked} stacked "
                       f"axes {names[:stacked]}: not a kernel of >= 2 feature axes; narrow the regex")
    n_in = next((n for r, n in axes if r.fullmatch(name)), None)
    if n_in is None:
      raise ValueError(f"lora: target {name} {shape} has no lora.input_axes entry; add (regex, n) with n the "
                       f"number of its leading input-feature axes")
    if not 1 <= n_in < len(shape) - stacked:
      raise ValueError(f"lora: input_axes gives {n_in} input axes for {name} {shape} (names {names}, "
                       f"{stacked} stacked): it must leave at least one input and one output axis")
    found[name] = (stacked, n_in)
  unused = [t.pattern for t in targets if t.pattern not in used]
  if unused:
    raise ValueError(f"lora.targets: {unused} match no parameter; paths look like {paths[:6]}")
  return found


def _insert(tree: dict, keys: list[str], value) -> None:
  for key in keys[:-1]:
    tree = tree.setdefault(key, {})
  tree[keys[-1]] = value


def init_lora(params, cfg, rng: jax.Array) -> dict:
  """The LoRA factor tree for `params`, boxed with logical names (works under `jax.eval_shape`).

  Args:
    params: the base params, boxed (see `plan`); only shapes, dtypes and names are read, so abstract
      params give concrete factors.
    rng: PRNG key for the A factors.
  Returns:
    A nested dict mirroring the targeted paths, each kernel path holding {'a': A, 'b': B}:
    A float[*S, *in, r] with names (*S, *in names, 'lora_rank') and B float[*S, r, *out] (zeros) with names
    (*S, 'lora_rank', *out names), in the kernel's dtype and box type.
  """
  rank = _rank(cfg)
  found = plan(params, cfg)
  boxes = {path_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(params, is_leaf=_is_box)}
  names_sorted = sorted(found)
  a_shapes = []
  for name in names_sorted:
    stacked, n_in = found[name]
    shape = tuple(boxes[name].value.shape)
    a_shapes.append(shape[:stacked + n_in] + (rank,))
  # One draw for all A factors, split afterwards: each distinct random shape costs a (slow) threefry
  # compile when this runs eagerly, and one op keeps the traced init small.
  sizes = [math.prod(s) for s in a_shapes]
  noise = jax.random.uniform(rng, (sum(sizes),), jnp.float32, -1.0, 1.0)
  offsets = [0]
  for size in sizes:
    offsets.append(offsets[-1] + size)
  tree: dict = {}
  for i, name in enumerate(names_sorted):
    stacked, n_in = found[name]
    box = boxes[name]
    shape, names, dtype = tuple(box.value.shape), tuple(box.names), box.value.dtype
    out_shape = shape[stacked + n_in:]
    bound = 1.0 / math.sqrt(math.prod(shape[stacked:stacked + n_in]))
    a = (bound * noise[offsets[i]:offsets[i + 1]]).reshape(a_shapes[i]).astype(dtype)
    b = jnp.zeros(shape[:stacked] + (rank,) + out_shape, dtype)
    # Partitioned names are mesh axes: the rank axis is unsharded there too.
    rank_name = RANK_AXIS if isinstance(box, nn.LogicallyPartitioned) else None
    a_names = names[:stacked + n_in] + (rank_name,)
    b_names = names[:stacked] + (rank_name,) + names[stacked + n_in:]
    _insert(tree, name.split("/"), {"a": box.replace(value=a, names=a_names),
                                    "b": box.replace(value=b, names=b_names)})
  return tree


def _factor_groups(lora) -> dict[str, dict[str, jax.Array]]:
  groups: dict[str, dict] = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(lora):
    *prefix, last = path_str(path).split("/")
    groups.setdefault("/".join(prefix), {})[last] = leaf
  for name, group in groups.items():
    if set(group) != {"a", "b"}:
      raise ValueError(f"lora factors under {name}: expected exactly 'a' and 'b', got {sorted(group)}")
  return groups


def delta(a: jax.Array, b: jax.Array, kernel_shape: tuple[int, ...], name: str = "kernel") -> jax.Array:
  """float32[kernel_shape]: A @ B per stacked layer, reshaped to the kernel (no scale applied).

  Args:
    a: float[*S, *in, r]; b: float[*S, r, *out]; kernel_shape: (*S, *in, *out). The number of stacked
      axes S follows from the three ranks, so no config is needed here.
  """
  kernel_shape = tuple(kernel_shape)
  stacked = a.ndim + b.ndim - 2 - len(kernel_shape)
  rank = a.shape[-1]
  ok = (stacked >= 0 and a.shape[:stacked] == b.shape[:stacked] == kernel_shape[:stacked]
        and b.shape[stacked] == rank and a.shape[stacked:-1] + b.shape[stacked + 1:] == kernel_shape[stacked:])
  if not ok:
    raise ValueError(f"lora factors for {name}: a {a.shape} and b {b.shape} do not fit the kernel {kernel_shape}")
  lead = kernel_shape[:stacked]
  product = jnp.matmul(a.astype(jnp.float32).reshape(lead + (-1, rank)),
                       b.astype(jnp.float32).reshape(lead + (rank, -1)), precision=jax.lax.Precision.HIGHEST)
  return product.reshape(kernel_shape)


def merge(params, lora, cfg):
  """Plain params with W_eff = W + (alpha / rank) * A @ B in place of every adapted kernel.

  Used inside the loss (differentiable in A and B) and for export. The sum is taken in float32 and cast
  back to W's dtype, so B = 0 returns W bit for bit.
  Args:
    params: the base params (arrays or tracers); lora: the factor tree of `init_lora`. Boxes are dropped:
      the result is plain.
  """
  s = scale(cfg)
  params, lora = nn.meta.unbox(params), nn.meta.unbox(lora)  # no-ops on plain arrays
  groups = _factor_groups(lora)
  seen = set()

  def adapt(path, w):
    name = path_str(path)
    group = groups.get(name)
    if group is None:
      return w
    seen.add(name)
    d = delta(group["a"], group["b"], w.shape, name)
    return (w.astype(jnp.float32) + s * d).astype(w.dtype)

  merged = jax.tree_util.tree_map_with_path(adapt, params)
  missing = sorted(set(groups) - seen)
  if missing:
    raise ValueError(f"lora factors for {missing} have no matching param")
  return merged


def merged_params(state_params, cfg):
  """{'base': params, 'lora': factors} -> plain params with the factors merged (what a trainer exports)."""
  return merge(state_params["base"], state_params["lora"], cfg)


def with_lora(init_params: Callable[[jax.Array], object], cfg) -> Callable[[jax.Array], dict]:
  """rng -> {'base': init_params(rng), 'lora': init_lora(...)}: the `init_params` of create_train_state.

  The base is initialised with the same rng as without LoRA; the factors with a key folded from it.
  """
  _rank(cfg)

  def init(rng):
    base = init_params(rng)
    return {"base": base, "lora": init_lora(base, cfg, jax.random.fold_in(rng, _RNG_TAG))}

  return init


def attach_lora(base_params, init_params: Callable[[jax.Array], object], cfg, rng: jax.Array) -> dict:
  """{'base': base_params, 'lora': fresh unboxed factors}: the `params=` of create_train_state for loaded
  weights. `init_params` (rng -> boxed base params) is only traced (`jax.eval_shape`) for shapes and names;
  the factors are the ones `with_lora(init_params, cfg)(rng)` would draw."""
  abstract = jax.eval_shape(init_params, rng)
  lora = init_lora(abstract, cfg, jax.random.fold_in(rng, _RNG_TAG))
  return {"base": base_params, "lora": nn.meta.unbox(lora)}


def lora_loss_fn(loss_fn: Callable, cfg) -> Callable:
  """Wraps a trainkit loss_fn over plain params into one over {'base', 'lora'} params.

  The wrapped function merges the factors (`merge`) and calls `loss_fn(merged, batch, rng[, step=])`;
  it takes `step` exactly when `loss_fn` does, so make_train_step still passes it.
  """
  _rank(cfg)
  if "step" in inspect.signature(loss_fn).parameters:
    def with_step(params, batch, rng, step):
      return loss_fn(merged_params(params, cfg), batch, rng, step=step)
    return with_step

  def without_step(params, batch, rng):
    return loss_fn(merged_params(params, cfg), batch, rng)
  return without_step
