"""comparative_loss against the spec's worked cases, a brute-force numpy reference, and the reference
implementation's torch ops pair by pair (values and gradients, ties included)."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from comploss_jax import comparative_loss, list_mle, regularised_loss
from comploss_jax.submodels import CmpSettings, combine

TARGETS = ("ultra", "first", "best")


def np_baseline(l, target):
  if target == "ultra":
    return 0.0
  if target == "best":
    return l.min()
  m = l[1:].min()
  return (l[0] + m) / 2 if l[0] < m else m


def np_hinge_and_grad(row, b, T):
  """The pairwise hinge over row + [b] (b held fixed) and its gradient w.r.t. row, pair by pair.

  A pair at a tie (z = 0) passes its gradient, as torch's clamp(min=0) in margin_ranking_loss does.
  """
  chain = list(row) + [b]
  pairs = list(itertools.combinations(range(len(chain)), 2))
  value, grad = 0.0, np.zeros(len(chain))
  for i, j in pairs:
    z = (chain[i] - chain[j]) / T
    value += max(0.0, z)
    if z >= 0:
      grad[i] += 1 / T
      grad[j] -= 1 / T
  return value / len(pairs), grad[:-1] / len(pairs)


def np_list_mle(row, b, T):
  s = [-x / T for x in list(row) + [b]]
  return sum(np.log(sum(np.exp(s[k]) for k in range(i, len(s)))) - s[i] for i in range(len(s) - 1))


def np_cmp(losses, target="ultra", T=1.0, ranking="hinge"):
  """(value, gradient) of the batch mean; the plain reading of spec §3, b detached."""
  value, grad = 0.0, np.zeros_like(losses)
  for n, row in enumerate(losses):
    b = np_baseline(row, target)
    if ranking == "hinge":
      v, g = np_hinge_and_grad(row, b, T)
    else:
      v, g = np_list_mle(row, b, T), central_difference(lambda r: np_list_mle(r, b, T), row)
    value += v
    grad[n] = g
  return value / len(losses), grad / len(losses)


def central_difference(f, x, eps=1e-6):
  g = np.zeros_like(x)
  for idx in np.ndindex(*x.shape):
    up, down = x.copy(), x.copy()
    up[idx] += eps
    down[idx] -= eps
    g[idx] = (f(up) - f(down)) / (2 * eps)
  return g


def jax_value_and_grad(losses, *args):
  return jax.value_and_grad(lambda x: comparative_loss(x, *args))(jnp.asarray(losses, jnp.float32))


def test_worked_cases_from_the_spec():
  l0, l1, l2 = 0.7, 0.4, 1.3
  c1 = comparative_loss(jnp.array([[l0, l1]]))
  assert float(c1) == pytest.approx((l0 + l1 + max(0, l0 - l1)) / 3)
  c2 = comparative_loss(jnp.array([[l0, l1, l2]]))
  expected = (l0 + l1 + l2 + max(0, l0 - l1) + max(0, l0 - l2) + max(0, l1 - l2)) / 6
  assert float(c2) == pytest.approx(expected)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("ranking", ["hinge", "listmle"])
@pytest.mark.parametrize("c", [1, 2, 4])
def test_matches_brute_force_values_and_gradients(target, ranking, c):
  rng = np.random.default_rng(c)
  losses = rng.uniform(0.05, 3.0, size=(5, c + 1))
  losses[0, 1] = losses[0, 0]  # a tie between submodels; `best`/`first` also tie with their baseline
  T = 0.7
  value, grad = jax_value_and_grad(losses, target, T, ranking)
  expected_value, expected_grad = np_cmp(losses.astype(np.float32).astype(np.float64), target, T, ranking)
  assert float(value) == pytest.approx(expected_value, rel=1e-5)
  np.testing.assert_allclose(np.asarray(grad), expected_grad, atol=1e-4)


def test_issue_example_tie_with_the_first_baseline_passes_its_gradient():
  # first: m = 0.5 <= l0, so b = 0.5 ties with submodel 1; its pair with b passes +1 and cancels the
  # -1 from its pair with the full model. relu would leave -1/6: the best submodel pushed up.
  _, grad = jax_value_and_grad(np.array([[0.9, 0.5, 1.2]]), "first")
  np.testing.assert_allclose(np.asarray(grad)[0], [1 / 3, 0.0, 1 / 6], atol=1e-6)


def test_ultra_gradient_reaches_every_model():
  grad = jax.grad(comparative_loss)(jnp.array([[0.2, 0.9, 1.5]]))
  assert np.all(np.asarray(grad) > 0)


def test_list_mle_of_a_perfect_long_margin_order_is_near_zero():
  assert float(list_mle(jnp.array([[30.0, 20.0, 10.0, 0.0]]))[0]) == pytest.approx(0.0, abs=1e-3)


def test_regulariser_mode_and_its_skip_threshold():
  losses = jnp.array([[0.5, 0.3, 0.9], [1.0, 1.2, 0.8]])
  hinge = np.mean([np.mean([max(0, a - b) for a, b in itertools.combinations(row, 2)]) for row in np.asarray(losses)])
  for primary, task in (("max", (0.9 + 1.2) / 2), ("avg", float(losses.mean())), ("fst", 0.75), ("lst", 0.85)):
    got = regularised_loss(losses, primary=primary, weight=2.0)
    assert float(got) == pytest.approx(task + 2.0 * hinge, rel=1e-6)
  skipped = regularised_loss(losses, primary="max", weight=2.0, skip_above=1.0)
  assert float(skipped) == pytest.approx((0.9 + 1.2) / 2, rel=1e-6)


def test_regulariser_primary_max_sends_a_tie_gradient_to_the_first_maximum():
  grad = jax.grad(lambda x: regularised_loss(x, primary="max", weight=0.0))(jnp.array([[0.4, 0.9, 0.9]]))
  np.testing.assert_allclose(np.asarray(grad)[0], [0.0, 1.0, 0.0])


def test_regulariser_for_span_qa_takes_the_primary_of_the_start_end_average():
  # [B=1, c+1=2, K=2]: start losses (1.0, 0.2), end losses (0.2, 1.0). The per-model averages tie
  # at 0.6, so max-primary = 0.6; per column it would have been max(1.0) = 1.0 for both.
  losses = jnp.array([[[1.0, 0.2], [0.2, 1.0]]])
  hinge = (max(0, 1.0 - 0.2) + max(0, 0.2 - 1.0)) / 2  # start column + end column, averaged
  settings = CmpSettings(n_drop=1, mode="regulariser", primary="max", weight=1.0)
  assert float(combine(losses, settings)) == pytest.approx(0.6 + hinge, rel=1e-6)
  # The skip threshold is judged on the same averaged primary (0.6): 0.7 keeps the ranking term.
  kept = CmpSettings(n_drop=1, mode="regulariser", primary="max", skip_above=0.7)
  assert float(combine(losses, kept)) == pytest.approx(0.6 + hinge, rel=1e-6)
  skipped = CmpSettings(n_drop=1, mode="regulariser", primary="max", skip_above=0.5)
  assert float(combine(losses, skipped)) == pytest.approx(0.6, rel=1e-6)


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="target='worst'"):
    comparative_loss(jnp.ones((2, 3)), target="worst")
  with pytest.raises(ValueError, match=r"float\[B, c\+1\] with c >= 1"):
    comparative_loss(jnp.ones((2, 1)))


# --- Against torch, the reference's own ops ---------------------------------------------------------------

def torch_baseline(effects, target):
  """The reference's detached objective, on effects = -losses / T (a [B, 1] tensor)."""
  torch = pytest.importorskip("torch")
  with torch.no_grad():
    if target == "ultra":
      return effects.new_zeros((effects.size(0), 1))
    if target == "best":
      return effects.max(dim=1, keepdim=True)[0]
    first, best = effects[:, :1], effects[:, 1:].max(dim=1, keepdim=True)[0]
    return torch.where(first > best, (first + best) / 2, best)


