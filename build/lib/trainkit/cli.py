"""The command line every trainer shares: `--config=<file>[:arg]` (locked), `--workdir`, overrides,
and the multi-host flags (see trainkit/distributed.py; without them the environment decides).

    if __name__ == "__main__":
      trainkit.cli.run(train, "configs/tga/tiny.py:stage=1")   # train(config, workdir) -> dict
"""
from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Callable

HELP_ARGS = ("-h", "--help", "--helpshort", "--helpfull")


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
  if any(arg in HELP_ARGS for arg in sys.argv[1:]):
    # absl's own --help lists only flags defined in the __main__ module (not these) and exits 1.
    print(usage(train, example_config, ["config", "workdir", "coordinator_address", "num_processes",
                                        "process_id", "distributed"]))
    sys.exit(0)

  def main(argv):
    del argv
    f = flags.FLAGS
    distributed.initialize_from_env(f.coordinator_address, f.num_processes, f.process_id, f.distributed)
    result = train(f.config, f.workdir)
    import jax
    if jax.process_index() == 0:
      print(json.dumps(result, indent=2))

  app.run(main)


def usage(train: Callable, example_config: str, names: list[str]) -> str:
  """The trainer's --help: what it does (its module docstring), examples, then every flag with its default."""
  from absl import flags

  main = sys.modules.get("__main__")
  module = getattr(train, "__module__", "") or ""
  program = f"python -m {module}" if module and module != "__main__" else sys.argv[0]
  if module == "__main__" and main is not None and getattr(main, "__spec__", None):
    program = f"python -m {main.__spec__.name}"
  doc = (getattr(main, "__doc__", None) or sys.modules.get(module).__doc__ or "").strip()
  lines = [doc, "", "Examples:",
           f"  {program} --config={example_config} --workdir=runs/example",
           f"  {program} --config={example_config} --workdir=runs/example --config.total_steps=20  # override a field",
           "  (rerun with the same --workdir to resume from its latest checkpoint)", "", "Flags:"]
  for name in names:
    flag = flags.FLAGS[name]
    default = "" if flag.default is None else f" (default: {flag.default})"
    lines.append(f"  --{name}{default}")
    lines.extend(textwrap.wrap(flag.help, 96, initial_indent="      ", subsequent_indent="      "))
  return "\n".join(lines)
