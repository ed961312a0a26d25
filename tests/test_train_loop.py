"""trainkit end to end on the digits demo: sharded == single device, exact resume (each step logged
once), NaN guard, config checks before anything runs."""
import os
import signal

import jax
import numpy as np
import pytest

import trainkit
from configs.demo import digits as digits_config
from launch import demo
from trainkit.config_files import apply_overrides


def small_config(**overrides):
  config = digits_config.get_config()
  config.model.width, config.model.mlp_width = 32, 64
  config.batch_size = 32
  config.total_steps = 12
  config.log_every = 1
  config.eval_every = 0
  config.checkpoint.every = 5
  config.checkpoint.use_async = False
  return apply_overrides(config, overrides)


def losses(workdir):
  return {r["step"]: r["loss"] for r in trainkit.read_jsonl(os.path.join(workdir, "metrics.jsonl"))}


def host_params(state):
  return jax.tree.map(np.asarray, jax.device_get(state.params))


class Intercept:
  """Wraps a data iterator; calls `action(batch)` on the n-th batch (1-based) it hands out."""

  def __init__(self, inner, n, action):
    self.inner, self.n, self.action, self.count = inner, n, action, 0

  def __next__(self):
    batch = next(self.inner)
    self.count += 1
    return self.action(batch) if self.count == self.n else batch

  def get_state(self):
    return self.inner.get_state()

  def set_state(self, state):
    self.inner.set_state(state)


def run(config, workdir, devices=None, intercept=None, exp=None, train_step=None):
  exp = exp or demo.build(config, devices)
  data = Intercept(exp.data_iter, *intercept) if intercept else exp.data_iter
  return trainkit.train_loop(config, str(workdir), exp.state, exp.shardings, train_step or exp.train_step, data,
                             exp.batch_sharding, eval_fn=exp.eval_fn, progress_bar=False)


def test_sharded_2x2x2_equals_one_device(tmp_path):
  config = small_config()
  sharded = run(config, tmp_path / "sharded")
  single = run(small_config(mesh={"data": 1, "fsdp": 1, "tensor": 1}), tmp_path / "single",
               devices=jax.devices()[:1])
  a, b = losses(tmp_path / "sharded"), losses(tmp_path / "single")
  assert sorted(a) == list(range(1, 13))
  np.testing.assert_allclose([a[s] for s in a], [b[s] for s in a], rtol=1e-5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7),
               host_params(sharded), host_params(single))
  # The first step was from the same initial params (the sharded init equals the unsharded one).
  assert a[1] == pytest.approx(b[1], rel=1e-6)


def test_params_land_with_the_rules_shardings(tmp_path):
  exp = demo.build(small_config())
  specs = jax.tree.map(lambda s: tuple(s.spec), exp.shardings.params)
  assert specs["up_0"]["kernel"] == ("fsdp", "tensor")
  assert specs["down_1"]["kernel"] == ("tensor", "fsdp")
  assert specs["head"]["kernel"] == ("fsdp", None)
  assert exp.state.params["up_0"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  # 128x64 kernel split over fsdp=2 and tensor=2: each device holds a 16x32 block.
  shard_shapes = {s.data.shape for s in exp.state.params["up_0"]["kernel"].addressable_shards}
  assert shard_shapes == {(16, 32)}
  # Adam's moments take their param's sharding; the step counter is replicated.
  adam = exp.state.opt_state.inner_states["trainable"].inner_state
  mu = next(s for s in jax.tree.leaves(adam, is_leaf=lambda x: hasattr(x, "mu")) if hasattr(s, "mu")).mu
  assert mu["up_0"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert exp.state.step.sharding.spec == jax.sharding.PartitionSpec()
  assert exp.batch_sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))


def test_resume_after_sigterm_continues_on_exactly_the_next_batch(tmp_path):
  config = small_config()
  run(config, tmp_path / "straight")

  def sigterm(batch):
    os.kill(os.getpid(), signal.SIGTERM)  # like a pod preemption notice during step 7
    return batch

  with pytest.raises(trainkit.Preempted) as stopped:
    run(config, tmp_path / "resumed", intercept=(7, sigterm))
  assert stopped.value.step == 7 and stopped.value.code == 143
  resumed = run(config, tmp_path / "resumed")
  straight, again = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
  assert sorted(again) == list(range(1, 13))  # steps 8..12 come from the second process
  assert [again[s] for s in range(1, 13)] == [straight[s] for s in range(1, 13)]
  final = run(config, tmp_path / "straight")  # a finished run restores and does nothing
  jax.tree.map(np.testing.assert_array_equal, host_params(resumed), host_params(final))


