"""Experiment (not a test): BBC News with few training examples, baseline vs CmpLoss c=2, many seeds.

    python bench/bbc_experiment.py [--sizes 64,128,256 --seeds 5 --epochs 10 --workdir runs/bbc_experiment]

For each training-set size it runs launch/sweep.py's grid (seeds x {baseline, cmploss_c2}, same
steps, batch and learning rate: the same budget of updates; CmpLoss spends (c+1)x the compute per
update) and prints one table: test accuracy and macro-F1, mean +- sample std over seeds, and the
difference. Finished runs are reused, so an interrupted experiment resumes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from launch import sweep  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", default="64,128,256")
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--workdir", default="runs/bbc_experiment")
  parser.add_argument("--set", action="append", default=[], help="extra overrides passed to every run")
  args = parser.parse_args()
  rows = []
  for size in map(int, args.sizes.split(",")):
    table = sweep.main([f"--config=configs/comploss/bbc.py:train_size={size},seeds={args.seeds},epochs={args.epochs}",
                        f"--workdir={os.path.join(args.workdir, f'n{size}')}", "--set=progress_bar=false",
                        *[f"--set={s}" for s in args.set]])
    base, cmp = table["baseline"], table["cmploss_c2"]
    rows.append((size, base, cmp))
  lines = ["| train size | baseline acc | CmpLoss c=2 acc | Δ acc | baseline macro-F1 | CmpLoss macro-F1 | Δ F1 |",
           "|---|---|---|---|---|---|---|"]
  for size, base, cmp in rows:
    cells = [size]
    for metric in ("test/accuracy", "test/macro_f1"):
      (bm, bs), (cm, cs) = base[metric], cmp[metric]
      cells += [f"{100 * bm:.1f} ± {100 * bs:.1f}", f"{100 * cm:.1f} ± {100 * cs:.1f}", f"{100 * (cm - bm):+.1f}"]
    lines.append("| " + " | ".join(str(c) for c in cells) + " |")
  text = (f"BBC News test set (444 articles), MiniLM-L6, {args.seeds} seeds, {args.epochs} epochs, "
          f"best-on-dev checkpoint:\n\n" + "\n".join(lines) + "\n")
  with open(os.path.join(args.workdir, "table.md"), "w") as f:
    f.write(text)
  with open(os.path.join(args.workdir, "table.json"), "w") as f:
    json.dump([{"size": s, "baseline": b, "cmploss_c2": c} for s, b, c in rows], f, indent=2)
  print(text)


if __name__ == "__main__":
  main()
