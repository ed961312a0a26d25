"""comparative_loss against the spec's worked cases and a brute-force numpy reference (values and gradients)."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from comploss_jax import comparative_loss, list_mle, regularised_loss


def np_baseline(l, target):
  if target == "ultra":
    return 0.0
  if target == "best":
    return l.min()
  m = l[1:].min()
  return (l[0] + m) / 2 if l[0] < m else m


def np_cmp(losses, target="ultra", T=1.0, ranking="hinge"):
  """Loops over examples and pairs; the plain reading of spec §3."""
  total = 0.0
  for l in losses:
    chain = list(l) + [np_baseline(l, target)]
    if ranking == "hinge":
      pairs = list(itertools.combinations(range(len(chain)), 2))
      total += sum(max(0.0, (chain[i] - chain[j]) / T) for i, j in pairs) / len(pairs)
    else:
      s = [-x / T for x in chain]
      total += sum(np.log(sum(np.exp(s[k]) for k in range(i, len(s)))) - s[i] for i in range(len(s) - 1))
  return total / len(losses)


def numeric_grad(f, x, eps=1e-6):
  """Backward differences: at a hinge kink (a model tied with the `best`/`first` baseline) they give
  the left derivative 0, which is what autodiff of max(0, z) gives at z = 0 (as torch does too)."""
  g = np.zeros_like(x)
  for idx in np.ndindex(*x.shape):
    down = x.copy()
    down[idx] -= eps
    g[idx] = (f(x) - f(down)) / eps
  return g


def test_worked_cases_from_the_spec():
  l0, l1, l2 = 0.7, 0.4, 1.3
  c1 = comparative_loss(jnp.array([[l0, l1]]))
  assert float(c1) == pytest.approx((l0 + l1 + max(0, l0 - l1)) / 3)
  c2 = comparative_loss(jnp.array([[l0, l1, l2]]))
  expected = (l0 + l1 + l2 + max(0, l0 - l1) + max(0, l0 - l2) + max(0, l1 - l2)) / 6
  assert float(c2) == pytest.approx(expected)


@pytest.mark.parametrize("target", ["ultra", "first", "best"])
@pytest.mark.parametrize("ranking", ["hinge", "listmle"])
@pytest.mark.parametrize("c", [1, 2, 4])
def test_matches_brute_force_values_and_gradients(target, ranking, c):
  rng = np.random.default_rng(c)
  losses = rng.uniform(0.05, 3.0, size=(5, c + 1))
  T = 0.7
  ours = comparative_loss(jnp.asarray(losses, jnp.float32), target, T, ranking)
  assert float(ours) == pytest.approx(np_cmp(losses, target, T, ranking), rel=1e-5)
  grad = jax.grad(lambda x: comparative_loss(x, target, T, ranking))(jnp.asarray(losses, jnp.float32))

  def detached_reference(x):
    # b is detached: hold it at its value for the unperturbed losses.
    fixed = [np_baseline(row, target) for row in losses]
    total = 0.0
    for row, b in zip(x, fixed):
      total += np_cmp_with_fixed_baseline(row, b, T, ranking)
    return total / len(x)

  np.testing.assert_allclose(np.asarray(grad), numeric_grad(detached_reference, losses), atol=1e-4)


def np_cmp_with_fixed_baseline(row, b, T, ranking):
  chain = list(row) + [b]
  if ranking == "hinge":
    pairs = list(itertools.combinations(range(len(chain)), 2))
    return sum(max(0.0, (chain[i] - chain[j]) / T) for i, j in pairs) / len(pairs)
  s = [-x / T for x in chain]
  return sum(np.log(sum(np.exp(s[k]) for k in range(i, len(s)))) - s[i] for i in range(len(s) - 1))


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


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="target='worst'"):
    comparative_loss(jnp.ones((2, 3)), target="worst")
  with pytest.raises(ValueError, match=r"float\[B, c\+1\] with c >= 1"):
    comparative_loss(jnp.ones((2, 1)))
