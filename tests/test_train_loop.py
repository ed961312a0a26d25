"""trainkit end to end on the digits demo: sharded == single device, exact resume (each step logged
once), NaN guard, config checks before anything runs, FLOP rates (flops_per_step, tflops_per_s, mfu)."""
import json
import logging
import math
import os
import signal
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import trainkit
from configs.demo import digits as digits_config
from launch import demo
from trainkit import flops as flops_lib
from trainkit import loop as loop_lib
from trainkit import plan as plan_lib
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


# ---- FLOP rates: flops_per_step counted once on the step's jaxpr, tflops_per_s and mfu per interval ----

def flop_config(peak=0.0):
  """A 3-step demo run, each step logged, with config.peak_flops_per_device=peak."""
  config = small_config(total_steps=3)
  config.checkpoint.every = 100
  config.peak_flops_per_device = peak
  return config


def flop_run(tmp_path, peak=0.0, exp=None, train_step=None):
  """Runs flop_config(peak); returns its train records."""
  run(flop_config(peak), tmp_path, exp=exp, train_step=train_step)
  return trainkit.read_jsonl(tmp_path / "metrics.jsonl")


def summary(workdir):
  with open(workdir / "summary.json") as f:
    return json.load(f)


def test_a_run_logs_tflops_per_s_and_mfu_against_the_tables_peak(tmp_path):
  rows = flop_run(tmp_path, peak=0.0)  # 0: the peak from the table, by device kind
  assert [r["step"] for r in rows] == [1, 2, 3]
  done = summary(tmp_path)
  flops = done["flops_per_step"]
  assert flops > 0 and done["step_devices"] == 8
  # The CPU's figure is the host's; the 8 simulated devices share it.
  assert done["peak_flops_per_device"] == pytest.approx(plan_lib.TARGETS["cpu"].peak_flops / 8)
  for r in rows:
    assert math.isfinite(r["tflops_per_s"]) and r["tflops_per_s"] > 0
    assert math.isfinite(r["mfu"]) and 0 < r["mfu"] < 1
    # Over the same interval as steps_per_s / tokens_per_s.
    assert r["tflops_per_s"] == pytest.approx(flops * r["steps_per_s"] / 1e12, rel=1e-9)
    assert r["mfu"] == pytest.approx(flops * r["steps_per_s"] / plan_lib.TARGETS["cpu"].peak_flops, rel=1e-9)


@pytest.mark.parametrize("peak", [0.0, 1e9])
def test_an_unknown_device_logs_no_mfu_unless_its_peak_is_set(tmp_path, monkeypatch, caplog, peak):
  monkeypatch.setattr(loop_lib, "device_peak_flops", lambda devices: (None, "TPU v9"))
  caplog.set_level(logging.INFO)
  rows = flop_run(tmp_path, peak=peak)
  assert all(r["tflops_per_s"] > 0 for r in rows)  # the achieved rate needs no peak
  if peak:
    assert all(r["mfu"] == pytest.approx(r["tflops_per_s"] * 1e12 / (peak * 8), rel=1e-9) for r in rows)
    assert summary(tmp_path)["peak_flops_source"] == "config.peak_flops_per_device"
  else:
    assert not any("mfu" in r for r in rows)
    assert "no peak FLOP/s is known for device kind 'TPU v9'" in caplog.text
    assert "set config.peak_flops_per_device" in caplog.text
    assert summary(tmp_path)["peak_flops_per_device"] is None


def test_a_step_that_cannot_be_counted_runs_on_without_flop_rates(tmp_path, caplog):
  exp = demo.build(flop_config())
  # A plain wrapper: no .trace, and make_jaxpr cannot trace the mesh context the step enters.
  rows = flop_run(tmp_path, exp=exp, train_step=lambda state, batch: exp.train_step(state, batch))
  assert [r["step"] for r in rows] == [1, 2, 3]
  assert not any("mfu" in r or "tflops_per_s" in r for r in rows)
  assert "could not count the train step's FLOPs" in caplog.text
  assert "flops_per_step" not in summary(tmp_path)


def test_negative_peak_is_refused_naming_the_field(tmp_path, built):
  config = small_config()
  config.peak_flops_per_device = -1.0
  with pytest.raises(ValueError, match=r"config\.peak_flops_per_device must be FLOP/s of one device"):
    run(config, tmp_path, exp=built, train_step=never_compiled)


def test_flops_per_step_of_one_dense_layer_is_forward_plus_the_weight_gradient():
  batch, k, n = 8, 16, 4
  mesh = trainkit.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  rules = (("batch", ("data", "fsdp")),)
  layer = nn.Dense(n, use_bias=False)
  init = lambda rng: layer.init(rng, jnp.zeros((1, k)))["params"]  # noqa: E731
  tx = optax.adam(1e-3)
  state, shardings = trainkit.abstract_train_state(init, tx, mesh, rules)  # nothing allocated
  sharding = trainkit.batch_sharding(mesh, rules)

  def loss_fn(params, b, rng):
    return jnp.mean((layer.apply({"params": params}, b["x"]) - b["y"]) ** 2), {}

  step = trainkit.make_train_step(loss_fn, tx, shardings, sharding, mesh=mesh, rules=rules)
  b = {"x": jax.ShapeDtypeStruct((batch, k), jnp.float32, sharding=sharding),
       "y": jax.ShapeDtypeStruct((batch, n), jnp.float32, sharding=sharding)}
  # Forward x[8,16] @ W[16,4]: 2*8*16*4 = 1024; backward dW = x^T[16,8] @ dy[8,4]: 1024 more. No dx (x is
  # data, not a param); the loss, the gradient norm and Adam multiply no matrices.
  assert flops_lib.step_flops(step, state, b) == 2 * (2 * batch * k * n) == 2048
  # A step without make_train_step's .trace is counted through jax.make_jaxpr, the same way.
  plain = jax.jit(lambda p, bb: jax.grad(lambda q: loss_fn(q, bb, None)[0])(p))
  assert flops_lib.step_flops(plain, state.params, b) == 2048


def test_peak_table_by_device_kind():
  def devices(kind, platform="tpu", count=1):
    return [types.SimpleNamespace(device_kind=kind, platform=platform, process_index=0, id=i) for i in range(count)]

  assert plan_lib.device_peak_flops(devices("TPU v5 lite")) == (197e12, "TPU v5e")
  assert plan_lib.device_peak_flops(devices("TPU v5")) == (459e12, "TPU v5p")
  assert plan_lib.device_peak_flops(devices("TPU v6 lite")) == (918e12, "TPU v6e")
  assert plan_lib.device_peak_flops(devices("NVIDIA H200", "gpu")) == (989e12, "NVIDIA H200")
  assert plan_lib.device_peak_flops(devices("cpu", "cpu", 4))[0] == plan_lib.TARGETS["cpu"].peak_flops / 4
  assert plan_lib.device_peak_flops(devices("TPU v4 lite")) == (None, "TPU v4 lite")  # v4i: not in the table