def test_grad_accumulation_equals_one_big_batch(tmp_path):
  base = small_config(**{"model.dropout": 0.0, "total_steps": 4})
  run(base, tmp_path / "one")
  run(small_config(**{"model.dropout": 0.0, "total_steps": 4, "optimizer.grad_accum_steps": 4}), tmp_path / "acc")
  a, b = losses(tmp_path / "one"), losses(tmp_path / "acc")
  np.testing.assert_allclose([a[s] for s in a], [b[s] for s in a], rtol=1e-5)


@pytest.mark.parametrize("bad_step, saved, resume", [
    (3, [], "no checkpoint exists, so a rerun starts again from step 0"),
    (7, [5], "a rerun resumes from the latest checkpoint, step 5"),
    (10, [5], "a rerun resumes from the latest checkpoint, step 5")])
def test_nan_stops_the_run_naming_step_and_metric_and_saves_nothing_after(tmp_path, bad_step, saved, resume):
  def poison(batch):
    return dict(batch, x=np.full_like(batch["x"], np.nan))

  with pytest.raises(trainkit.NonFiniteError, match=rf"step {bad_step}: loss is nan") as stopped:
    run(small_config(), tmp_path, intercept=(bad_step, poison))
  assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == saved
  # The message says what a rerun will find, not the last finite step (which is no checkpoint).
  assert f"nothing after step {bad_step - 1} was saved, and {resume}." in str(stopped.value)


def test_a_run_resumed_after_a_crash_logs_each_step_once(tmp_path):
  config = small_config()
  run(config, tmp_path / "straight")

  def crash(batch):
    raise RuntimeError("host lost")  # like a kill while drawing step 9's batch: steps 6..8 are redone

  with pytest.raises(RuntimeError, match="host lost"):
    run(config, tmp_path / "resumed", intercept=(9, crash))
  logged = [r["step"] for r in trainkit.read_jsonl(tmp_path / "resumed" / "metrics.jsonl")]
  assert logged == list(range(1, 8))  # metrics lag a step: 1..7 were written, 6 and 7 after checkpoint 5
  with open(tmp_path / "resumed" / "metrics.jsonl", "a") as f:
    f.write('{"step": 8, "split": "tra')  # and the kill tore the line being written
  run(config, tmp_path / "resumed")
  rows = trainkit.read_jsonl(tmp_path / "resumed" / "metrics.jsonl")
  assert [r["step"] for r in rows] == list(range(1, 13))
  assert {r["step"]: r["loss"] for r in rows} == losses(tmp_path / "straight")


@pytest.fixture(scope="module")
def built():
  return demo.build(small_config())


def never_compiled(state, batch):
  pytest.fail("the train step ran (and compiled) before the config was checked")


@pytest.mark.parametrize("field, value, message", [
    ("total_steps", 0, r"config\.total_steps must be a positive number of steps, got 0"),
    ("checkpoint.every", 0, r"config\.checkpoint\.every must be a positive number of steps .*got 0"),
    ("checkpoint.every", -5, r"config\.checkpoint\.every must be a positive number of steps .*got -5"),
    ("batch_size", 30, r"config\.batch_size=30: a global batch of 30 rows is not divisible by the "
                       r"data-parallel size 4 \(mesh data=2 x fsdp=2\)\. Set config\.batch_size to a multiple of 4")])
def test_unusable_config_fails_naming_the_field_before_restoring_or_compiling(tmp_path, built, field, value,
                                                                              message):
  with pytest.raises(ValueError, match=message):
    run(small_config(**{field: value}), tmp_path, exp=built, train_step=never_compiled)
  assert not os.path.exists(tmp_path / "checkpoints")  # failed before the checkpoint manager started


def test_batches_the_mesh_cannot_split_fail_before_the_step_compiles(tmp_path, built):
  """The check also covers trainers whose step batch is not config.batch_size (comploss divides it)."""
  with pytest.raises(ValueError, match=r"the data iterator's batches \(config\.batch_size=32\): a global "
                                       r"batch of 30 rows is not divisible by the data-parallel size 4"):
    run(small_config(), tmp_path, exp=built, train_step=never_compiled,
        intercept=(1, lambda batch: {k: v[:30] for k, v in batch.items()}))


def test_relative_workdir_checkpoints_and_resumes(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # Orbax wants absolute paths: the runtime must make them so
  config = small_config(total_steps=3)
  config.checkpoint.every = 2
  run(config, "relative/run")
  assert sorted(os.listdir(tmp_path / "relative" / "run" / "checkpoints")) == ["2", "3"]
  config.total_steps = 4
  run(config, "relative/run")
  assert sorted(losses(tmp_path / "relative" / "run")) == [1, 2, 3, 4]
