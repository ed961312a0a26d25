"""Multi-host start-up: one `jax.distributed.initialize` call, worked out from flags or the environment.

    trainkit.distributed.initialize_from_env()        # before anything touches a JAX backend

Where the coordinator comes from, first match wins:
  1. explicit: `coordinator_address` + `num_processes` + `process_id` (trainer flags), or the
     JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables (launch/local.py sets them);
  2. SLURM: inside `srun` with SLURM_NTASKS > 1 -- coordinator = first node of the step's node list,
     process id = SLURM_PROCID (one task per node, each task sees all of the node's GPUs);
  3. a TPU pod slice: TPU_WORKER_HOSTNAMES lists several workers, or `mode='jax'` -- JAX's own
     cluster detection (the GCE metadata server) fills in everything;
  4. otherwise one process: nothing to initialize.
After it, processes other than 0 log warnings only (metrics, progress bars and summaries are
already written by process 0 alone).
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping

from absl import logging

MODES = ("auto", "off", "jax")


@dataclasses.dataclass(frozen=True)
class Plan:
  """What `initialize_from_env` will do. kind: 'single', 'explicit', 'slurm' or 'jax' (auto-detect)."""
  kind: str
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None

  @property
  def multi_process(self) -> bool:
    return self.kind != "single"

  def initialize_kwargs(self) -> dict:
    if self.kind == "jax":
      return {}
    return {"coordinator_address": self.coordinator_address, "num_processes": self.num_processes,
            "process_id": self.process_id}


def first_slurm_host(nodelist: str) -> str:
  """The first host of a SLURM node list: 'gpu[003-005,9],cpu1' -> 'gpu003'; 'a,b' -> 'a'."""
  match = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
  if not match:
    raise ValueError(f"cannot read a host from the SLURM node list {nodelist!r}")
  prefix, ranges = match.group(1), match.group(3)
  if ranges is None:
    return prefix
  first = ranges.split(",")[0].split("-")[0]  # keeps zero padding: '003-005' -> '003'
  return prefix + first


def slurm_port(job_id: str) -> int:
  """A port every task of a job computes alike; spread over job ids so jobs on one node differ."""
  return 20000 + int(job_id) % 20000


def plan_from_env(coordinator_address: str | None = None, num_processes: int | None = None,
                  process_id: int | None = None, mode: str = "auto",
                  environ: Mapping[str, str] | None = None) -> Plan:
  """Works out the Plan without touching JAX (so tests can hand it a fake environment)."""
  env = os.environ if environ is None else environ
  if mode not in MODES:
    raise ValueError(f"distributed mode {mode!r}: expected one of {MODES}")
  if mode == "off":
    return Plan("single")
  if mode == "jax":
    return Plan("jax")
  address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
  if address:
    count = num_processes if num_processes is not None else env.get("JAX_NUM_PROCESSES")
    index = process_id if process_id is not None else env.get("JAX_PROCESS_ID")
    if count is None or index is None:
      raise ValueError(f"coordinator {address} given without the number of processes and this process's id "
                       f"(--num_processes/--process_id or JAX_NUM_PROCESSES/JAX_PROCESS_ID)")
    count, index = int(count), int(index)
    if not 0 <= index < count:
      raise ValueError(f"process id {index} is outside 0..{count - 1}")
    return Plan("explicit", address, count, index) if count > 1 else Plan("single")
  if num_processes not in (None, 1) or process_id not in (None, 0):
    raise ValueError("--num_processes/--process_id need --coordinator_address (host:port of process 0)")
  # SLURM_STEP_* exist only inside srun: a bare sbatch script is one process, not the job's tasks.
  if "SLURM_JOB_ID" in env and "SLURM_STEP_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
    nodelist = env.get("SLURM_STEP_NODELIST") or env["SLURM_JOB_NODELIST"]
    host = first_slurm_host(nodelist)
    return Plan("slurm", f"{host}:{slurm_port(env['SLURM_JOB_ID'])}", int(env["SLURM_NTASKS"]),
                int(env["SLURM_PROCID"]))
  if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]) > 1:
    return Plan("jax")
  return Plan("single")


def initialize_from_env(coordinator_address: str | None = None, num_processes: int | None = None,
                        process_id: int | None = None, mode: str = "auto") -> Plan:
  """Initializes jax.distributed per `plan_from_env`; quiets logging off process 0. Returns the Plan.

  Must run before the first `jax.devices()` / array creation. Calling it again is a no-op.
  """
  import jax
  plan = plan_from_env(coordinator_address, num_processes, process_id, mode)
  if not plan.multi_process or jax.distributed.is_initialized():
    return plan
  # Cross-process collectives between CPU devices go through gloo; GPUs and TPUs ignore this setting.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if plan.process_id:  # known up front: quiet before jax.distributed logs its own connection lines
    logging.set_verbosity(logging.WARNING)
  jax.distributed.initialize(**plan.initialize_kwargs())
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)
  logging.info("jax.distributed (%s): %d processes, %d local / %d global devices", plan.kind,
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return plan


def process_0_first(prepare, name: str = "prepare"):
  """Returns prepare(): process 0 runs it first, the others after it finished (a barrier between).

  For steps that write into a shared directory (procedural data, a tfds build): concurrent writers
  would race; run after process 0, the others find the files and only read them.
  """
  import jax
  if jax.process_count() == 1:
    return prepare()
  from jax.experimental import multihost_utils
  result = prepare() if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices(f"{name}: process 0 done")
  return result if jax.process_index() == 0 else prepare()
