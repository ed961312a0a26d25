"""The comparative loss: rank the task losses of the full model and its ablated submodels.

`losses` float[B, c+1]: column 0 is the full model, column k the k-th (more ablated) submodel.
The desired order is l_0 <= l_1 <= ... <= l_c (less ablation, lower loss). Ranking scores are
s_i = -l_i / T, so "higher score ranks first" in both the hinge and ListMLE.

Missing targets: `valid` bool[B, c+1] (optional, default all true) marks the models whose input has
a target (a HotpotQA view whose answer fell outside its window has none). A model without one is
left out of the ranking -- every pair that involves it is dropped, it is left out of ListMLE's list
and of the `first`/`best` baselines -- and out of the primary loss. The denominators do not change
(pairs are still averaged over all N, the batch over all B), so each remaining pair weighs what it
weighs in an example with every target present; an invalid loss value is never read.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

TARGETS = ("ultra", "first", "best")
RANKINGS = ("hinge", "listmle")
PRIMARIES = ("avg", "max", "fst", "lst")
# Stands in for the score of a model without a target where a max or a logsumexp runs over models:
# finite (no inf - inf = nan in a gradient), and far below any real score -l/T.
_ABSENT = -1e9


def _with_baseline(valid: jax.Array | None, batch: int) -> jax.Array | None:
  """valid bool[B, n] -> bool[B, n + 1]: the appended (detached) baseline always takes part."""
  if valid is None:
    return None
  return jnp.concatenate([valid, jnp.ones((batch, 1), bool)], axis=1)


def baseline_score(scores: jax.Array, target: str = "ultra", valid: jax.Array | None = None) -> jax.Array:
  """The detached dummy model's score, float[B, 1], appended after the last submodel.

  Computed on the scores s = -l / T, as the reference computes it on its "effects", so that a tie
  between the dummy and a model is an exact float tie here too (see `hinge`). In loss terms (T = 1):
  ultra: b = 0 (every model's own loss is pushed down through its pair with the dummy);
  first: m = min_{i>=1} l_i; b = (l_0 + m) / 2 if l_0 < m else m;
  best:  b = min_i l_i.
  With `valid` bool[B, c+1], `first` and `best` look at the models with a target only: `first`
  with no valid submodel is b = s_0 (as `best`), with an invalid full model b = max of the valid
  submodels; b = 0 when no model has a target (every pair is dropped then anyway).
  """
  if valid is not None and target != "ultra":
    return jax.lax.stop_gradient(_masked_baseline(scores, target, valid))[:, None]
  if target == "ultra":
    b = jnp.zeros(scores.shape[:1], scores.dtype)
  elif target == "first":
    best_submodel = scores[:, 1:].max(axis=1)
    b = jnp.where(scores[:, 0] > best_submodel, (scores[:, 0] + best_submodel) / 2, best_submodel)
  elif target == "best":
    b = scores.max(axis=1)
  else:
    raise ValueError(f"target={target!r}: expected one of {TARGETS}")
  return jax.lax.stop_gradient(b)[:, None]


def _masked_baseline(scores, target, valid):
  masked = jnp.where(valid, scores, _ABSENT)
  any_valid = valid.any(axis=1)
  if target == "best":
    return jnp.where(any_valid, masked.max(axis=1), 0.0)
  if target != "first":
    raise ValueError(f"target={target!r}: expected one of {TARGETS}")
  s0, v0 = scores[:, 0], valid[:, 0]
  best_submodel, has_submodel = masked[:, 1:].max(axis=1), valid[:, 1:].any(axis=1)
  both = jnp.where(s0 > best_submodel, (s0 + best_submodel) / 2, best_submodel)
  return jnp.where(v0 & has_submodel, both, jnp.where(v0, s0, jnp.where(has_submodel, best_submodel, 0.0)))


def hinge(z: jax.Array) -> jax.Array:
  """max(0, z) with derivative 1 at z = 0 (relu's is 0).

  The reference scores each pair with torch's margin_ranking_loss, a clamp(min=0) whose backward
  passes the gradient where the input equals the bound. Ties are common: with `best` a model always
  ties with the dummy, with `first` whenever l_0 >= m. relu would drop those pairs' gradients and,
  e.g., push the best submodel to raise its own loss (target `first`, losses [0.9, 0.5, 1.2]).
  """
  return jnp.where(z >= 0, z, jnp.zeros_like(z))


def pairwise_hinge(scores: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """Mean over all pairs i < j of max(0, s_j - s_i) (position i should score higher). [B, n] -> [B].

  Each pair is torch's margin_ranking_loss(s_i, s_j, target=1, margin=0), tie gradients included.
  valid: bool[B, n] or None; a pair with an invalid member counts 0 (the mean stays over all pairs).
  """
  n = scores.shape[1]
  i, j = jnp.triu_indices(n, k=1)
  pairs = hinge(scores[:, j] - scores[:, i])
  if valid is not None:
    pairs = jnp.where(valid[:, i] & valid[:, j], pairs, 0.0)
  return pairs.mean(axis=1)


def list_mle(scores: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """ListMLE negative log-likelihood of the order 0, 1, ..., n-1 (the last term, always 0, dropped).

  sum_{i < n-1} [logsumexp(s_i..s_{n-1}) - s_i]. [B, n] -> [B].
  valid: bool[B, n] or None; invalid items are taken out of the list (the order of the rest stays).
  """
  if valid is None:
    tail_logsumexp = jax.lax.cumlogsumexp(scores, axis=1, reverse=True)
    return (tail_logsumexp - scores)[:, :-1].sum(axis=1)
  # exp(_ABSENT - x) is exactly 0 in float32, so an absent item adds nothing to any tail's logsumexp.
  present = jnp.where(valid, scores, _ABSENT)
  tail_logsumexp = jax.lax.cumlogsumexp(present, axis=1, reverse=True)
  return jnp.where(valid, tail_logsumexp - present, 0.0)[:, :-1].sum(axis=1)


def _rank(scores: jax.Array, ranking: str, valid: jax.Array | None = None) -> jax.Array:
  if ranking == "hinge":
    return pairwise_hinge(scores, valid)
  if ranking == "listmle":
    return list_mle(scores, valid)
  raise ValueError(f"ranking={ranking!r}: expected one of {RANKINGS}")


def comparative_loss(losses: jax.Array, target: str = "ultra", temperature: float = 1.0,
                     ranking: str = "hinge", valid: jax.Array | None = None) -> jax.Array:
  """L_cmp averaged over the batch. losses float[B, c+1] (column 0 = full model) -> scalar.

  With the hinge: (1/N) sum_{0 <= i < j <= c+1} max(0, (l_i - l_j) / T), N = (c+1)(c+2)/2, where
  l_{c+1} is the detached baseline of `target`. Gradients reach every column; only b is detached.
  A pair at a tie (l_i = l_j) passes its gradient, as in the reference (see `hinge`).
  Worked case (ultra, c=1): (l0 + l1 + max(0, l0 - l1)) / 3.
  valid: bool[B, c+1] or None (all present); models without a target are left out (module docstring).
  """
  if losses.ndim != 2 or losses.shape[1] < 2:
    raise ValueError(f"losses must be float[B, c+1] with c >= 1, got shape {losses.shape}")
  scores = -losses / temperature
  chain = jnp.concatenate([scores, baseline_score(scores, target, valid)], axis=1)
  return _rank(chain, ranking, _with_baseline(valid, losses.shape[0])).mean()


def primary_loss(losses: jax.Array, primary: str = "max", valid: jax.Array | None = None) -> jax.Array:
  """The per-example task loss the regulariser mode trains on: [B, c+1] -> [B].

  `max` sends its whole gradient to the first of tied maxima, as torch's max(dim) does in the
  reference (jnp.max would split it among them).
  valid: bool[B, c+1] or None. Models without a target count 0: `avg` sums the valid ones over c+1,
  `max` takes the largest valid one, `fst`/`lst` are 0 when that model has none.
  """
  if valid is not None:
    if primary not in PRIMARIES:
      raise ValueError(f"primary={primary!r}: expected one of {PRIMARIES}")
    present = jnp.where(valid, losses, 0.0)
    if primary != "max":
      return primary_loss(present, primary)
    first_max = jnp.argmax(jnp.where(valid, losses, _ABSENT), axis=1)[:, None]
    return jnp.take_along_axis(present, first_max, axis=1)[:, 0]
  if primary == "avg":
    return losses.mean(axis=1)
  if primary == "max":
    first_max = jnp.argmax(losses, axis=1)[:, None]
    return jnp.take_along_axis(losses, first_max, axis=1)[:, 0]
  if primary == "fst":
    return losses[:, 0]
  if primary == "lst":
    return losses[:, -1]
  raise ValueError(f"primary={primary!r}: expected one of {PRIMARIES}")


def regularised_loss(losses: jax.Array, primary: str = "max", weight: float = 1.0, temperature: float = 1.0,
                     ranking: str = "hinge", skip_above: float | None = None,
                     valid: jax.Array | None = None) -> jax.Array:
  """Regulariser mode: mean(primary) + weight * mean(ranking over the c+1 real models, no baseline).

  losses: float[B, c+1], or float[B, c+1, K] for K losses per model (span QA: start, end). As in
  the reference, the primary loss is taken on the models' K-average ((start + end) / 2), while the
  ranking term ranks each of the K columns separately and averages them.
  skip_above: while the batch-mean primary loss exceeds it, the ranking term is left out (the
  reference's schedule, with 1.1), so an untrained model first learns the task.
  valid: bool[B, c+1] or None, shared by the K columns (module docstring).
  """
  if losses.ndim == 2:
    losses = losses[..., None]
  task = primary_loss(losses.mean(axis=2), primary, valid).mean()
  reg = jnp.mean(jnp.stack([_rank(-losses[..., k] / temperature, ranking, valid).mean()
                            for k in range(losses.shape[2])]))
  if skip_above is not None:
    reg = jnp.where(jax.lax.stop_gradient(task) > skip_above, 0.0, reg)
  return task + weight * reg
