"""Run a trainer on this machine: one process, or N processes joined by jax.distributed on localhost.

    python launch/local.py -- tga_jax.train --config=configs/tga/tiny.py:stage=1 --workdir=runs/tiny/s1
    # a multi-host rehearsal on one CPU machine: 2 processes x 4 simulated devices (gloo collectives)
    python launch/local.py --processes=2 --cpu_devices=4 -- tga_jax.train --config=configs/tga/tiny.py \\
        --workdir=runs/tiny/mh
    python launch/local.py --processes=2 --cpu_devices=4 --dry-run -- comploss_jax.train ...  # print only

After `--` comes the trainer module and its flags. Each process gets JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID (read by trainkit.distributed), so the trainer command is the
same one a pod or SLURM worker runs. Process 0 prints to the terminal; the others write
`<log_dir>/process_<i>.log`. If one process fails, the rest are stopped.
"""
from __future__ import annotations

import argparse
import os
import shlex
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREEMPTED = 143  # trainkit.Preempted's exit code


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def without_device_count(xla_flags: str) -> str:
  """XLA_FLAGS less any simulated host device count, which would override JAX_NUM_CPU_DEVICES; the other
  flags (e.g. compile settings) are kept."""
  return " ".join(f for f in xla_flags.split() if "xla_force_host_platform_device_count" not in f)


def process_envs(processes: int, cpu_devices: int, port: int, base: dict | None = None) -> list[dict]:
  """One environment per process: the coordinator variables and, for CPU runs, the device count."""
  envs = []
  for index in range(processes):
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH", "")]))
    if cpu_devices:
      env["JAX_PLATFORMS"] = "cpu"
      env["JAX_NUM_CPU_DEVICES"] = str(cpu_devices)
      env["XLA_FLAGS"] = without_device_count(env.get("XLA_FLAGS", ""))
    if processes > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(processes),
                 JAX_PROCESS_ID=str(index))
    envs.append(env)
  return envs


def command(trainer_args: list[str]) -> list[str]:
  """`tga_jax.train --flag ...` -> [python, -m, tga_jax.train, --flag, ...] (a .py path runs as a script)."""
  if not trainer_args:
    raise SystemExit("give the trainer after `--`, e.g. `-- tga_jax.train --config=... --workdir=...`")
  first, rest = trainer_args[0], trainer_args[1:]
  if first == "-m":
    first, rest = rest[0], rest[1:]
  return [sys.executable] + ([first] if first.endswith(".py") else ["-m", first]) + rest


def launch(trainer_args: list[str], processes: int = 1, cpu_devices: int = 0, port: int | None = None,
           log_dir: str | None = None, base_env: dict | None = None) -> list[subprocess.Popen]:
  """Starts the processes (not waiting); returns their Popen objects, process 0 first."""
  argv = command(trainer_args)
  envs = process_envs(processes, cpu_devices, port or free_port(), base_env)
  log_dir = log_dir or os.path.join(ROOT, "runs", "local_logs")
  procs = []
  for index, env in enumerate(envs):
    if index == 0:
      out = None
    else:
      os.makedirs(log_dir, exist_ok=True)
      out = open(os.path.join(log_dir, f"process_{index}.log"), "w")
    procs.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT if out else None))
  return procs


def wait_all(procs: list[subprocess.Popen], timeout: float | None = None) -> int:
  """Waits for every process; when one fails (or time runs out), terminates the rest. Returns the first
  non-zero exit code, else 0.

  Exit 143 (preempted: checkpoint written) is no failure: the others are stopping at the same step and
  may still be finishing that checkpoint (process 0 commits it), so they are left to end by themselves.
  """
  deadline = None if timeout is None else time.monotonic() + timeout
  while any(p.poll() is None for p in procs):
    failed = [p for p in procs if p.poll() not in (None, 0, PREEMPTED)]
    if failed or (deadline is not None and time.monotonic() > deadline):
      for p in procs:
        if p.poll() is None:
          p.terminate()  # SIGTERM: a trainer saves a checkpoint and exits 143
      for p in procs:
        try:
          p.wait(timeout=60)
        except subprocess.TimeoutExpired:
          p.kill()
      break
    time.sleep(0.2)
  codes = [p.wait() for p in procs]
  return next((c for c in codes if c != 0), 0)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  split = argv.index("--") if "--" in argv else len(argv)
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--processes", type=int, default=1, help="processes to start (jax.distributed over localhost)")
  parser.add_argument("--cpu_devices", type=int, default=0,
                      help="simulated CPU devices per process (0: use this machine's accelerators)")
  parser.add_argument("--port", type=int, default=0, help="coordinator port (default: a free one)")
  parser.add_argument("--log_dir", default="", help="logs of processes 1.. (default runs/local_logs)")
  parser.add_argument("--dry-run", action="store_true", help="print each process's command and exit")
  args = parser.parse_args(argv[:split])
  trainer_args = argv[split + 1:]
  if args.dry_run:
    port = args.port or free_port()
    for index, env in enumerate(process_envs(args.processes, args.cpu_devices, port)):
      keys = [k for k in ("JAX_PLATFORMS", "JAX_NUM_CPU_DEVICES", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
                          "JAX_PROCESS_ID") if k in env and env.get(k) != os.environ.get(k)]
      print(" ".join([f"{k}={shlex.quote(env[k])}" for k in keys] + [shlex.join(command(trainer_args))]))
    return 0
  procs = launch(trainer_args, args.processes, args.cpu_devices, args.port or None, args.log_dir or None)
  return wait_all(procs)


if __name__ == "__main__":
  sys.exit(main())
