"""Metrics to JSON lines and TensorBoard, plus a tqdm progress bar. Process 0 writes; others no-op."""
from __future__ import annotations

import json
import math
import os
import time

import jax
import numpy as np
import tqdm


class MetricsWriter:
  """`write(step, {'loss': ...}, prefix='train')` -> `<workdir>/metrics.jsonl` + TensorBoard events."""

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self.tensorboard_dir = os.path.join(workdir, "tensorboard")
    if self.active:
      from tensorboardX import SummaryWriter  # imported lazily: only process 0 needs it
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(self.jsonl_path, "a")
      self._tb = SummaryWriter(self.tensorboard_dir)

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

  def close(self) -> None:
    if self.active:
      self._jsonl.close()
      self._tb.close()


def read_jsonl(path: str, split: str = "train") -> list[dict]:
  """The records of one split, in order (a resumed run appends after the earlier ones)."""
  with open(path) as f:
    return [r for r in map(json.loads, f) if r.get("split") == split]


class Progress:
  """tqdm bar over steps showing loss, steps/s and tokens/s (tokens counted by the trainer)."""

  def __init__(self, start: int, total: int, enabled: bool = True):
    self.bar = tqdm.tqdm(initial=start, total=total, unit="step", dynamic_ncols=True,
                         disable=not enabled or jax.process_index() != 0)
    self._t0, self._step0 = time.perf_counter(), start

  def update(self, step: int, metrics: dict, tokens_per_step: int | None = None) -> dict:
    """Advances to `step`; returns the throughput figures it shows (for logging)."""
    elapsed = max(time.perf_counter() - self._t0, 1e-9)
    rate = {"steps_per_s": (step - self._step0) / elapsed}
    if tokens_per_step:
      rate["tokens_per_s"] = rate["steps_per_s"] * tokens_per_step
    shown = {"loss": f"{metrics['loss']:.4f}", **{k: f"{v:.3g}" for k, v in rate.items()}}
    self.bar.set_postfix(shown, refresh=False)
    self.bar.update(step - self.bar.n)
    return rate

  def close(self) -> None:
    self.bar.close()
