"""The step driver: resume, train, guard, log, evaluate, checkpoint, survive preemption.

    state = trainkit.train_loop(config, workdir, state, shardings, step_fn, data_iter, batch_sharding)

Config fields read: total_steps, log_every, eval_every (0: off), checkpoint.every, checkpoint.keep,
checkpoint.use_async, tokens_per_batch (optional: tokens/s from a fixed count; by default a batch's tokens
are the ones its `attention_mask` marks, counted on the host). The resolved config is written to
`<workdir>/config.json` and TensorBoard's hparams.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Callable

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from trainkit.checkpoint import Checkpointer
from trainkit.data import SkipCounter, to_global
from trainkit.metrics import MetricsWriter, Progress

GUARDED_METRICS = ("loss", "grad_norm")


class NonFiniteError(FloatingPointError):
  """A NaN/Inf loss or gradient norm; raised before any checkpoint of the bad state is written."""


class Preempted(SystemExit):
  """SIGTERM arrived: a checkpoint of the current step was written; rerun the same command."""

  def __init__(self, step: int):
    super().__init__(143)
    self.step = step


class _SigtermFlag:
  """Turns SIGTERM into a flag checked between steps (the handler itself must not save)."""

  def __init__(self):
    self.raised = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. a notebook worker): no preemption handling
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint after the current step, then exiting")
    self.raised = True

  def any_process(self) -> bool:
    if jax.process_count() == 1:
      return self.raised
    return bool(np.max(multihost_utils.process_allgather(np.int32(self.raised))))

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


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
  Returns the final state. Raises NonFiniteError, or Preempted after saving on SIGTERM.
  """
  ckpt_cfg = config.checkpoint
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), every=ckpt_cfg.every,
                              keep=ckpt_cfg.keep, use_async=ckpt_cfg.get("use_async", True))
  start = checkpointer.latest_step()
  if start is not None:
    state, data_state = checkpointer.restore(start, state, state_shardings)
    data_iter.set_state(data_state)
    logging.info("resumed from %s at step %d", checkpointer.directory, start)
  step = int(start or 0)
  total = int(config.total_steps)
  writer = MetricsWriter(workdir)
  writer.write_config(config)
  progress = Progress(step, total, enabled=progress_bar)
  fixed_tokens = config.get("tokens_per_batch", None)
  log_every = max(int(config.get("log_every", 1)), 1)
  eval_every = int(config.get("eval_every", 0) or 0)
  last_good = step
  last_metrics: dict = {}
  t_start = time.time()

  def report(at: int, device_metrics, tokens: int | None) -> None:
    """Fetches one step's metrics, stops on non-finite values, logs every `log_every` steps."""
    nonlocal last_good, last_metrics
    metrics = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    for name in GUARDED_METRICS:
      if name in metrics and not math.isfinite(metrics[name]):
        raise NonFiniteError(
            f"step {at}: {name} is {metrics[name]} ({_fmt(metrics)}). Stopped; no checkpoint after "
            f"step {last_good} was written. Lower the learning rate, clip gradients "
            f"(optimizer.clip_norm) or check the batch, then rerun to resume from step {last_good}.")
    last_good, last_metrics = at, metrics
    due = at % log_every == 0 or at == total
    rate = progress.update(at, metrics, tokens, new_interval=due)
    if due:
      writer.write(at, {**metrics, **rate})

  try:
    with _SigtermFlag() as sigterm:
      pending = None
      while step < total:
        host_batch = next(data_iter)
        tokens = fixed_tokens or _count_tokens(host_batch)
        state, metrics = train_step(state, to_global(host_batch, batch_sharding))
        step += 1
        if pending is not None:
          report(*pending)  # the previous step: already finished, so this does not stall dispatch
        pending = (step, metrics, tokens)
        preempted = sigterm.any_process()
        due_eval = eval_fn is not None and (step == total or (eval_every and step % eval_every == 0))
        save = step == total or preempted or checkpointer.should_save(step)
        if save or due_eval:
          report(*pending)  # a state is saved or evaluated only after its own step checked finite
          pending = None
        if save:
          checkpointer.save(step, state, data_iter.get_state())
        if due_eval:
          writer.write(step, eval_fn(state), prefix="eval")
        if preempted:
          checkpointer.wait()
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
