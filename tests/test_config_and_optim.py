"""Config overrides are locked; optimizer schedules, trainable masks and loaded-param placement."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from absl import flags
from ml_collections import config_flags

import trainkit
from configs.demo import digits
from launch import demo

CONFIG = "configs/demo/digits.py"


def parse(*args):
  argv = ["prog", *args]
  flag_values = flags.FlagValues()
  # sys_argv: the override flags (--config.x) are derived from the argv seen at definition.
  config_flags.DEFINE_config_file("config", CONFIG, flag_values=flag_values, lock_config=True, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def test_override_and_arg_string():
  config = parse(f"--config={CONFIG}:data=2,fsdp=4,tensor=1", "--config.total_steps=7")
  assert config.total_steps == 7 and dict(config.mesh) == {"data": 2, "fsdp": 4, "tensor": 1}


def test_misspelt_override_fails_naming_the_key():
  with pytest.raises(Exception, match="tpyo"):
    parse(f"--config={CONFIG}", "--config.tpyo=1")
  with pytest.raises(Exception, match="learning_rat"):
    parse(f"--config={CONFIG}", "--config.optimizer.learning_rat=0.1")


def opt_config(**kw):
  return ml_collections.ConfigDict(dict(dict(learning_rate=1.0, schedule="cosine", warmup_steps=10,
                                             final_lr_fraction=0.0), **kw))


def test_schedules_warm_up_then_decay():
  cosine = trainkit.make_schedule(opt_config(), total_steps=110)
  assert [float(cosine(s)) for s in (0, 5, 10)] == pytest.approx([0.0, 0.5, 1.0])
  assert float(cosine(60)) == pytest.approx(0.5, abs=1e-6) and float(cosine(110)) == pytest.approx(0.0, abs=1e-6)
  linear = trainkit.make_schedule(opt_config(schedule="linear", warmup_fraction=0.1, warmup_steps=0), 110)
  assert float(linear(11)) == pytest.approx(1.0) and float(linear(60.5)) == pytest.approx(0.5, abs=1e-6)
  with pytest.raises(ValueError, match="schedule='step'"):
    trainkit.make_schedule(opt_config(schedule="step"), 10)


def test_wsd_holds_the_peak_then_decays_over_its_last_fraction():
  """110 steps, 10 of warmup, the last 20 (decay_fraction 2/11) decaying linearly to 10% of the peak."""
  wsd = trainkit.make_schedule(opt_config(schedule="wsd", decay_fraction=20 / 110, final_lr_fraction=0.1), 110)
  assert [float(wsd(s)) for s in (5, 10, 60, 90)] == pytest.approx([0.5, 1.0, 1.0, 1.0])
  assert float(wsd(100)) == pytest.approx(0.55) and float(wsd(110)) == pytest.approx(0.1)
  with pytest.raises(ValueError, match="decay_fraction=0.0"):
    trainkit.make_schedule(opt_config(schedule="wsd", decay_fraction=0.0), 10)


def test_schedule_steps_let_a_paused_run_follow_the_whole_schedule():
  """A run stopped at step 40 of a 110-step cosine, and resumed to 110, follows the 110-step schedule."""
  whole = trainkit.make_schedule(opt_config(), total_steps=110)
  first_leg = trainkit.make_schedule(opt_config(schedule_steps=110), total_steps=40)
  steps = np.arange(40)
  np.testing.assert_allclose(np.asarray(first_leg(steps)), np.asarray(whole(steps)), rtol=1e-6)
  assert float(first_leg(39)) > 0.5  # not the 40-step cosine, which is near its end there


def test_frozen_params_get_no_optimizer_state_and_do_not_move():
  config = digits.get_config()
  config.optimizer.trainable = ("head/.*", "up_.*/kernel")
  config.total_steps, config.batch_size = 3, 32
  exp = demo.build(config)
  adam_trees = jax.tree.leaves(exp.state.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
  mu = next(x for x in adam_trees if isinstance(x, optax.ScaleByAdamState)).mu
  # Only trainable leaves have moments: frozen ones are empty MaskedNodes (no arrays).
  assert {trainkit.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(mu)} == {
      "head/bias", "head/kernel", "up_0/kernel", "up_1/kernel"}
  before = jax.device_get(exp.state.params)
  state = exp.state
  for _ in range(3):
    state, metrics = exp.train_step(state, trainkit.to_global(next(exp.data_iter), exp.batch_sharding))
  after = jax.device_get(state.params)
  np.testing.assert_array_equal(before["down_0"]["kernel"], after["down_0"]["kernel"])
  np.testing.assert_array_equal(before["up_0"]["bias"], after["up_0"]["bias"])
  assert not np.allclose(before["up_0"]["kernel"], after["up_0"]["kernel"])
  assert np.isfinite(float(metrics["grad_norm"])) and float(metrics["grad_norm"]) > 0


def test_trainable_pattern_matching_nothing_is_an_error():
  params = {"dense": {"kernel": jnp.zeros((2, 2))}}
  with pytest.raises(ValueError, match=r"\['projector/.\*'\] match no parameter"):
    trainkit.trainable_mask(params, ("projector/.*",))


def test_lr_groups_train_their_params_at_a_scaled_rate_with_one_global_clip():
  params = {"lora": {"a": jnp.ones((2, 2))}, "projector": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}}
  grads = jax.tree.map(lambda p: jnp.full_like(p, 3.0), params)
  base = opt_config(schedule="constant", warmup_steps=0, learning_rate=0.1, weight_decay=0.1, clip_norm=1.0)
  plain_tx, _, _ = trainkit.make_optimizer(base, 10, params)
  plain, _ = plain_tx.update(grads, plain_tx.init(params), params)
  scaled = ml_collections.ConfigDict(dict(base.to_dict(), lr_groups=(("lora/.*", 0.02),)))
  tx, _, _ = trainkit.make_optimizer(scaled, 10, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # The LoRA update (decay included) is 2% of the plain one; the rest is unchanged, and the clip saw all
  # params together (a per-group clip would have given the projector a different update).
  np.testing.assert_allclose(updates["lora"]["a"], 0.02 * plain["lora"]["a"], rtol=1e-6)
  np.testing.assert_array_equal(updates["projector"]["kernel"], plain["projector"]["kernel"])
  np.testing.assert_array_equal(updates["projector"]["bias"], plain["projector"]["bias"])
  # Without groups the optimizer state keeps its structure (checkpoints of earlier runs restore).
  assert jax.tree.structure(plain_tx.init(params)) == jax.tree.structure(
      trainkit.make_optimizer(ml_collections.ConfigDict(dict(base.to_dict(), lr_groups=())), 10,
                              params)[0].init(params))
  with pytest.raises(ValueError, match=r"lr_groups: patterns \['lora_b/.\*'\] match no parameter"):
    trainkit.make_optimizer(ml_collections.ConfigDict(dict(base.to_dict(), lr_groups=(("lora_b/.*", 0.1),))),
                            10, params)


class Tiny(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(8, kernel_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed", "mlp")),
                    use_bias=False)(x)


def test_loaded_params_are_placed_with_the_rules_and_mismatches_listed():
  mesh = trainkit.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rules = (("embed", "fsdp"), ("mlp", "tensor"))
  init = lambda r: Tiny().init(r, jnp.zeros((1, 4)))["params"]  # noqa: E731
  tx = optax.adamw(1e-3)
  loaded = {"Dense_0": {"kernel": np.arange(32, dtype=np.float64).reshape(4, 8)}}
  state, shardings = trainkit.create_train_state(init, tx, mesh, rules, seed=0, params=loaded)
  kernel = state.params["Dense_0"]["kernel"]
  assert kernel.dtype == jnp.float32 and kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  np.testing.assert_array_equal(np.asarray(kernel), loaded["Dense_0"]["kernel"])
  bad = {"Dense_0": {"kernel": np.zeros((4, 7)), "bias": np.zeros(8)}}
  with pytest.raises(ValueError) as err:
    trainkit.create_train_state(init, tx, mesh, rules, seed=0, params=bad)
  assert "unexpected: Dense_0/bias (8,)" in str(err.value)
  assert "shape: Dense_0/kernel is (4, 7), expected (4, 8)" in str(err.value)
