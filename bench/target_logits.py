"""The miniature's stage-2 step with the LM head at every position vs at the target positions only
(`data.target_buckets`): the same plain stage-2 run from the same stage-1 projector on the same data
(the default, 80 steps, is the recipe's), one after the other in this process; steps/s as the
trainer logs them (over each logging interval), the wall time of each run (compile and export included),
and the losses, which must agree.

    python bench/target_logits.py --workdir=runs/miniature [--steps=20] [--buckets=16,32,48,64]

`--workdir`: a `make reproduce` workdir whose parts, data and stage 1 are done.
"""
import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time


def run(work: str, steps: int, buckets: tuple[int, ...], out_dir: str) -> dict:
  from tga_jax.miniature import align
  from tga_jax.miniature.recipe import SCALES, load_json
  from tga_jax.train import train
  scale = dataclasses.replace(SCALES["full"], stage2_steps=steps)
  config = align.config_for(work, 2, 0, load_json(os.path.join(work, "band.json")), scale, "plain")
  config.progress_bar = False
  config.init_from = os.path.join(work, "align", "stage1")
  config.eval_every = 10**6  # the step only
  config.data.target_buckets = buckets
  start = time.perf_counter()
  train(config, out_dir)
  wall = time.perf_counter() - start
  rows = [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"))]
  train_rows = [r for r in rows if r["split"] == "train"]
  return {"wall_s": round(wall, 1), "steps_per_s": [round(r["steps_per_s"], 3) for r in train_rows],
          "loss": [round(r["loss"], 5) for r in train_rows]}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="a make reproduce workdir (parts, data and stage 1 done)")
  p.add_argument("--steps", type=int, default=20, help="stage-2 steps per run")
  p.add_argument("--buckets", default="16,32,48,64", help="data.target_buckets of the second run")
  args = p.parse_args()
  buckets = tuple(int(b) for b in args.buckets.split(","))
  scratch = tempfile.mkdtemp(prefix="target-logits-")
  try:
    results = {"every position": run(args.workdir, args.steps, (), os.path.join(scratch, "full")),
               f"target positions {buckets}": run(args.workdir, args.steps, buckets, os.path.join(scratch, "targets"))}
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  (full, at) = results.values()
  steady = lambda r: sum(r["steps_per_s"][1:]) / max(len(r["steps_per_s"]) - 1, 1)  # noqa: E731 (after compiling)
  for name, r in results.items():
    print(f"{name}: {r}")
  print(f"steps/s after the first interval: {steady(full):.3f} -> {steady(at):.3f} ({steady(at) / steady(full):.2f}x); "
        f"wall {full['wall_s']} s -> {at['wall_s']} s; losses equal to 4 decimals: "
        f"{all(abs(a - b) < 5e-5 for a, b in zip(full['loss'], at['loss']))}")


if __name__ == "__main__":
  main()
