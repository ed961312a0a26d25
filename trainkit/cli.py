"""The command line every trainer shares: `--config=<file>[:arg]` (locked), `--workdir`, overrides.

    if __name__ == "__main__":
      trainkit.cli.run(train, "configs/tga/tiny.py:stage=1")   # train(config, workdir) -> dict
"""
from __future__ import annotations

import json
from collections.abc import Callable


def run(train: Callable[[object, str], dict], example_config: str) -> None:
  """Defines the flags, parses argv, calls train(config, workdir) and prints its result as JSON."""
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file(
      "config", None, f"Config file and its arg string, e.g. {example_config}. Any field can be overridden "
      "with --config.<key>=<value>; the config is locked, so a misspelt key fails.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics.jsonl, TensorBoard, results. "
                      "Rerunning with the same workdir resumes from the latest checkpoint.")
  flags.mark_flags_as_required(["config", "workdir"])

  def main(argv):
    del argv
    print(json.dumps(train(flags.FLAGS.config, flags.FLAGS.workdir), indent=2))

  app.run(main)
