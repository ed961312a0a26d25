"""The step driver: resume, train, guard, log, evaluate, checkpoint, survive preemption.

    state = trainkit.train_loop(config, workdir, state, shardings, step_fn, data_iter, batch_sharding)

Config fields read: total_steps, log_every, eval_every (0: off), checkpoint.every, checkpoint.keep,
checkpoint.use_async, batch_size (checked against the data-parallel size), tokens_per_batch (optional:
tokens/s from a fixed count; by default a batch's tokens are the ones its `attention_mask` marks, counted
on the host), peak_flops_per_device (optional float, FLOP/s of one device for MFU; 0 or absent: the
table in trainkit/plan.py by the device kind). The resolved config is written to `<workdir>/config.json` and
TensorBoard's hparams.

Each logged interval has steps_per_s and tokens_per_s, and from the step's FLOPs (its jaxpr's matmuls,
counted once before the first step, trainkit/flops.py) tflops_per_s achieved and mfu (that over the peak
of all the step's devices); left out when the count fails or the device's peak is unknown.

A resumed run first drops the records after its checkpoint's step from `<workdir>/metrics.jsonl` (the
steps it is about to redo), so readers see each step once. Preemption (SIGTERM) is noticed as
trainkit/preemption.py describes: on several processes through JAX's preemption sync point, with no
collective on ordinary steps.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable

import jax
import numpy as np
from absl import logging

from trainkit.checkpoint import Checkpointer
from trainkit.data import SkipCounter, to_global
from trainkit.flops import flop_rates, step_flops
from trainkit.metrics import MetricsWriter, Progress
from trainkit.plan import device_peak_flops
from trainkit.preemption import PreemptionWatch
from trainkit.workdir_lock import holds_workdir_lock

GUARDED_METRICS = ("loss", "grad_norm")


class NonFiniteError(FloatingPointError):
  """A NaN/Inf loss or gradient norm; raised before any checkpoint of the bad state is written."""


class Preempted(SystemExit):
  """SIGTERM arrived: a checkpoint of the current step was written; rerun the same command."""

  def __init__(self, step: int):
    super().__init__(143)
    self.step = step


def validate_config(config, batch_sharding=None) -> None:
  """Raises ValueError naming the config field for settings the loop cannot run with; cheap, so a run
  fails here rather than after restoring a checkpoint or compiling a step."""
  total = config.get("total_steps", None)
  if total is None or int(total) <= 0:
    raise ValueError(f"config.total_steps must be a positive number of steps, got {total}")
  every = config.get("checkpoint", {}).get("every", None)
  if every is None or int(every) <= 0:
    raise ValueError(f"config.checkpoint.every must be a positive number of steps (a checkpoint every N "
                     f"steps), got {every}")
  peak = config.get("peak_flops_per_device", 0.0)
  if peak is not None and not float(peak) >= 0:
    raise ValueError(f"config.peak_flops_per_device must be FLOP/s of one device, or 0 for the table's figure "
                     f"(trainkit/plan.py), got {peak}")
  batch = config.get("batch_size", None)
  if batch is not None and batch_sharding is not None:
    _check_divisible(int(batch), batch_sharding, f"config.batch_size={batch}")


def data_parallel_size(batch_sharding) -> tuple[int, str]:
  """How many ways `batch_sharding` splits the batch dimension, and the mesh axes that do it
  ('data=2 x fsdp=2'); (1, '') for shardings that do not split it by named mesh axes."""
  spec = getattr(batch_sharding, "spec", None)
  mesh = getattr(batch_sharding, "mesh", None)
  if not spec or mesh is None or spec[0] is None:
    return 1, ""
  axes = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
  sizes = {name: int(mesh.shape[name]) for name in axes}
  return math.prod(sizes.values()), " x ".join(f"{name}={size}" for name, size in sizes.items())


def _check_divisible(rows: int, batch_sharding, what: str) -> None:
  size, axes = data_parallel_size(batch_sharding)
  if rows % size:
    raise ValueError(f"{what}: a global batch of {rows} rows is not divisible by the data-parallel size "
                     f"{size} (mesh {axes}). Set config.batch_size to a multiple of {size}, or change "
                     f"config.mesh.")


@holds_workdir_lock  # issue 19: one run per workdir, the lock held for the whole call (trainkit/workdir_lock.py)
def train_loop(
    config,
    workdir: str,
    state,
    state_shardings,
    train_step: Callable,
    data_iter,
    batch_sharding,
    *,
    eval_fn: Callable[[object], dict] | None = None,
    skip_counter: SkipCounter | None = None,
    progress_bar: bool = True,
):
  """Runs `train_step` until `config.total_steps`, resuming from the latest checkpoint in workdir.

  Args:
    state / state_shardings: from `create_train_state` (a fresh state; replaced on resume).
    train_step: from `make_train_step`.
    data_iter: a grain DatasetIterator yielding host-local numpy batches; its position is saved
      with each checkpoint and restored on resume.
    eval_fn: state -> dict of scalars, called every `eval_every` steps and at the end.
  Returns the final state. Raises ValueError for an unusable config (before restoring or compiling),
  NonFiniteError, or Preempted after saving on SIGTERM.
  """
  validate_config(config, batch_sharding)
  ckpt_cfg = config.checkpoint
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), every=ckpt_cfg.every,
                              keep=ckpt_cfg.keep, use_async=ckpt_cfg.get("use_async", True))
  # The newest step that restores; damaged newer steps are reported, moved aside and logged.
  start, state, data_state = checkpointer.restore_latest(state, state_shardings)
  if start is not None:
    data_iter.set_state(data_state)
    logging.info("resumed from %s at step %d", checkpointer.directory, start)
  step = int(start or 0)
  total = int(config.total_steps)
  if jax.process_index() == 0:  # the steps after the checkpoint are redone: their old records go
    _drop_records_after(os.path.join(workdir, "metrics.jsonl"), step)
  writer = MetricsWriter(workdir, resumed_at=start)
  writer.write_config(config)
  progress = Progress(step, total, enabled=progress_bar)
  fixed_tokens = config.get("tokens_per_batch", None)
  log_every = max(int(config.get("log_every", 1)), 1)
  eval_every = int(config.get("eval_every", 0) or 0)
  last_good, last_saved = step, start
  last_metrics: dict = {}
  flops_per_step, peak_total = None, None  # counted on the first step's shapes
  t_start = time.time()

  def report(at: int, device_metrics, tokens: int | None) -> None:
    """Fetches one step's metrics, stops on non-finite values, logs every `log_every` steps."""
    nonlocal last_good, last_metrics
    metrics = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    for name in GUARDED_METRICS:
      if name in metrics and not math.isfinite(metrics[name]):
        resume = (f"a rerun resumes from the latest checkpoint, step {last_saved}" if last_saved is not None
                  else "no checkpoint exists, so a rerun starts again from step 0")
        raise NonFiniteError(
            f"step {at}: {name} is {metrics[name]} ({_fmt(metrics)}). Stopped; nothing after step "
            f"{last_good} was saved, and {resume}. Lower the learning rate, clip gradients "
            f"(optimizer.clip_norm) or check the batch before rerunning.")
    last_good, last_metrics = at, metrics
    due = at % log_every == 0 or at == total
    rate = progress.update(at, metrics, tokens, new_interval=due)
    if due:  # FLOP rates over the same interval as tokens_per_s
      writer.write(at, {**metrics, **rate, **flop_rates(flops_per_step, rate.get("steps_per_s"), peak_total)})

  try:
    with PreemptionWatch(step, checkpointer.manager) as preemption:
      pending, first_step = None, step
      while step < total:
        host_batch = next(data_iter)
        if step == first_step:  # the first batch's rows, checked before the step compiles
          rows = jax.tree.leaves(host_batch)[0].shape[0] * jax.process_count()
          _check_divisible(rows, batch_sharding, f"the data iterator's batches (config.batch_size="
                                                 f"{config.get('batch_size', None)})")
        tokens = fixed_tokens or _count_tokens(host_batch)
        batch = to_global(host_batch, batch_sharding)
        if step == first_step:  # traced, not compiled: before the step donates the state
          flops_per_step, peak_total = _flops_and_peak(config, workdir, train_step, state, batch, batch_sharding)
        state, metrics = train_step(state, batch)
        step += 1
        if pending is not None:
          report(*pending)  # the previous step: already finished, so this does not stall dispatch
        pending = (step, metrics, tokens)
        # Every process evaluates the same boundaries: where a collective may run in 'collective' mode.
        boundary = step == total or step % log_every == 0 or checkpointer.should_save(step)
        preempted = preemption.check(step, boundary)
        due_eval = eval_fn is not None and (step == total or (eval_every and step % eval_every == 0))
        save = step == total or preempted or checkpointer.should_save(step)
        if save or due_eval:
          report(*pending)  # a state is saved or evaluated only after its own step checked finite
          pending = None
        if save:
          checkpointer.save(step, state, data_iter.get_state())
          last_saved = step
        if due_eval:
          writer.write(step, eval_fn(state), prefix="eval")
        if preempted:
          checkpointer.wait()
          logging.warning("preempted: checkpoint of step %d written; rerun the same command to resume", step)
          raise Preempted(step)
      if pending is not None:
        report(*pending)
  finally:
    checkpointer.close()
    progress.close()
    writer.close()

  summary = {"final_step": step, "last_metrics": last_metrics, "wall_seconds": time.time() - t_start,
             "skipped_records": dict(skip_counter.counts) if skip_counter else {},
             "metrics_jsonl": writer.jsonl_path, "tensorboard": writer.tensorboard_dir,
             "checkpoints": str(checkpointer.directory)}
  update_summary(workdir, **summary)
  logging.info("done at step %d; metrics: %s (TensorBoard: %s); checkpoints: %s", step,
               writer.jsonl_path, writer.tensorboard_dir, checkpointer.directory)
  return state


