"""The comparative loss: rank the task losses of the full model and its ablated submodels.

`losses` float[B, c+1]: column 0 is the full model, column k the k-th (more ablated) submodel.
The desired order is l_0 <= l_1 <= ... <= l_c (less ablation, lower loss). Ranking scores are
s_i = -l_i / T, so "higher score ranks first" in both the hinge and ListMLE.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

TARGETS = ("ultra", "first", "best")
RANKINGS = ("hinge", "listmle")
PRIMARIES = ("avg", "max", "fst", "lst")


def baseline_score(scores: jax.Array, target: str = "ultra") -> jax.Array:
  """The detached dummy model's score, float[B, 1], appended after the last submodel.

  Computed on the scores s = -l / T, as the reference computes it on its "effects", so that a tie
  between the dummy and a model is an exact float tie here too (see `hinge`). In loss terms (T = 1):
  ultra: b = 0 (every model's own loss is pushed down through its pair with the dummy);
  first: m = min_{i>=1} l_i; b = (l_0 + m) / 2 if l_0 < m else m;
  best:  b = min_i l_i.
  """
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


def hinge(z: jax.Array) -> jax.Array:
  """max(0, z) with derivative 1 at z = 0 (relu's is 0).

  The reference scores each pair with torch's margin_ranking_loss, a clamp(min=0) whose backward
  passes the gradient where the input equals the bound. Ties are common: with `best` a model always
  ties with the dummy, with `first` whenever l_0 >= m. relu would drop those pairs' gradients and,
  e.g., push the best submodel to raise its own loss (target `first`, losses [0.9, 0.5, 1.2]).
  """
  return jnp.where(z >= 0, z, jnp.zeros_like(z))


def pairwise_hinge(scores: jax.Array) -> jax.Array:
  """Mean over all pairs i < j of max(0, s_j - s_i) (position i should score higher). [B, n] -> [B].

  Each pair is torch's margin_ranking_loss(s_i, s_j, target=1, margin=0), tie gradients included.
  """
  n = scores.shape[1]
  i, j = jnp.triu_indices(n, k=1)
  return hinge(scores[:, j] - scores[:, i]).mean(axis=1)


def list_mle(scores: jax.Array) -> jax.Array:
  """ListMLE negative log-likelihood of the order 0, 1, ..., n-1 (the last term, always 0, dropped).

  sum_{i < n-1} [logsumexp(s_i..s_{n-1}) - s_i]. [B, n] -> [B].
  """
  tail_logsumexp = jax.lax.cumlogsumexp(scores, axis=1, reverse=True)
  return (tail_logsumexp - scores)[:, :-1].sum(axis=1)


def _rank(scores: jax.Array, ranking: str) -> jax.Array:
  if ranking == "hinge":
    return pairwise_hinge(scores)
  if ranking == "listmle":
    return list_mle(scores)
  raise ValueError(f"ranking={ranking!r}: expected one of {RANKINGS}")


def comparative_loss(losses: jax.Array, target: str = "ultra", temperature: float = 1.0,
                     ranking: str = "hinge") -> jax.Array:
  """L_cmp averaged over the batch. losses float[B, c+1] (column 0 = full model) -> scalar.

  With the hinge: (1/N) sum_{0 <= i < j <= c+1} max(0, (l_i - l_j) / T), N = (c+1)(c+2)/2, where
  l_{c+1} is the detached baseline of `target`. Gradients reach every column; only b is detached.
  A pair at a tie (l_i = l_j) passes its gradient, as in the reference (see `hinge`).
  Worked case (ultra, c=1): (l0 + l1 + max(0, l0 - l1)) / 3.
  """
  if losses.ndim != 2 or losses.shape[1] < 2:
    raise ValueError(f"losses must be float[B, c+1] with c >= 1, got shape {losses.shape}")
  scores = -losses / temperature
  return _rank(jnp.concatenate([scores, baseline_score(scores, target)], axis=1), ranking).mean()


def primary_loss(losses: jax.Array, primary: str = "max") -> jax.Array:
  """The per-example task loss the regulariser mode trains on: [B, c+1] -> [B].

  `max` sends its whole gradient to the first of tied maxima, as torch's max(dim) does in the
  reference (jnp.max would split it among them).
  """
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
                     ranking: str = "hinge", skip_above: float | None = None) -> jax.Array:
  """Regulariser mode: mean(primary) + weight * mean(ranking over the c+1 real models, no baseline).

  losses: float[B, c+1], or float[B, c+1, K] for K losses per model (span QA: start, end). As in
  the reference, the primary loss is taken on the models' K-average ((start + end) / 2), while the
  ranking term ranks each of the K columns separately and averages them.
  skip_above: while the batch-mean primary loss exceeds it, the ranking term is left out (the
  reference's schedule, with 1.1), so an untrained model first learns the task.
  """
  if losses.ndim == 2:
    losses = losses[..., None]
  task = primary_loss(losses.mean(axis=2), primary).mean()
  reg = jnp.mean(jnp.stack([_rank(-losses[..., k] / temperature, ranking).mean()
                            for k in range(losses.shape[2])]))
  if skip_above is not None:
    reg = jnp.where(jax.lax.stop_gradient(task) > skip_above, 0.0, reg)
  return task + weight * reg
