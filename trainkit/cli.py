"""The command line every trainer shares: `--config=<file>[:arg]` (locked), `--workdir`, overrides,
and the multi-host flags (see trainkit/distributed.py; without them the environment decides).

    if __name__ == "__main__":
      trainkit.cli.run(train, "configs/tga/tiny.py:stage=1")   # train(config, workdir) -> dict
"""
from __future__ import annotations

import json
from collections.abc import Callable


def run(train: Callable[[object, str], dict], example_config: str) -> None:
  """Defines the flags, parses argv, starts jax.distributed if asked, calls train(config, workdir) and
  prints its result as JSON (process 0 only)."""
  from absl import app, flags
  from ml_collections import config_flags

  from trainkit import distributed

  config_flags.DEFINE_config_file(
      "config", None, f"Config file and its arg string, e.g. {example_config}. Any field can be overridden "
      "with --config.<key>=<value>; the config is locked, so a misspelt key fails.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics.jsonl, TensorBoard, results. "
                      "Rerunning with the same workdir resumes from the latest checkpoint. With several "
                      "processes it must be one shared directory (NFS, a gcsfuse-mounted bucket).")
  flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0 (else "
                      "JAX_COORDINATOR_ADDRESS, else SLURM / TPU-pod detection, else one process).")
  flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes (with --coordinator_address).")
  flags.DEFINE_integer("process_id", None, "Multi-host: this process's index (with --coordinator_address).")
  flags.DEFINE_enum("distributed", "auto", list(distributed.MODES), "auto: flags, then environment; off: one "
                    "process; jax: let jax.distributed.initialize() detect the cluster (TPU pods, SLURM, MPI).")
  flags.mark_flags_as_required(["config", "workdir"])

  def main(argv):
    del argv
    f = flags.FLAGS
    distributed.initialize_from_env(f.coordinator_address, f.num_processes, f.process_id, f.distributed)
    result = train(f.config, f.workdir)
    import jax
    if jax.process_index() == 0:
      print(json.dumps(result, indent=2))

  app.run(main)
