"""The runtime demo, end to end: a sharded residual MLP on scikit-learn's digits, with checkpoints.

    python launch/demo.py --config=configs/demo/digits.py --workdir=runs/demo [--config.total_steps=300]

Run it twice with a larger total_steps and the second run resumes from the first's last checkpoint.
It is also the smallest complete example of a trainer written on trainkit (tests import it).
"""
from __future__ import annotations

import dataclasses
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import trainkit  # noqa: E402  (after the path fix, so the script runs from a checkout)


class ResidualMLP(nn.Module):
  """x float32[B, F] -> (logits float32[B, C], aux); aux['hidden/i'] is the residual stream after block i."""
  width: int
  mlp_width: int
  depth: int
  num_classes: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    dense = lambda features, names, name: nn.Dense(  # noqa: E731
        features, name=name, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), names),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[1:]))
    h = dense(self.width, (None, "embed"), "embed")(x)
    aux = {"hidden/0": h}
    for i in range(self.depth):
      y = nn.LayerNorm(name=f"norm_{i}", scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(h)
      y = nn.gelu(dense(self.mlp_width, ("embed", "mlp"), f"up_{i}")(y))
      y = nn.with_logical_constraint(y, ("batch", "mlp"))
      y = nn.Dropout(self.dropout, deterministic=not train)(y)
      h = h + dense(self.width, ("mlp", "embed"), f"down_{i}")(y)
      aux[f"hidden/{i + 1}"] = h
    return dense(self.num_classes, ("embed", "classes"), "head")(h), aux


def digits_splits(test_size: int, seed: int):
  """scikit-learn's 1,797 digits as (train records, test arrays); pixels scaled to [0, 1]."""
  from sklearn.datasets import load_digits
  digits = load_digits()
  order = np.random.default_rng(seed).permutation(len(digits.target))
  x = (digits.data[order] / 16.0).astype(np.float32)
  y = digits.target[order].astype(np.int32)
  train = [{"x": x[i], "y": y[i]} for i in range(test_size, len(y))]
  return train, {"x": x[:test_size], "y": y[:test_size]}


@dataclasses.dataclass
class Experiment:
  """Everything trainkit.train_loop needs, built from a config (tests swap parts of it)."""
  config: object
  model: ResidualMLP
  mesh: jax.sharding.Mesh
  state: trainkit.TrainState
  shardings: trainkit.TrainState
  train_step: object
  data_iter: object
  batch_sharding: object
  eval_fn: object


def build(config, devices=None) -> Experiment:
  mesh = trainkit.make_mesh(config.mesh, devices)
  model = ResidualMLP(**config.model)
  train_records, test = digits_splits(config.data.test_size, config.data.split_seed)
  sample = jnp.zeros((1, train_records[0]["x"].shape[0]), jnp.float32)
  init_params = lambda rng: model.init(rng, sample)["params"]  # noqa: E731
  abstract = nn.meta.unbox(jax.eval_shape(init_params, jax.random.PRNGKey(0)))
  tx, schedule, trainable = trainkit.make_optimizer(config.optimizer, config.total_steps, abstract)
  state, shardings = trainkit.create_train_state(init_params, tx, mesh, config.rules, config.seed)
  batch_sharding = trainkit.batch_sharding(mesh, config.rules)

  def loss_fn(params, batch, rng):
    logits, _ = model.apply({"params": params}, batch["x"], train=True, rngs={"dropout": rng})
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["y"])}

  train_step = trainkit.make_train_step(
      loss_fn, tx, shardings, batch_sharding, mesh=mesh, rules=config.rules, schedule=schedule,
      trainable=trainable, grad_accum_steps=config.optimizer.grad_accum_steps)

  @jax.jit
  def test_accuracy(params):
    logits, _ = model.apply({"params": params}, test["x"])
    return {"accuracy": jnp.mean(jnp.argmax(logits, -1) == test["y"])}

  data_iter = trainkit.make_train_iterator(train_records, global_batch_size=config.batch_size, seed=config.seed)
  return Experiment(config, model, mesh, state, shardings, train_step, data_iter, batch_sharding,
                    lambda s: test_accuracy(s.params))


def train(config, workdir: str, devices=None, progress_bar: bool = True) -> trainkit.TrainState:
  exp = build(config, devices)
  return trainkit.train_loop(config, workdir, exp.state, exp.shardings, exp.train_step, exp.data_iter,
                             exp.batch_sharding, eval_fn=exp.eval_fn, progress_bar=progress_bar)


def main(argv):
  del argv
  from absl import flags
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}; mesh {dict(config.mesh)}")
  train(config, workdir)
  records = trainkit.read_jsonl(os.path.join(workdir, "metrics.jsonl"), split="eval")
  print(f"\nfinal test accuracy {records[-1]['accuracy']:.3f} at step {records[-1]['step']}")
  print(f"metrics: {os.path.join(workdir, 'metrics.jsonl')}  (JSON lines)")
  print(f"TensorBoard: tensorboard --logdir {os.path.join(workdir, 'tensorboard')}")
  print(f"checkpoints: {os.path.join(workdir, 'checkpoints')}  (rerun with a larger --config.total_steps to resume)")


if __name__ == "__main__":
  # Simulated CPU devices so the demo shards on a laptop; a no-op where real accelerators exist.
  os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", "configs/demo/digits.py", "Experiment config file (locked: "
                                  "a misspelt --config.key fails).", lock_config=True)
  flags.DEFINE_string("workdir", "runs/demo", "Directory for checkpoints, metrics and TensorBoard logs.")
  app.run(main)