def torch_pairwise_hinge(effects):
  """[B] mean over pairs i < j of F.margin_ranking_loss(e_i, e_j, +1, margin=0), one call per pair."""
  torch = pytest.importorskip("torch")
  import torch.nn.functional as F
  pairs = list(itertools.combinations(range(effects.size(1)), 2))
  ones = torch.ones(effects.size(0), dtype=effects.dtype)
  total = sum(F.margin_ranking_loss(effects[:, i], effects[:, j], ones, margin=0.0, reduction="none")
              for i, j in pairs)
  return total / len(pairs)


def torch_cmp(losses, target, T):
  """Batch-mean comparative loss as the reference computes it, with its autograd gradient."""
  torch = pytest.importorskip("torch")
  x = torch.tensor(losses, dtype=torch.float32, requires_grad=True)
  effects = -x / T
  loss = torch_pairwise_hinge(torch.cat([effects, torch_baseline(effects, target)], dim=1)).mean()
  loss.backward()
  return loss.item(), x.grad.numpy()


def torch_regulariser(losses, primary, weight, T, skip_above):
  """The reference's regulariser mode on [B, c+1, K] losses: primary of the K-average (torch's max
  sends a tie's gradient to its first maximum) + weight * K-averaged hinge, skipped above a threshold."""
  torch = pytest.importorskip("torch")
  x = torch.tensor(losses, dtype=torch.float32, requires_grad=True)
  averaged = x.mean(dim=2)
  task = {"avg": lambda a: a.mean(dim=1), "max": lambda a: a.max(dim=1)[0], "fst": lambda a: a[:, 0],
          "lst": lambda a: a[:, -1]}[primary](averaged)
  reg = sum(torch_pairwise_hinge(-x[..., k] / T) for k in range(x.size(2))) / x.size(2)
  overall = task if skip_above is not None and task.mean() > skip_above else task + weight * reg
  loss = overall.mean()
  loss.backward()
  return loss.item(), x.grad.numpy()


