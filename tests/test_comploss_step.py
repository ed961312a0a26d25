"""The whole comparative chain as one jitted, sharded trainkit step: 2x2x2 mesh == one device."""
import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

import trainkit
from comploss_jax import CmpSettings, EncoderConfig, SequenceClassifier, classification_losses, make_loss_fn


def run_steps(mesh_sizes, devices, steps=2):
  cfg = EncoderConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=16)
  model = SequenceClassifier(cfg, num_labels=3)
  rng = np.random.default_rng(0)
  batch = {"input_ids": rng.integers(1, 64, (8, 16)).astype(np.int32),
           "attention_mask": np.ones((8, 16), np.int32), "labels": rng.integers(0, 3, 8).astype(np.int32)}
  batch["attention_mask"][::3, 10:] = 0
  mesh = trainkit.make_mesh(mesh_sizes, devices)
  init = lambda r: model.init(r, batch["input_ids"][:1], batch["attention_mask"][:1])["params"]  # noqa: E731
  abstract = nn.meta.unbox(jax.eval_shape(init, jax.random.PRNGKey(0)))
  opt = ml_collections.ConfigDict(dict(learning_rate=1e-3, schedule="constant", clip_norm=1.0))
  tx, schedule, trainable = trainkit.make_optimizer(opt, steps, abstract)
  state, shardings = trainkit.create_train_state(init, tx, mesh, trainkit.DEFAULT_RULES, seed=0)

  def per_example(p, inputs, r, power):
    logits, _ = model.apply({"params": p}, inputs["input_ids"], inputs["attention_mask"], deterministic=False,
                            dropout_power=power, rngs={"dropout": r})
    return classification_losses(logits, inputs["labels"])

  batch_sharding = trainkit.batch_sharding(mesh)
  step = trainkit.make_train_step(make_loss_fn(per_example, CmpSettings(n_drop=2)), tx, shardings, batch_sharding,
                                  mesh=mesh, rules=trainkit.DEFAULT_RULES, schedule=schedule, trainable=trainable)
  losses = []
  for _ in range(steps):
    state, metrics = step(state, trainkit.to_global(batch, batch_sharding))
    losses.append({k: float(v) for k, v in metrics.items()})
  return losses, state


@pytest.mark.slow
def test_sharded_comparative_step_equals_one_device():
  sharded, state = run_steps({"data": 2, "fsdp": 2, "tensor": 2}, None)
  single, _ = run_steps({"data": 1}, jax.devices()[:1])
  assert state.params["encoder"]["layers"]["query"]["kernel"].sharding.spec == jax.sharding.PartitionSpec(
      None, "fsdp", "tensor", None)
  for a, b in zip(sharded, single):
    for key in ("loss", "task_loss/0", "task_loss/1", "task_loss/2"):
      np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)
  assert sharded[1]["loss"] != sharded[0]["loss"]  # the step trained
