"""Metrics to JSON lines and TensorBoard, plus a tqdm progress bar. Process 0 writes; others no-op."""
from __future__ import annotations

import json
import math
import os
import sys
import time

import jax
import numpy as np
import tqdm


def summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch when torch is not loaded yet.

  tensorboardX imports torch whenever it is installed, only so that it can accept torch tensors; that is
  seconds of CPU in every process that logs (each run of a sweep, each host of a launch), and this writer
  passes Python floats. torch stays importable afterwards: only tensorboardX's own import sees it missing.
  """
  if "torch" in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules["torch"] = None  # `import torch` raises ImportError until the entry is removed
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules["torch"]
  return SummaryWriter


class MetricsWriter:
  """`write(step, {'loss': ...}, prefix='train')` -> `<workdir>/metrics.jsonl` + TensorBoard events."""

  def __init__(self, workdir: str, resumed_at: int | None = None):
    """resumed_at: the step a resumed run restarts from; TensorBoard then drops the events of any later
    step the interrupted run had written (as the loop drops them from metrics.jsonl), so each step
    shows once."""
    self.active = jax.process_index() == 0
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self.tensorboard_dir = os.path.join(workdir, "tensorboard")
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(self.jsonl_path, "a")
      # Imported here, lazily: only process 0 needs it.
      self._tb = summary_writer_class()(self.tensorboard_dir,
                               **({"purge_step": resumed_at + 1} if resumed_at is not None else {}))

  def write(self, step: int, metrics: dict, prefix: str = "train") -> None:
    if not self.active:
      return
    scalars = {k: float(np.asarray(v)) for k, v in metrics.items()}
    record = {"step": int(step), "split": prefix, "time": time.time(), **scalars}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for name, value in scalars.items():
      if math.isfinite(value):
        self._tb.add_scalar(f"{prefix}/{name}", value, step)

  def write_config(self, config) -> None:
    """The resolved config of the run: `<workdir>/config.json` and TensorBoard's HPARAMS tab (flattened
    dotted keys; lists and None as strings), so runs of a sweep can be told apart and filtered."""
    if not self.active:
      return
    as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    from trainkit.loop import write_json  # noqa: PLC0415 (loop imports this module)
    write_json(os.path.join(os.path.dirname(self.jsonl_path), "config.json"), as_dict, default=str)
    from tensorboardX.summary import hparams
    flat = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in _flatten(as_dict).items()}
    for summary in hparams(flat, {"train/loss": float("nan")}):
      self._tb.file_writer.add_summary(summary)

  def close(self) -> None:
    if self.active:
      self._jsonl.close()
      self._tb.close()


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def read_jsonl(path: str, split: str = "train") -> list[dict]:
  """The records of one split, in order (a resumed run appends after the earlier ones)."""
  with open(path) as f:
    return [r for r in map(json.loads, f) if r.get("split") == split]


class Progress:
  """tqdm bar over steps showing loss, steps/s and tokens/s over the last logging interval.

  The rates cover the steps since the previous `update(..., new_interval=True)`: the first interval
  includes compilation, later ones do not (a running average since the start would carry the compile
  time for the whole run).
  """

  def __init__(self, start: int, total: int, enabled: bool = True):
    self.bar = tqdm.tqdm(initial=start, total=total, unit="step", dynamic_ncols=True,
                         disable=not enabled or jax.process_index() != 0)
    self._t_mark, self._step_mark, self._tokens = time.perf_counter(), start, 0
    self._rate: dict = {}

  def update(self, step: int, metrics: dict, tokens: int | None = None, new_interval: bool = False) -> dict:
    """Advances to `step` (`tokens`: this step's tokens, or None); returns the current interval's rates.
    new_interval=True closes the interval at this step (call it when the rates are logged)."""
    self._tokens += tokens or 0
    elapsed = max(time.perf_counter() - self._t_mark, 1e-9)
    if step > self._step_mark:
      self._rate = {"steps_per_s": (step - self._step_mark) / elapsed}
      if self._tokens:
        self._rate["tokens_per_s"] = self._tokens / elapsed
    shown = {"loss": f"{metrics['loss']:.4f}", **{k: f"{v:.3g}" for k, v in self._rate.items()}}
    self.bar.set_postfix(shown, refresh=False)
    self.bar.update(step - self.bar.n)
    rate = dict(self._rate)
    if new_interval:
      self._t_mark, self._step_mark, self._tokens = time.perf_counter(), step, 0
    return rate

  def close(self) -> None:
    self.bar.close()
