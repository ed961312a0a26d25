"""Multi-host: 2 processes x 4 CPU devices (jax.distributed on localhost, gloo collectives) train the
tiny TGA and comparative-loss configs to the same losses as 1 process x 8 devices (this test's own
process: the same config and overrides, without another process start), write one multi-host Orbax
checkpoint with each host's data-iterator position, and log from process 0 only."""
import json
import os
import re

import numpy as np
import pytest

from launch import local

# (trainer module, config file and arg string, overrides): each run as a command line and in this process.
# Length buckets are per-host decisions, so the trainer turns them off with several processes; the
# 1-process run goes without them too, to compare identical shapes.
TGA = ("tga_jax.train", "configs/tga/tiny.py:stage=1,steps=4",
       {"data.procedural.n": 40, "data.buckets": (), "data.caption_buckets": (), "eval_every": 4,
        "eval_batches": 1, "log_every": 1})
# The tiny comparative-loss config on the test folder's 8 RTE pairs: 4 steps (an epoch each), and dev/test
# evaluations of a few rows (BBC's 667 would double the test's time).
COMPLOSS = ("comploss_jax.train", "configs/comploss/tiny.py",
            {"task": "rte", "data.glue_dir": os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "glue"),
             "data.train_size": 0, "epochs": 4})
COMMON = {"progress_bar": False, "checkpoint.use_async": False}


def command_line(trainer, overrides: dict) -> list[str]:
  module, config, fields = trainer
  return [module, f"--config={config}"] + [f"--config.{k}={v}" for k, v in {**fields, **COMMON, **overrides}.items()]


def run_here(trainer, overrides: dict, workdir) -> None:
  """The 1-process x 8-device run in this test process (tests/conftest.py gives it 8 CPU devices)."""
  import importlib
  from trainkit.config_files import apply_overrides, load_config
  module, config, fields = trainer
  importlib.import_module(module).train(apply_overrides(load_config(config), {**fields, **COMMON, **overrides}),
                                        str(workdir))


def metrics(workdir, split="train"):
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return {r["step"]: r for r in rows if r["split"] == split}


def tail(path, lines=40):
  return "".join(open(path).readlines()[-lines:]) if os.path.exists(path) else f"({path} missing)"


@pytest.mark.slow
def test_two_processes_match_one_process_on_tiny_tga_and_comparative_loss(tmp_path):
  runs, trainers = {}, (("tga", TGA), ("comploss", COMPLOSS))

  def own_tfds(name, workdir):  # each comparative-loss run builds RTE in its own folder
    return {"data.tfds_dir": str(workdir / "tfds")} if name == "comploss" else {}

  for name, trainer in trainers:
    workdir = tmp_path / f"{name}_2p"
    args = command_line(trainer, own_tfds(name, workdir)) + [f"--workdir={workdir}"]
    runs[(name, 2)] = local.launch(args, 2, 4, log_dir=str(workdir / "logs"))
  # While the two 2-process runs go, the 1-process ones run here (the two cores overlap their work).
  for name, trainer in trainers:
    run_here(trainer, own_tfds(name, tmp_path / f"{name}_1p"), tmp_path / f"{name}_1p")
  codes = {key: local.wait_all(procs, timeout=540) for key, procs in runs.items()}
  if codes != {key: 0 for key in runs}:
    logs = {key: tail(tmp_path / f"{key[0]}_{key[1]}p" / "logs" / "process_1.log") for key in runs}
    pytest.fail(f"exit codes {codes}; the last lines of process 1's logs:\n" +
                "\n".join(f"--- {key}\n{text}" for key, text in logs.items()))

  for name in ("tga", "comploss"):
    multi, single = tmp_path / f"{name}_2p", tmp_path / f"{name}_1p"
    a, b = metrics(multi), metrics(single)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4], name
    for step in a:
      for key in ("loss", "grad_norm"):
        np.testing.assert_allclose(a[step][key], b[step][key], rtol=2e-5, err_msg=f"{name} step {step} {key}")
    eval_a, eval_b = metrics(multi, "eval"), metrics(single, "eval")
    assert sorted(eval_a) == sorted(eval_b) and 4 in eval_a
    for step, row in eval_b.items():
      for key, value in row.items():
        if key not in ("step", "split", "time"):
          np.testing.assert_allclose(eval_a[step][key], value, rtol=1e-4, atol=1e-6, err_msg=f"{name} eval {key}")
    # One checkpoint directory for both hosts, with each host's iterator position beside the arrays.
    data_dir = multi / "checkpoints" / "4" / "data"
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(data_dir))
    # Process 1 kept quiet: no absl INFO lines (only warnings) and no printed JSON result.
    log = open(multi / "logs" / "process_1.log").read()
    assert not re.search(r"^I\d{4} ", log, re.M) and '"final_step"' not in log and '"test"' not in log

  results = [json.load(open(tmp_path / f"comploss_{p}p" / "results.json")) for p in (2, 1)]
  # RTE (GLUE) has no labelled test split: dev, on which the best epoch was also selected, is reported.
  assert results[0]["dev"] == pytest.approx(results[1]["dev"])
  assert "test" not in results[0] and results[0]["selected_on"].startswith("dev/")


def test_host_blocks_put_together_are_the_single_process_batches():
  import grain
  from trainkit.data import host_blocks
  stream = grain.MapDataset.source(list(range(50))).shuffle(seed=3).repeat(None)
  parts = [host_blocks(stream, 2, host, 3) for host in range(3)]  # 3 hosts x 2 rows = global batch 6
  for step in range(5):
    merged = [parts[host][step * 2 + row] for host in range(3) for row in range(2)]
    assert merged == [stream[i] for i in range(step * 6, step * 6 + 6)]
