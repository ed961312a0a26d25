"""Nested ablation: masks nest at every dropout site, k = 0 is the deterministic model, the vmapped
chain equals a Python loop over submodels, gradients reach every submodel, crop views and schedule."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from comploss_jax import (CmpSettings, EncoderConfig, NestedDropout, SequenceClassifier, SpanExtractor,
                          classification_losses, make_loss_fn, span_losses, submodel_batch_size,
                          submodel_schedule, submodel_losses)
from comploss_jax.ablation import powered_rate

B, T = 4, 12


def tiny_config(model_type="bert", **kw):
  return EncoderConfig(model_type=model_type, vocab_size=50, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=48, max_position_embeddings=32,
                       hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2, **kw)


def inputs(seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(2, 50, (B, T)).astype(np.int32)
  mask = np.ones((B, T), np.int32)
  mask[1, 8:] = 0
  return {"input_ids": ids, "attention_mask": mask, "labels": rng.integers(0, 3, B).astype(np.int32)}


def classifier(model_type="bert"):
  cfg = tiny_config(model_type, embedding_size=16 if model_type == "electra" else None)
  model = SequenceClassifier(cfg, num_labels=3)
  batch = inputs()
  params = model.init(jax.random.PRNGKey(0), batch["input_ids"], batch["attention_mask"])["params"]
  return model, nn.meta.unbox(params), batch


def per_example_loss(model):
  def fn(params, batch, rng, power):
    logits, _ = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                            deterministic=False, dropout_power=power, rngs={"dropout": rng})
    return classification_losses(logits, batch["labels"])
  return fn


def test_nested_dropout_masks_nest_and_power_zero_is_identity():
  x = jnp.ones((64, 256))
  outs = [NestedDropout(0.1).apply({}, x, deterministic=False, power=k, rngs={"dropout": jax.random.PRNGKey(3)})
          for k in range(5)]
  np.testing.assert_array_equal(outs[0], x)
  kept = [np.asarray(o) != 0 for o in outs]
  for k in range(1, 5):
    assert not np.any(kept[k] & ~kept[k - 1])  # nothing kept at k that k-1 dropped
    rate = 1 - 0.9 ** k
    assert 1 - kept[k].mean() == pytest.approx(rate, abs=0.01)
    np.testing.assert_allclose(np.asarray(outs[k])[kept[k]], 1 / (1 - rate), rtol=1e-6)


def test_nested_dropout_scales_bf16_inputs_in_float32():
  # Kept units are x * (1/(1-p_k)) computed in float32 and rounded once to bf16. With the scale
  # itself rounded to bf16 first (1/0.9 -> 1.109375), 1.1 would become 1.21875 instead of 1.2265625.
  x = jnp.full((64, 256), 1.1, jnp.bfloat16)
  for k in (1, 2, 3):
    out = NestedDropout(0.1).apply({}, x, deterministic=False, power=k, rngs={"dropout": jax.random.PRNGKey(3)})
    assert out.dtype == jnp.bfloat16
    kept = np.asarray(out.astype(jnp.float32))[np.asarray(out.astype(jnp.float32)) != 0]
    scale = 1 / (1 - np.float32(powered_rate(0.1, k)))
    once = float(jnp.asarray(np.float32(x[0, 0]) * np.float32(scale), jnp.bfloat16))
    twice = float(x[0, 0] * jnp.asarray(scale, jnp.bfloat16))
    assert len(kept) and np.all(kept == once)
    if k in (1, 3):
      assert once != twice  # so the check above tells the two apart


# Sites: embeddings, then attention probs / attention output / FFN output (each stacked over the
# scanned layers), then the head's one (BERT) or two (ELECTRA) dropouts.
@pytest.mark.parametrize("model_type, sites", [("bert", 1 + 3 + 1), ("electra", 1 + 3 + 2)])
def test_masks_nest_at_every_dropout_site_of_the_model(model_type, sites):
  model, params, batch = classifier(model_type)
  is_dropout = lambda mdl, _: isinstance(mdl, NestedDropout)  # noqa: E731

  @jax.jit
  def captured(power):
    _, state = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"], deterministic=False,
                           dropout_power=power, rngs={"dropout": jax.random.PRNGKey(7)},
                           capture_intermediates=is_dropout, mutable=["intermediates"])
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(state["intermediates"])}

  per_power = [jax.tree.map(np.asarray, captured(jnp.float32(k))) for k in range(4)]
  assert len(per_power[0]) == sites
  for name in per_power[0]:
    kept = [out[name] != 0 for out in per_power]
    for k in range(1, 4):
      assert not np.any(kept[k] & ~kept[k - 1]), f"{name}: submodel {k} keeps a unit submodel {k - 1} dropped"
    assert kept[3].mean() < kept[1].mean() < kept[0].mean() or kept[0].mean() == 0


@pytest.mark.parametrize("model_type", ["bert", "electra"])
def test_power_zero_equals_the_deterministic_model(model_type):
  model, params, batch = classifier(model_type)
  plain, _ = jax.jit(model.apply)({"params": params}, batch["input_ids"], batch["attention_mask"])
  zero = jax.jit(per_example_loss(model))(params, batch, jax.random.PRNGKey(1), 0)
  np.testing.assert_array_equal(zero, classification_losses(plain, batch["labels"]))


def test_vmapped_chain_equals_python_loop_and_gradients_reach_every_submodel():
  model, params, batch = classifier()
  fn = per_example_loss(model)
  rng = jax.random.PRNGKey(5)
  settings = CmpSettings(n_drop=3)
  chain = jax.jit(submodel_losses, static_argnums=(0, 4))
  vmapped = chain(fn, params, batch, rng, settings)
  looped = chain(fn, params, batch, rng, CmpSettings(n_drop=3, vmap=False))
  assert vmapped.shape == (B, 4)
  np.testing.assert_allclose(vmapped, looped, rtol=1e-6, atol=1e-6)
  # Each column is the submodel run on its own: column k equals a direct call at power k.
  direct = jax.jit(fn)
  for k in range(4):
    np.testing.assert_allclose(vmapped[:, k], direct(params, batch, rng, jnp.float32(k)), rtol=1e-6, atol=1e-6)
  # Gradients flow through every submodel's pass: d(column k)/d(params) is non-zero for each k.
  per_column = jax.jit(jax.jacrev(lambda p: submodel_losses(fn, p, batch, rng, settings).sum(axis=0)))(params)
  norms = sum(np.abs(np.asarray(g)).reshape(4, -1).sum(axis=1) for g in jax.tree.leaves(per_column))
  assert np.all(norms > 0)
  remat = chain(fn, params, batch, rng, CmpSettings(n_drop=3, remat=True))
  np.testing.assert_allclose(remat, vmapped, rtol=1e-6)


def test_schedule_interleaves_crop_first_with_cumulative_counters():
  assert submodel_schedule(3, 0) == [(0, 0), (0, 1), (0, 2), (0, 3)]
  assert submodel_schedule(0, 2) == [(0, 1), (1, 1), (2, 1)]  # crop-only keeps ordinary dropout
  assert submodel_schedule(1, 1) == [(0, 0), (1, 0), (1, 1)]
  assert submodel_schedule(2, 1) == [(0, 0), (1, 0), (1, 1), (1, 2)]
  assert submodel_schedule(1, 3) == [(0, 0), (1, 0), (1, 1), (2, 1), (3, 1)]
  assert submodel_batch_size(24, 3, keep_compute_fixed=True) == 8
  assert submodel_batch_size(24, 3, keep_compute_fixed=False) == 24
  with pytest.raises(ValueError, match="not divisible by the 4 submodels"):
    submodel_batch_size(10, 4, keep_compute_fixed=True)


def test_cropped_views_feed_their_submodels_span_losses_compared_separately():
  cfg = tiny_config()
  model = SpanExtractor(cfg)
  rng = np.random.default_rng(2)
  V = 3  # view 0 = full input; views 1, 2 drop more distractor tokens (masked out here)
  ids = np.repeat(rng.integers(2, 50, (B, 1, T)), V, axis=1).astype(np.int32)
  mask = np.ones((B, V, T), np.int32)
  mask[:, 1, 9:] = 0
  mask[:, 2, 6:] = 0
  views = {"input_ids": ids, "attention_mask": mask,
           "start": np.full((B, V), 2, np.int32), "end": np.full((B, V), 4, np.int32)}
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), ids[:, 0], mask[:, 0])["params"])

  def fn(p, batch, r, power):
    (s, e), _ = model.apply({"params": p}, batch["input_ids"], batch["attention_mask"], deterministic=False,
                            dropout_power=power, rngs={"dropout": r})
    return span_losses(s, e, batch["start"], batch["end"])

  settings = CmpSettings(n_drop=1, n_crop=2)  # schedule (0,0) (1,0) (1,1) (2,1)
  batch = {"views": views}
  losses = jax.jit(submodel_losses, static_argnums=(0, 4))(fn, params, batch, jax.random.PRNGKey(0), settings)
  assert losses.shape == (B, 4, 2)
  direct = jax.jit(fn)
  for k, (view, power) in enumerate(submodel_schedule(1, 2)):
    one = {key: value[:, view] for key, value in views.items()}
    np.testing.assert_allclose(losses[:, k], direct(params, one, jax.random.PRNGKey(0), jnp.float32(power)),
                               rtol=1e-5, atol=1e-6)
  loss, metrics = jax.jit(make_loss_fn(fn, settings))(params, batch, jax.random.PRNGKey(0))
  from comploss_jax import comparative_loss
  expected = (comparative_loss(losses[..., 0]) + comparative_loss(losses[..., 1])) / 2
  assert float(loss) == pytest.approx(float(expected), rel=1e-6)
  assert set(metrics) == {"task_loss/0", "task_loss/1", "task_loss/2", "task_loss/3", "primary"}