def _flops_and_peak(config, workdir: str, train_step, state, batch,
                    batch_sharding) -> tuple[int | None, float | None]:
  """FLOPs of one step on this global batch's shapes, and the peak FLOP/s of all the devices the step runs
  on (config.peak_flops_per_device, or the table's figure for their kind, times the device count); each
  None when unknown (a log line says why). Recorded in the log and in `<workdir>/summary.json`."""
  flops = step_flops(train_step, state, batch)
  if flops is None:
    return None, None
  devices = sorted(getattr(batch_sharding, "device_set", None) or jax.devices(), key=lambda d: d.id)
  override = float(config.get("peak_flops_per_device", 0.0) or 0.0)
  if override > 0:
    per_device, source = override, "config.peak_flops_per_device"
  else:
    per_device, source = device_peak_flops(devices)
  update_summary(workdir, flops_per_step=flops, peak_flops_per_device=per_device, peak_flops_source=source,
                 step_devices=len(devices))
  if per_device is None:
    logging.info("no peak FLOP/s is known for device kind %r (trainkit/plan.py TARGETS); mfu is not logged: "
                 "set config.peak_flops_per_device to one device's dense peak FLOP/s to log it", source)
    return flops, None
  logging.info("flops_per_step=%.4g; mfu against %.4g FLOP/s per device (%s) x %d devices", flops, per_device,
               source, len(devices))
  return flops, per_device * len(devices)


