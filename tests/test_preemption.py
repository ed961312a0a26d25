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


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """The uninterrupted run everything is compared with."""
  workdir = tmp_path_factory.mktemp("straight")
  result = run(workdir)
  assert result.returncode == 0, result.stderr[-2000:]
  return workdir


@pytest.mark.slow
def test_sigterm_and_sigkill_at_random_steps_resume_to_the_same_params(tmp_path, straight):

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


@pytest.mark.slow
def test_two_processes_stopped_by_sigterm_resume_from_their_multihost_checkpoint(tmp_path, straight):
  """2 processes x 1 device (the same 2-device mesh): both get SIGTERM during step 5 (a pod-wide
  maintenance event), agree to stop, write one Orbax checkpoint with both iterator positions, exit 143;
  a restarted pair restores it and ends where the uninterrupted one-process run ends."""
  from launch import local
  multi = tmp_path / "multi"
  procs = local.launch([RUN, str(multi), "--signal=TERM", "--at=5"], 2, 1, log_dir=str(tmp_path / "logs"))
  assert local.wait_all(procs, timeout=300) == 143
  assert sorted(os.listdir(multi / "checkpoints" / "5" / "data"))[-2:] == ["process_0-of-2.json", "process_1-of-2.json"]
  procs = local.launch([RUN, str(multi)], 2, 1, log_dir=str(tmp_path / "logs"))
  assert local.wait_all(procs, timeout=300) == 0

  a, b = np.load(straight / "final_params.npz"), np.load(multi / "final_params.npz")
  for name in a.files:  # gloo's cross-process sums may round differently from one process's
    np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)
  # Host 0's rows start every global batch: its first label per step is the one-process run's.
  host0 = [json.loads(line) for line in open(multi / "batches_p0.jsonl")]
  assert [r["step"] for r in host0] == list(range(1, TOTAL_STEPS + 1))  # nothing lost or repeated
  assert {r["step"]: r["y0"] for r in host0} == {s: y for s, (y, _) in trained_batches(straight).items()}
