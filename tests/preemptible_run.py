"""A tiny trainkit run (the digits demo) that can signal itself mid-run; used by test_preemption.py.

    python tests/preemptible_run.py WORKDIR [--signal=KILL|TERM --at=N [--signal_process=I] [--pause=S]]
    python launch/local.py --processes=2 --cpu_devices=4 -- tests/preemptible_run.py WORKDIR ...

With --signal, the process sends itself that signal when it draws its N-th batch (so the signal lands
during step N, like a preemption notice or an OOM kill); with several processes, --signal_process
picks the one that does (default: all of them), and --pause slows that process down by S seconds a
step once it has signalled, so JAX's preemption sync (which polls for SIGTERM once a second) is heard
before the run would end anyway. The mesh is data-parallel over all devices.

A run writes `<workdir>/batches.jsonl` (one line per batch drawn: step and the first example's label and
pixel checksum; `batches_p<i>.jsonl` per process when several run) so a test can see lost or repeated
batches, and `<workdir>/preemption_p<i>.json`: how process i learnt of preemption (trainkit.preemption's
mode), how many host-level collectives that took, and the step it stopped at when preempted. A run that
reaches the last step writes `<workdir>/final_params.npz`.
"""
import argparse
import json
import os
import signal
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

import trainkit  # noqa: E402
from trainkit import distributed, preemption  # noqa: E402
from configs.demo import digits  # noqa: E402
from launch import demo  # noqa: E402

TOTAL_STEPS, CHECKPOINT_EVERY = 14, 3


def config(total_steps=TOTAL_STEPS, log_every=1, checkpoint_every=CHECKPOINT_EVERY):
  c = digits.get_config("data=-1,fsdp=1,tensor=1")
  c.model.width, c.model.mlp_width = 32, 64  # dropout stays on: the per-step rng must resume too
  c.batch_size, c.total_steps, c.log_every, c.eval_every = 16, total_steps, log_every, 0
  c.checkpoint.every, c.checkpoint.keep = checkpoint_every, 2  # async writes: a kill may land mid-write
  return c


def digits_splits(test_size: int, seed: int):
  """launch.demo.digits_splits on the same digits (scikit-learn's digits.csv.gz, read as load_digits reads
  it) without importing scikit-learn, and scipy with it: seconds of CPU in each run the tests start."""
  import gzip
  import importlib.util
  package = importlib.util.find_spec("sklearn").submodule_search_locations[0]  # found, not imported
  with gzip.open(os.path.join(package, "datasets", "data", "digits.csv.gz"), "rt") as f:
    data = np.loadtxt(f, delimiter=",")
  pixels, target = data[:, :-1], data[:, -1].astype(int)
  order = np.random.default_rng(seed).permutation(len(target))
  x = (pixels[order] / 16.0).astype(np.float32)
  y = target[order].astype(np.int32)
  train = [{"x": x[i], "y": y[i]} for i in range(test_size, len(y))]
  return train, {"x": x[:test_size], "y": y[:test_size]}


demo.digits_splits = digits_splits


class Recording:
  """Wraps the data iterator: logs each batch drawn, and signals this process at the chosen draw."""

  def __init__(self, inner, log_path, signum=None, at=0, pause=0.0):
    self.inner, self.log_path, self.signum, self.at, self.pause, self.drawn = inner, log_path, signum, at, pause, 0

  def __next__(self):
    batch = next(self.inner)
    self.drawn += 1
    step = self.drawn + self.start
    with open(self.log_path, "a") as f:
      f.write(json.dumps({"step": step, "y0": int(batch["y"][0]), "x_sum": float(np.sum(batch["x"]))}) + "\n")
    if self.signum is not None and self.drawn == self.at:
      os.kill(os.getpid(), self.signum)
    if self.signum is not None and self.drawn >= self.at:
      time.sleep(self.pause)
    return batch

  def get_state(self):
    return self.inner.get_state()

  def set_state(self, state):
    self.inner.set_state(state)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("workdir")
  parser.add_argument("--signal", choices=("KILL", "TERM"), default=None)
  parser.add_argument("--at", type=int, default=0, help="signal on this batch drawn by this process (1-based)")
  parser.add_argument("--signal_process", type=int, default=None, help="only this process signals itself")
  parser.add_argument("--pause", type=float, default=0.0, help="seconds to sleep per batch after signalling")
  parser.add_argument("--steps", type=int, default=TOTAL_STEPS)
  parser.add_argument("--log_every", type=int, default=1)
  parser.add_argument("--checkpoint_every", type=int, default=CHECKPOINT_EVERY)
  args = parser.parse_args()
  distributed.initialize_from_env()  # several processes when launch/local.py starts them
  c = config(args.steps, args.log_every, args.checkpoint_every)
  exp = demo.build(c)
  os.makedirs(args.workdir, exist_ok=True)
  index = jax.process_index()
  log = "batches.jsonl" if jax.process_count() == 1 else f"batches_p{index}.jsonl"
  signals = args.signal and args.signal_process in (None, index)
  data = Recording(exp.data_iter, os.path.join(args.workdir, log),
                   getattr(signal, f"SIG{args.signal}") if signals else None, args.at, args.pause)
  ckpt = os.path.join(args.workdir, "checkpoints")
  # Committed checkpoints are the all-digit folders (Orbax writes into a temporary name, then renames).
  data.start = max([int(d) for d in os.listdir(ckpt) if d.isdigit()] if os.path.isdir(ckpt) else [0], default=0)
  report = {"stopped_at": None}
  try:
    state = trainkit.train_loop(c, args.workdir, exp.state, exp.shardings, exp.train_step, data,
                                exp.batch_sharding, progress_bar=False)
  except trainkit.Preempted as stop:
    report["stopped_at"] = stop.step
    raise
  finally:
    report.update(preemption.stats)
    trainkit.write_json(os.path.join(args.workdir, f"preemption_p{index}.json"), report)
  flat = {trainkit.path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(
      jax.device_get(state.params))}
  if index == 0:
    np.savez(os.path.join(args.workdir, "final_params.npz"), **flat)


if __name__ == "__main__":
  main()
