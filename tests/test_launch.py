"""Launch plumbing without a cluster: the distributed plan from fake SLURM / TPU / explicit environments,
and the local, SLURM, TPU-pod and sweep launchers' printed commands."""
import json
import os
import subprocess
import sys

import pytest

from launch import local, sweep, tpu_pod
from trainkit import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_first_slurm_host_reads_compressed_node_lists():
  assert distributed.first_slurm_host("gpu[003-005,9],cpu1") == "gpu003"
  assert distributed.first_slurm_host("node7,node9") == "node7"
  assert distributed.first_slurm_host("a100-[12,14]") == "a100-12"
  assert distributed.first_slurm_host("solo") == "solo"


def test_plan_inside_srun_on_two_nodes():
  env = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
         "SLURM_STEP_NODELIST": "gpu[017-018]", "SLURM_JOB_NODELIST": "gpu[017-018]"}
  plan = distributed.plan_from_env(environ=env)
  assert plan == distributed.Plan("slurm", f"gpu017:{distributed.slurm_port('4242')}", 2, 1)
  assert plan.initialize_kwargs() == {"coordinator_address": plan.coordinator_address, "num_processes": 2,
                                      "process_id": 1}
  # The batch script itself (no job step yet) and one-task jobs stay single-process.
  assert distributed.plan_from_env(environ={k: v for k, v in env.items() if k != "SLURM_STEP_ID"}).kind == "single"
  assert distributed.plan_from_env(environ=dict(env, SLURM_NTASKS="1", SLURM_PROCID="0")).kind == "single"
  assert distributed.plan_from_env(mode="off", environ=env).kind == "single"


def test_plan_explicit_flags_win_over_environment():
  env = {"JAX_COORDINATOR_ADDRESS": "envhost:1", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3",
         "SLURM_JOB_ID": "1", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "8", "SLURM_PROCID": "0",
         "SLURM_STEP_NODELIST": "n1"}
  assert distributed.plan_from_env("flaghost:9", 2, 0, environ=env) == distributed.Plan("explicit", "flaghost:9", 2, 0)
  assert distributed.plan_from_env(environ=env) == distributed.Plan("explicit", "envhost:1", 4, 3)
  with pytest.raises(ValueError, match="outside"):
    distributed.plan_from_env("h:1", 2, 2, environ={})
  with pytest.raises(ValueError, match="coordinator"):
    distributed.plan_from_env(num_processes=2, process_id=1, environ={})


def test_plan_tpu_pod_defers_to_jax_detection():
  assert distributed.plan_from_env(environ={"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"}).kind == "jax"
  assert distributed.plan_from_env(environ={"TPU_WORKER_HOSTNAMES": "10.0.0.2"}).kind == "single"
  assert distributed.plan_from_env(mode="jax", environ={}).initialize_kwargs() == {}
  assert distributed.plan_from_env(environ={}).kind == "single"