def _drop_records_after(path: str, step: int) -> None:
  """Rewrites the JSON-lines file at `path` (if any) without the records of steps after `step` and
  without a torn line (a run killed mid-write); atomically, so a crash here loses nothing."""
  if not os.path.exists(path):
    return
  dropped = 0
  with open(path) as f, open(path + ".tmp", "w") as out:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        record = None
      if isinstance(record, dict) and int(record.get("step", 0)) <= step:
        out.write(line if line.endswith("\n") else line + "\n")
      else:
        dropped += 1
  if not dropped:
    os.remove(path + ".tmp")
    return
  os.replace(path + ".tmp", path)
  logging.info("%s: dropped %d records after step %d (that run's later steps are redone)", path, dropped, step)


def _count_tokens(host_batch) -> int | None:
  """The global batch's tokens: the host's attention_mask ones times the processes (hosts hold equal
  shares); None when the batch has no attention_mask."""
  mask = host_batch.get("attention_mask") if isinstance(host_batch, dict) else None
  if mask is None:
    return None
  return int(np.sum(mask)) * jax.process_count()


def update_summary(workdir: str, **fields) -> dict:
  """Merges fields into `<workdir>/summary.json` (train_loop starts it) and returns the whole summary.

  The workdir is shared between hosts, so process 0 alone reads and writes the file (atomically); the
  other processes get `fields` back.
  """
  if jax.process_index() != 0:
    return dict(fields)
  path = os.path.join(workdir, "summary.json")
  summary = {}
  if os.path.exists(path):
    with open(path) as f:
      summary = json.load(f)
  summary.update(fields)
  write_json(path, summary)
  return summary


def write_json(path: str, obj, indent: int = 2, default=None) -> None:
  """Writes JSON atomically (a temporary file, then os.replace): a reader or a resumed run never sees
  half of it. `default` converts what JSON cannot hold (as in json.dump)."""
  with open(path + ".tmp", "w") as f:
    json.dump(obj, f, indent=indent, default=default)
  os.replace(path + ".tmp", path)


def _fmt(metrics: dict) -> str:
  return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
