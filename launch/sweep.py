"""Expand a config's `sweep()` grid into runs, run them (or print their commands), tabulate results.

    python launch/sweep.py --config=configs/comploss/bbc.py:train_size=128 --workdir=runs/bbc_sweep
    python launch/sweep.py --config=configs/comploss/bbc.py --workdir=runs/x --print   # commands only
    python launch/sweep.py --config=configs/tga/tiny.py:stage=2 --workdir=/shared/runs/s \
        --submit="sbatch launch/slurm_gpu.sbatch"     # one job per run (add --print to only show them)

Each grid point is a dict of dotted overrides (`{'seed': 1, 'cmp.n_drop': 2}`), plus an optional
'_variant' label; runs go to `<workdir>/<variant>/seed=<s>` and are skipped when their
results.json exists (rerunning finishes an interrupted sweep). Runs of one variant are grouped
over seeds into mean +- std (sample std) in `<workdir>/results.md` and `results.json`.
The trainer is `config.trainer` (a module with `train(config, workdir) -> results dict`); a local
run's returned dict is saved as its results.json when the trainer writes none (the TGA trainer).
`<workdir>/index.json` lists every run: variant, seed, overrides, workdir, command, status
('done': results.json; 'trained': only the trainer's summary.json; 'pending') and its results.
Pending runs are submitted; locally, every run without results.json runs (a trained one resumes at its
last step and only finishes: export, test scores).
With --submit, each run's `<trainer> --config=... --workdir=...` is appended to the given command
(a launcher: launch/slurm_gpu.sbatch via sbatch, launch/local.py --, launch/tpu_pod.py run --) and run.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shlex
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from trainkit.config_files import apply_overrides, load_config_module  # noqa: E402


def variant_of(overrides: dict) -> str:
  if "_variant" in overrides:
    return str(overrides["_variant"])
  rest = {k: v for k, v in overrides.items() if k != "seed"}
  return ",".join(f"{k}={v}" for k, v in sorted(rest.items())) or "default"


def summarize(rows: list[dict]) -> dict:
  """{variant: {'n': runs, '<split>/<metric>': [mean, std]}} over the rows' seeds.

  'dev' is the split the trainers select the best epoch on; 'test' (a held-out split) is there only
  when every run of the variant has one (GLUE and the QA tasks report dev only).
  """
  table: dict = {}
  rows = [r for r in rows if "dev" in r]  # e.g. TGA summaries have no dev/test scores
  for variant in dict.fromkeys(r["variant"] for r in rows):
    runs = [r for r in rows if r["variant"] == variant]
    entry = {"n": len(runs)}
    for split in ("dev", "test") if all("test" in r for r in runs) else ("dev",):
      for metric in runs[0][split]:
        values = np.asarray([r[split][metric] for r in runs], np.float64)
        entry[f"{split}/{metric}"] = [float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0]
    table[variant] = entry
  return table


def markdown(table: dict, title: str) -> str:
  if not table:
    return f"### {title}\n\n(no run has dev scores to tabulate; see index.json)\n"
  columns = [k for k in next(iter(table.values())) if k != "n"]
  # The dev columns say that dev also picked the best epoch: they are optimistic, unlike test.
  headers = [c.replace("dev/", "dev (selection)/", 1) if c.startswith("dev/") else c for c in columns]
  lines = [f"### {title}", "", "| variant | runs | " + " | ".join(headers) + " |",
           "|---|---|" + "---|" * len(columns)]
  for variant, entry in table.items():
    cells = [f"{100 * m:.1f} ± {100 * s:.1f}" for m, s in (entry.get(c, (float("nan"),) * 2) for c in columns)]
    lines.append(f"| {variant} | {entry['n']} | " + " | ".join(cells) + " |")
  return ("\n".join(lines) + "\n\n(percent; mean ± sample std over seeds; dev (selection): the dev split, on which "
          "each run's best epoch was also chosen; test: a held-out split, where the task has one)\n")


def trainer_args(trainer: str, config_arg: str, overrides: dict, run_dir: str) -> list[str]:
  """[trainer module, --config=..., --config.<key>=<value>..., --workdir=...] (values as the flag parser
  reads them: tuples as '(1, 2)')."""
  flags = [f"--config.{k}={v}" for k, v in overrides.items() if not k.startswith("_")]
  return [trainer, f"--config={config_arg}", *flags, f"--workdir={run_dir}"]


def run_status(run_dir: str) -> tuple[str, dict | None]:
  for name, status in (("results.json", "done"), ("summary.json", "trained")):
    path = os.path.join(run_dir, name)
    if os.path.exists(path):
      with open(path) as f:
        return status, json.load(f)
  return "pending", None


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="path[:arg] of a config file with get_config and sweep")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--print", dest="print_only", action="store_true", help="print one command per run")
  parser.add_argument("--submit", default="", metavar="COMMAND",
                      help="launcher command to prefix each run's trainer command with, and run (e.g. 'sbatch "
                           "launch/slurm_gpu.sbatch'); with --print, only print the full commands")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="extra override for every run (value parsed as JSON, else a string)")
  args = parser.parse_args(argv)
  path, _, arg = args.config.partition(":")
  module = load_config_module(path)
  if not hasattr(module, "sweep"):
    raise SystemExit(f"{path} has no sweep(): add `def sweep(): return [{{'seed': 0}}, ...]` beside get_config")
  extra = {}
  for item in args.set:
    key, _, value = item.partition("=")
    try:
      extra[key] = json.loads(value)
    except json.JSONDecodeError:
      extra[key] = value

  rows, index = [], []
  grid = module.sweep(arg) if module.sweep.__code__.co_argcount else module.sweep()
  for overrides in grid:
    overrides = {**overrides, **extra}
    variant = variant_of(overrides)
    run_dir = os.path.join(args.workdir, variant.replace("/", "_"), f"seed={overrides.get('seed', 0)}")
    config = apply_overrides(module.get_config(arg), overrides)
    run_args = trainer_args(config.trainer, args.config, overrides, run_dir)
    command = shlex.split(args.submit) + run_args if args.submit else ["python", "-m", *run_args]
    if args.print_only:
      print(shlex.join(command))
      continue
    status, result = run_status(run_dir)
    if status == "pending" and args.submit:
      print(f"== submit {variant} seed={overrides.get('seed', 0)}: {shlex.join(command)}", flush=True)
      subprocess.run(command, check=True)
    elif status != "done" and not args.submit:  # 'trained' too: resuming at the last step only finishes it
      print(f"== {variant} seed={overrides.get('seed', 0)} -> {run_dir}", flush=True)
      result = importlib.import_module(config.trainer).train(config, run_dir)
      results_path = os.path.join(run_dir, "results.json")
      if not os.path.exists(results_path):  # the trainer writes none: keep what it returned
        with open(results_path, "w") as f:
          json.dump(result, f, indent=2)
      status, result = run_status(run_dir)
    index.append({"variant": variant, "seed": overrides.get("seed", 0), "overrides": overrides, "workdir": run_dir,
                  "command": shlex.join(command), "status": status, "results": result})
    if status == "done":
      rows.append({"variant": variant, **result})
  if args.print_only:
    return None
  os.makedirs(args.workdir, exist_ok=True)
  with open(os.path.join(args.workdir, "index.json"), "w") as f:
    json.dump(index, f, indent=2, default=str)
  if args.submit:
    print(f"submitted; rerun without --submit after the jobs finish to collect results (index: "
          f"{os.path.join(args.workdir, 'index.json')})")
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