def tie_cases(c):
  """Rows with ties between submodels, with the full model, all-equal rows, and random rows."""
  rng = np.random.default_rng(10 + c)
  rows = [rng.uniform(0.05, 3.0, c + 1) for _ in range(3)]
  rows.append(np.full(c + 1, 0.7))  # everything ties
  tie = rng.uniform(0.05, 3.0, c + 1)
  tie[1:] = tie[1]  # all submodels tie (and with b under best/first)
  rows.append(tie)
  tie = rng.uniform(0.05, 3.0, c + 1)
  tie[0] = tie[-1]  # full model ties with the most ablated one
  rows.append(tie)
  if c >= 2:
    rows.append(np.array([0.9, 0.5, 1.2] + [1.5] * (c - 2)))  # the issue's `first` example
  return np.asarray(rows, np.float32)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("T", [1.0, 0.7])
@pytest.mark.parametrize("c", [1, 2, 4])
def test_matches_torch_margin_ranking_loss_pair_by_pair(target, T, c):
  pytest.importorskip("torch")
  losses = tie_cases(c)
  value, grad = jax_value_and_grad(losses, target, T)
  expected_value, expected_grad = torch_cmp(losses, target, T)
  assert float(value) == pytest.approx(expected_value, rel=1e-6, abs=1e-7)
  np.testing.assert_allclose(np.asarray(grad), expected_grad, atol=1e-7)


@pytest.mark.parametrize("primary", ["avg", "max", "fst", "lst"])
@pytest.mark.parametrize("skip_above", [None, 0.2, 5.0])
@pytest.mark.parametrize("columns", [1, 2])
def test_regulariser_matches_torch(primary, skip_above, columns):
  pytest.importorskip("torch")
  rows = tie_cases(2)
  losses = np.stack([rows, rows[:, ::-1]], axis=2)[..., :columns]  # K=2: end losses = reversed starts
  T, weight = 0.7, 1.5
  value, grad = jax.value_and_grad(
      lambda x: combine(x, CmpSettings(n_drop=2, mode="regulariser", primary=primary, weight=weight, temperature=T,
                                       skip_above=skip_above)))(jnp.asarray(losses))
  expected_value, expected_grad = torch_regulariser(losses, primary, weight, T, skip_above)
  assert float(value) == pytest.approx(expected_value, rel=1e-6)
  np.testing.assert_allclose(np.asarray(grad), expected_grad, atol=1e-7)
