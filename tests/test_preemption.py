"""Preemption: a tiny run killed with SIGTERM and with SIGKILL at random steps, restarted each time,
ends with exactly the params of an uninterrupted run, having trained on every batch exactly once."""
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
RUN = os.path.join(HERE, "preemptible_run.py")
sys.path.insert(0, HERE)
from preemptible_run import CHECKPOINT_EVERY, TOTAL_STEPS  # noqa: E402


def run(workdir, signal_name=None, at=0):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2", XLA_FLAGS="")
  args = [sys.executable, RUN, str(workdir)] + ([f"--signal={signal_name}", f"--at={at}"] if signal_name else [])
  return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


def last_losses(workdir):
  """{step: loss} keeping each step's last record (steps redone after a SIGKILL are logged twice)."""
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def trained_batches(workdir):
  """The batches behind the final params: per step, the last batch drawn for it."""
  rows = [json.loads(line) for line in open(os.path.join(workdir, "batches.jsonl"))]
  return {r["step"]: (r["y0"], r["x_sum"]) for r in rows}


@pytest.mark.slow
def test_sigterm_and_sigkill_at_random_steps_resume_to_the_same_params(tmp_path):
  straight = tmp_path / "straight"
  assert run(straight).returncode == 0

  # Random kill points (seeded, so a failure reproduces), each counted in the restarted process's own
  # batches: a SIGTERM (checkpoint, exit 143), a SIGKILL between checkpoints (redo from the last
  # periodic one), and a SIGKILL right after a checkpoint step.
  rng = random.Random(9)
  interrupted = tmp_path / "interrupted"
  term_at = rng.randint(2, 5)
  result = run(interrupted, "TERM", term_at)
  assert result.returncode == 143, result.stderr[-2000:]
  resumed_from = term_at  # SIGTERM saves the step it interrupts
  kill_at = rng.choice([n for n in range(2, 7) if (resumed_from + n) % CHECKPOINT_EVERY])
  result = run(interrupted, "KILL", kill_at)
  assert result.returncode == -9, result.stderr[-2000:]
  killed_step = resumed_from + kill_at
  resumed_from = killed_step // CHECKPOINT_EVERY * CHECKPOINT_EVERY
  assert resumed_from > term_at or killed_step < CHECKPOINT_EVERY * 2
  after_save = CHECKPOINT_EVERY - resumed_from % CHECKPOINT_EVERY + 1  # the step after the next save
  result = run(interrupted, "KILL", after_save)
  assert result.returncode == -9, result.stderr[-2000:]
  result = run(interrupted)
  assert result.returncode == 0, result.stderr[-2000:]

  a = np.load(straight / "final_params.npz")
  b = np.load(interrupted / "final_params.npz")
  assert sorted(a.files) == sorted(b.files)
  for name in a.files:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)
  # Every step trained on the same batch as the straight run (none lost, none shifted or repeated);
  # steps redone after a SIGKILL drew their own batch again, not the next one.
  expected = trained_batches(straight)
  assert trained_batches(interrupted) == expected
  drawn = [json.loads(line) for line in open(interrupted / "batches.jsonl")]
  assert len(drawn) > TOTAL_STEPS  # the SIGKILLs cost redone steps
  assert all((r["y0"], r["x_sum"]) == expected[r["step"]] for r in drawn)
  assert sorted(trained_batches(straight)) == list(range(1, TOTAL_STEPS + 1))
  assert last_losses(interrupted) == last_losses(straight)
