"""Expand a config's `sweep()` grid into runs, run them (or print their commands), tabulate results.

    python launch/sweep.py --config=configs/comploss/bbc.py:train_size=128 --workdir=runs/bbc_sweep
    python launch/sweep.py --config=configs/comploss/bbc.py --workdir=runs/x --print   # commands only

Each grid point is a dict of dotted overrides (`{'seed': 1, 'cmp.n_drop': 2}`), plus an optional
'_variant' label; runs go to `<workdir>/<variant>/seed=<s>` and are skipped when their
results.json exists (rerunning finishes an interrupted sweep). Runs of one variant are grouped
over seeds into mean +- std (sample std) in `<workdir>/results.md` and `results.json`.
The trainer is `config.trainer` (a module with `train(config, workdir) -> results dict`).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_config_module(path: str):
  spec = importlib.util.spec_from_file_location("sweep_config", path)
  if spec is None:
    raise FileNotFoundError(f"{path}: not a Python config file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "sweep"):
    raise ValueError(f"{path} has no sweep(): add `def sweep(): return [{{'seed': 0}}, ...]` beside get_config")
  return module


def apply_overrides(config, overrides: dict):
  for key, value in overrides.items():
    if key.startswith("_"):
      continue
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise KeyError(f"sweep override {key!r}: the config has no field {leaf!r} (fields: {sorted(node.keys())})")
    node[leaf] = value
  return config


def variant_of(overrides: dict) -> str:
  if "_variant" in overrides:
    return str(overrides["_variant"])
  rest = {k: v for k, v in overrides.items() if k != "seed"}
  return ",".join(f"{k}={v}" for k, v in sorted(rest.items())) or "default"


def summarize(rows: list[dict]) -> dict:
  """{variant: {'n': runs, '<split>/<metric>': [mean, std]}} over the rows' seeds."""
  table: dict = {}
  for variant in dict.fromkeys(r["variant"] for r in rows):
    runs = [r for r in rows if r["variant"] == variant]
    entry = {"n": len(runs)}
    for split in ("dev", "test"):
      for metric in runs[0][split]:
        values = np.asarray([r[split][metric] for r in runs], np.float64)
        entry[f"{split}/{metric}"] = [float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0]
    table[variant] = entry
  return table


def markdown(table: dict, title: str) -> str:
  columns = [k for k in next(iter(table.values())) if k != "n"]
  lines = [f"### {title}", "", "| variant | runs | " + " | ".join(columns) + " |",
           "|---|---|" + "---|" * len(columns)]
  for variant, entry in table.items():
    cells = [f"{100 * m:.1f} ± {100 * s:.1f}" for m, s in (entry[c] for c in columns)]
    lines.append(f"| {variant} | {entry['n']} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n\n(percent; mean ± sample std over seeds)\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="path[:arg] of a config file with get_config and sweep")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--print", dest="print_only", action="store_true", help="print one command per run")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="extra override for every run (value parsed as JSON, else a string)")
  args = parser.parse_args(argv)
  path, _, arg = args.config.partition(":")
  module = load_config_module(path)
  extra = {}
  for item in args.set:
    key, _, value = item.partition("=")
    try:
      extra[key] = json.loads(value)
    except json.JSONDecodeError:
      extra[key] = value

  rows = []
  grid = module.sweep(arg) if module.sweep.__code__.co_argcount else module.sweep()
  for overrides in grid:
    overrides = {**overrides, **extra}
    variant = variant_of(overrides)
    run_dir = os.path.join(args.workdir, variant.replace("/", "_"), f"seed={overrides.get('seed', 0)}")
    config = apply_overrides(module.get_config(arg), overrides)
    if args.print_only:
      flags = " ".join(f"--config.{k}={v}" for k, v in overrides.items() if not k.startswith("_"))
      print(f"python -m {config.trainer} --config={args.config} {flags} --workdir={run_dir}")
      continue
    results_path = os.path.join(run_dir, "results.json")
    if not os.path.exists(results_path):
      print(f"== {variant} seed={overrides.get('seed', 0)} -> {run_dir}", flush=True)
      importlib.import_module(config.trainer).train(config, run_dir)
    with open(results_path) as f:
      rows.append({"variant": variant, **json.load(f)})
  if args.print_only:
    return None
  table = summarize(rows)
  text = markdown(table, f"{args.config} ({len(rows)} runs)")
  os.makedirs(args.workdir, exist_ok=True)
  with open(os.path.join(args.workdir, "results.md"), "w") as f:
    f.write(text)
  with open(os.path.join(args.workdir, "results.json"), "w") as f:
    json.dump({"config": args.config, "summary": table, "runs": rows}, f, indent=2)
  print(text)
  return table


if __name__ == "__main__":
  main()