def test_local_runner_gives_each_process_the_coordinator_and_its_devices(capsys):
  base = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_dump_to=/tmp/d", "PATH": "/bin"}
  envs = local.process_envs(2, 4, 1234, base)
  assert [e["JAX_PROCESS_ID"] for e in envs] == ["0", "1"]
  assert {e["JAX_COORDINATOR_ADDRESS"] for e in envs} == {"localhost:1234"}
  assert all(e["JAX_NUM_CPU_DEVICES"] == "4" and e["XLA_FLAGS"] == "--xla_dump_to=/tmp/d" for e in envs)
  assert "JAX_COORDINATOR_ADDRESS" not in local.process_envs(1, 0, 1, base)[0]
  assert local.main(["--processes=2", "--cpu_devices=4", "--port=5555", "--dry-run", "--", "tga_jax.train",
                     "--config=configs/tga/tiny.py", "--workdir=w"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 2 and "JAX_PROCESS_ID=1" in lines[1] and "-m tga_jax.train --config=" in lines[1]


def test_slurm_script_dry_run_prints_one_srun_line():
  env = dict(os.environ, DRY_RUN="1", SLURM_SUBMIT_DIR=ROOT)
  out = subprocess.run(["bash", os.path.join(ROOT, "launch", "slurm_gpu.sbatch"), "comploss_jax.train",
                        "--config=configs/comploss/tiny.py", "--workdir=/shared/w"], env=env, capture_output=True,
                       text=True, check=True).stdout
  assert out.startswith("srun --kill-on-bad-exit=1 .venv/bin/python -m comploss_jax.train ")
  assert "--workdir=/shared/w" in out


def test_tpu_pod_dry_run_creates_sets_up_runs_and_deletes(capsys):
  code = tpu_pod.main(["all", "--name=pod", "--zone=us-central2-b", "--accelerator=v4-32", "--bucket=gs://bkt/x",
                       "--run_dir=runs/s1", "--dry-run", "--", "tga_jax.train", "--config=configs/tga/tiny.py"])
  assert code == 0
  lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("+ ")]
  assert "tpu-vm create pod --zone=us-central2-b --accelerator-type=v4-32" in lines[0]
  assert lines[1].startswith("+ git archive") and "tpu-vm scp /tmp/" in lines[2] and "--worker=all" in lines[2]
  assert "gcsfuse --implicit-dirs bkt /mnt/gcs/bkt" in lines[3] and "pip install" in lines[3]
  assert "--worker=all" in lines[4] and "--workdir=/mnt/gcs/bkt/runs/s1" in lines[4]
  assert "--distributed=jax" in lines[4] and "-m tga_jax.train" in lines[4]
  assert "tpu-vm delete pod" in lines[5] and len(lines) == 6


def test_sweep_prints_and_submits_one_command_per_run(tmp_path, capsys):
  sweep.main(["--config=configs/tga/tiny.py:stage=2", f"--workdir={tmp_path}", "--print"])
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == len(__import__("configs.tga.tiny", fromlist=["sweep"]).sweep()) == 6
  assert lines[0].startswith("python -m tga_jax.train --config=configs/tga/tiny.py:stage=2 ")
  assert "'--config.tga.layers=(1, 2)'" in lines[0] and f"--workdir={tmp_path}/w0.0_l1-2/seed=0" in lines[0]

  # --submit runs the launcher command per run (here `echo`, standing in for sbatch) and indexes them.
  sweep.main(["--config=configs/comploss/tiny.py", f"--workdir={tmp_path}", "--submit=echo SUBMITTED"])
  out = capsys.readouterr().out
  assert out.count("SUBMITTED comploss_jax.train --config=configs/comploss/tiny.py") == 4
  index = json.load(open(tmp_path / "index.json"))
  assert [(r["variant"], r["seed"], r["status"]) for r in index] == [
      (variant, seed, "pending") for variant in ("baseline", "cmploss_c1") for seed in (0, 1)]
  assert index[0]["command"].startswith("echo SUBMITTED comploss_jax.train")


def test_sweep_collects_finished_runs_into_the_index_and_table(tmp_path, capsys):
  for variant, seed, acc in (("baseline", 0, 0.5), ("baseline", 1, 0.7), ("cmploss_c1", 0, 0.8)):
    run_dir = tmp_path / variant / f"seed={seed}"
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps({"dev": {"accuracy": acc}, "test": {"accuracy": acc}}))
  (tmp_path / "cmploss_c1" / "seed=1").mkdir()
  (tmp_path / "cmploss_c1" / "seed=1" / "summary.json").write_text(json.dumps({"final_step": 4}))
  # Every run has a result file, so nothing is trained or submitted: the sweep only collects.
  table = sweep.main(["--config=configs/comploss/tiny.py", f"--workdir={tmp_path}", "--submit=false"])
  assert table["baseline"]["n"] == 2 and table["baseline"]["dev/accuracy"][0] == pytest.approx(0.6)
  index = {(r["variant"], r["seed"]): r["status"] for r in json.load(open(tmp_path / "index.json"))}
  assert index[("cmploss_c1", 1)] == "trained" and index[("baseline", 0)] == "done"
  assert "| baseline | 2 |" in open(tmp_path / "results.md").read()
