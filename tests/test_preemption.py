"""Preemption: a tiny run killed with SIGTERM and with SIGKILL at random steps, restarted each time,
ends with exactly the params of an uninterrupted run, having trained on every batch exactly once and
logged every step once. Two processes x 4 devices stop together when one of them gets SIGTERM -- through
JAX's preemption sync point, with no host collective at all, or without it, with collectives only on
checkpoint/log steps -- and resume to the same params."""
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

from launch.local import without_device_count  # noqa: E402


def run(workdir, signal_name=None, at=0):
  # The session's XLA_FLAGS (tests/conftest.py's compile settings) less any device count.
  flags = without_device_count(os.environ.get("XLA_FLAGS", ""))
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="8", XLA_FLAGS=flags)
  args = [sys.executable, RUN, str(workdir)] + ([f"--signal={signal_name}", f"--at={at}"] if signal_name else [])
  return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


def losses(workdir):
  """{step: loss}, checking each step was logged once (a resumed run drops the records it redoes)."""
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  steps = [r["step"] for r in rows if r["split"] == "train"]
  assert steps == sorted(set(steps)), f"steps logged out of order or twice: {steps}"
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
  assert losses(interrupted) == losses(straight)


def launch_pair(workdir, logs, *flags, sync_manager=True):
  """2 processes x 4 CPU devices running preemptible_run.py; returns (exit codes, each one's report)."""
  from launch import local
  env = dict(os.environ, JAX_ENABLE_PREEMPTION_SERVICE=str(sync_manager).lower())
  procs = local.launch([RUN, str(workdir), *flags], 2, 4, log_dir=str(logs), base_env=env)
  local.wait_all(procs, timeout=300)
  reports = [json.load(open(workdir / f"preemption_p{i}.json")) for i in range(2)]
  return [p.returncode for p in procs], reports


def boundaries(first, last, log_every):
  """The steps in first..last where the loop may run a collective: checkpoint, log and last steps."""
  return [s for s in range(first, last + 1) if s % CHECKPOINT_EVERY == 0 or s % log_every == 0 or s == TOTAL_STEPS]


@pytest.mark.slow
@pytest.mark.parametrize("sync_manager", [True, False], ids=["sync_point", "boundary_collective"])
def test_two_processes_stop_together_when_one_gets_sigterm_and_resume(tmp_path, straight, sync_manager):
  """Process 1 alone gets SIGTERM while drawing its 5th batch (one host's preemption notice). Both
  processes stop after the same step, write one Orbax checkpoint of it with both iterator positions and
  exit 143; a restarted pair restores it and ends where the uninterrupted one-process run ends.

  With JAX's preemption sync manager (on by default), the stop step is the one after the furthest
  process's step when the notice reached the coordination service (process 1 then slows down, so the
  notice lands before the run ends), and no host collective runs. Without it, process 1's flag is OR-ed
  over processes only at checkpoint and log steps: with log_every=4 the next one after step 5 is 6, and
  the collectives run are exactly those boundary steps, not one per step."""
  multi, logs = tmp_path / "multi", tmp_path / "logs"
  log_every = 1 if sync_manager else 4
  flags = [f"--log_every={log_every}"]
  codes, reports = launch_pair(multi, logs, *flags, "--signal=TERM", "--at=5", "--signal_process=1",
                               f"--pause={1.0 if sync_manager else 0.0}", sync_manager=sync_manager)
  assert codes == [143, 143], tail(logs)
  stop = reports[0]["stopped_at"]
  assert reports[1]["stopped_at"] == stop and 5 <= stop < TOTAL_STEPS
  saved = sorted(int(d) for d in os.listdir(multi / "checkpoints") if d.isdigit())
  assert saved[-1] == stop
  assert sorted(os.listdir(multi / "checkpoints" / str(stop) / "data"))[-2:] == ["process_0-of-2.json",
                                                                                  "process_1-of-2.json"]
  if sync_manager:
    assert [(r["mode"], r["host_collectives"]) for r in reports] == [("sync", 0)] * 2
  else:
    assert stop == 6
    assert [(r["mode"], r["host_collectives"]) for r in reports] == [("collective", len(boundaries(1, 6, 4)))] * 2

  codes, reports = launch_pair(multi, logs, *flags, sync_manager=sync_manager)
  assert codes == [0, 0], tail(logs)
  expected = ("sync", 0) if sync_manager else ("collective", len(boundaries(stop + 1, TOTAL_STEPS, log_every)))
  assert [(r["mode"], r["host_collectives"]) for r in reports] == [expected] * 2

  a, b = np.load(straight / "final_params.npz"), np.load(multi / "final_params.npz")
  for name in a.files:  # gloo's cross-process sums may round differently from one process's
    np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)
  # Host 0's rows start every global batch: its first label per step is the one-process run's.
  host0 = [json.loads(line) for line in open(multi / "batches_p0.jsonl")]
  assert [r["step"] for r in host0] == list(range(1, TOTAL_STEPS + 1))  # nothing lost or repeated
  assert {r["step"]: r["y0"] for r in host0} == {s: y for s, (y, _) in trained_batches(straight).items()}
  logged = [s for s in range(1, TOTAL_STEPS + 1) if s % log_every == 0 or s == TOTAL_STEPS]
  assert sorted(losses(multi)) == logged  # each once, though steps up to the stop were logged by the first pair


def tail(logs, lines=30):
  path = logs / "process_1.log"
  return "".join(open(path).readlines()[-lines:]) if path.exists() else f"({path} missing)"
