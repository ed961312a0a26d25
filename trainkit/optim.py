"""Optimizer, learning-rate schedule and trainable-parameter masks from config.

Config (`config.optimizer`):
    name='adamw', learning_rate, weight_decay, b1, b2, eps,
    schedule='cosine' | 'linear' | 'constant' | 'wsd', warmup_steps (or warmup_fraction), final_lr_fraction,
    decay_fraction=0.2  'wsd' (warmup-stable-decay): the peak rate, then a linear decay to the final rate over
                        this fraction of the schedule's steps (its last ones).
    schedule_steps=0    the schedule's length when it is not the run's total_steps (0): a run stopped
                        early and resumed later with a larger total_steps follows one schedule.
    clip_norm (global-norm clipping; 0 disables),
    trainable=('.*',)   regexes matched (re.fullmatch) against '/'-joined param paths.
    lr_groups=()        ((regex, scale), ...): params whose path matches a regex (the first that does)
                        train at `scale` x the schedule's rate, as a torch param group with its own lr
                        (e.g. (('lora/.*', 0.02),): the projector at learning_rate, LoRA at 2% of it).
"""
from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from trainkit.sharding import path_str


def make_schedule(opt_cfg, total_steps: int) -> optax.Schedule:
  """Warmup (linear from 0) followed by cosine, linear decay, a constant, or a constant then a linear decay
  ('wsd'), over `schedule_steps` steps (when set) or total_steps."""
  total_steps = int(opt_cfg.get("schedule_steps", 0) or total_steps)
  peak = float(opt_cfg.learning_rate)
  warmup = int(opt_cfg.get("warmup_steps", 0) or round(opt_cfg.get("warmup_fraction", 0.0) * total_steps))
  final = peak * float(opt_cfg.get("final_lr_fraction", 0.0))
  kind = opt_cfg.get("schedule", "cosine")
  decay_steps = max(total_steps - warmup, 1)
  if kind == "cosine":
    after = optax.cosine_decay_schedule(peak, decay_steps, alpha=final / peak if peak else 0.0)
  elif kind == "linear":
    after = optax.linear_schedule(peak, final, decay_steps)
  elif kind == "constant":
    after = optax.constant_schedule(peak)
  elif kind == "wsd":
    fraction = float(opt_cfg.get("decay_fraction", 0.2))
    if not 0.0 < fraction <= 1.0:
      raise ValueError(f"optimizer.decay_fraction={fraction}: expected a fraction of the schedule in (0, 1]")
    tail = min(max(round(fraction * total_steps), 1), decay_steps)
    after = optax.join_schedules([optax.constant_schedule(peak), optax.linear_schedule(peak, final, tail)],
                                 [decay_steps - tail])
  else:
    raise ValueError(f"optimizer.schedule={kind!r}: expected 'cosine', 'linear', 'constant' or 'wsd'")
  if not warmup:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def trainable_mask(params, patterns: Sequence[str]):
  """Bool tree: True where the param's path ('dense/kernel') fully matches one of the regexes.

  Raises when a pattern matches nothing (a misspelt pattern would silently freeze a model).
  """
  compiled = [re.compile(p) for p in patterns]
  used = set()

  def match(path, _):
    name = path_str(path)
    hits = [p.pattern for p in compiled if p.fullmatch(name)]
    used.update(hits)
    return bool(hits)

  mask = jax.tree_util.tree_map_with_path(match, params)
  unused = [p.pattern for p in compiled if p.pattern not in used]
  if unused:
    names = [path_str(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
    raise ValueError(f"optimizer.trainable: patterns {unused} match no parameter; paths look like "
                     f"{names[:5]}")
  return mask


def make_optimizer(opt_cfg, total_steps: int, params) -> tuple[optax.GradientTransformation, optax.Schedule, object]:
  """Returns (tx, schedule, trainable_mask).

  Frozen params (not matched by `trainable`) go through `set_to_zero` inside `multi_transform`,
  so they get no optimizer state at all; clipping sees only trainable gradients.
  Weight decay applies to matrices only (ndim >= 2), not to biases and norm scales.
  """
  if opt_cfg.get("name", "adamw") != "adamw":
    raise ValueError(f"optimizer.name={opt_cfg.name!r}: only 'adamw' is implemented")
  schedule = make_schedule(opt_cfg, total_steps)
  inner = [optax.clip_by_global_norm(opt_cfg.clip_norm)] if opt_cfg.get("clip_norm", 0.0) else []
  inner.append(optax.adamw(
      schedule, b1=opt_cfg.get("b1", 0.9), b2=opt_cfg.get("b2", 0.999), eps=opt_cfg.get("eps", 1e-8),
      weight_decay=opt_cfg.get("weight_decay", 0.0),
      mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))
  mask = trainable_mask(params, opt_cfg.get("trainable", (".*",)))
  labels = jax.tree.map(lambda m: "trainable" if m else "frozen", mask)
  tx = optax.multi_transform({"trainable": optax.chain(*inner), "frozen": optax.set_to_zero()}, labels)
  groups = tuple(opt_cfg.get("lr_groups", ()) or ())
  if groups:
    # Scaling the finished AdamW update by s is training at s x the rate (weight decay included, as in a
    # torch param group); clipping stays global over every trainable param. Stateless, and only added
    # when groups are set, so the optimizer state of a run without groups keeps its structure.
    tx = optax.chain(tx, optax.stateless(functools.partial(_scale_updates, lr_scales(params, groups))))
  return tx, schedule, mask


def lr_scales(params, groups: Sequence[tuple[str, float]]):
  """Float tree like params: the scale of the first `(regex, scale)` group whose regex fully matches the
  param's path, 1.0 where none does. Raises when a group matches no parameter."""
  compiled = [(re.compile(pattern), float(scale)) for pattern, scale in groups]
  used = set()

  def scale_of(path, _):
    name = path_str(path)
    for regex, scale in compiled:
      if regex.fullmatch(name):
        used.add(regex.pattern)
        return scale
    return 1.0

  scales = jax.tree_util.tree_map_with_path(scale_of, params)
  unused = [regex.pattern for regex, _ in compiled if regex.pattern not in used]
  if unused:
    names = [path_str(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
    raise ValueError(f"optimizer.lr_groups: patterns {unused} match no parameter; paths look like {names[:5]}")
  return scales


def _scale_updates(scales, updates, params=None):
  del params
  return jax.tree.map(lambda u, s: u if s == 1.0 else u * jnp.asarray(s, u.dtype), updates, scales)
