"""A tiny trainkit run (the digits demo) that can signal itself mid-run; used by test_preemption.py.

    python tests/preemptible_run.py WORKDIR [--signal=KILL|TERM --at=N]

With --signal, the process sends itself that signal when it draws its N-th batch (so the signal lands
during step N, like a preemption notice or an OOM kill). A run that reaches total_steps writes
`<workdir>/final_params.npz` and `<workdir>/batches.jsonl` (one line per batch drawn: step and the
first example's label and pixel checksum; `batches_p<i>.jsonl` per process when several run) so a
test can see lost or repeated batches.
"""
import argparse
import json
import os
import signal
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

import trainkit  # noqa: E402
from trainkit import distributed  # noqa: E402
from configs.demo import digits  # noqa: E402
from launch import demo  # noqa: E402

TOTAL_STEPS, CHECKPOINT_EVERY = 14, 3


def config():
  c = digits.get_config("data=2,fsdp=1,tensor=1")
  c.model.width, c.model.mlp_width = 32, 64  # dropout stays on: the per-step rng must resume too
  c.batch_size, c.total_steps, c.log_every, c.eval_every = 16, TOTAL_STEPS, 1, 0
  c.checkpoint.every, c.checkpoint.keep = CHECKPOINT_EVERY, 2  # async writes: a kill may land mid-write
  return c


class Recording:
  """Wraps the data iterator: logs each batch drawn, and signals this process at the chosen draw."""

  def __init__(self, inner, log_path, signum=None, at=0):
    self.inner, self.log_path, self.signum, self.at, self.drawn = inner, log_path, signum, at, 0

  def __next__(self):
    batch = next(self.inner)
    self.drawn += 1
    step = self.drawn + self.start
    with open(self.log_path, "a") as f:
      f.write(json.dumps({"step": step, "y0": int(batch["y"][0]), "x_sum": float(np.sum(batch["x"]))}) + "\n")
    if self.signum is not None and self.drawn == self.at:
      os.kill(os.getpid(), self.signum)
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
  args = parser.parse_args()
  distributed.initialize_from_env()  # several processes when launch/local.py starts them
  c = config()
  exp = demo.build(c)
  os.makedirs(args.workdir, exist_ok=True)
  log = "batches.jsonl" if jax.process_count() == 1 else f"batches_p{jax.process_index()}.jsonl"
  data = Recording(exp.data_iter, os.path.join(args.workdir, log),
                   getattr(signal, f"SIG{args.signal}") if args.signal else None, args.at)
  ckpt = os.path.join(args.workdir, "checkpoints")
  # Committed checkpoints are the all-digit folders (Orbax writes into a temporary name, then renames).
  data.start = max([int(d) for d in os.listdir(ckpt) if d.isdigit()] if os.path.isdir(ckpt) else [0], default=0)
  state = trainkit.train_loop(c, args.workdir, exp.state, exp.shardings, exp.train_step, data, exp.batch_sharding,
                              progress_bar=False)
  flat = {trainkit.path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(
      jax.device_get(state.params))}
  if jax.process_index() == 0:
    np.savez(os.path.join(args.workdir, "final_params.npz"), **flat)


if __name__ == "__main__":
  main()
