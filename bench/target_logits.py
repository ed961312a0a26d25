"""The miniature's stage 2 with the LM head at every position vs at the target positions only
(`data.target_buckets`), from the same stage-1 projector on the same data:
1. one step's forward and backward (the projector's gradient) on one fixed batch of 8 stage-2 records,
   compiled first, then timed over 5 calls, twice each, alternating; the losses must agree;
2. two short plain stage-2 runs, one after the other in this process: steps/s as the trainer logs them
   (each logging interval), the wall time of each run (compiles and export included), the losses. Each new
   (length bucket, target bucket) pair is a compile inside the run, so short runs pay them in full.

    python bench/target_logits.py --workdir=runs/miniature [--steps=30] [--buckets=16,32,48,64]

`--workdir`: a `make reproduce` workdir whose parts, data and stage 1 are done.
"""
import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time


def plain_stage2_config(work: str, steps: int = 80):
  """The reproduction's plain stage-2 config of seed 0 (from its stage-1 projector)."""
  from tga_jax.miniature import align
  from tga_jax.miniature.recipe import SCALES, load_json
  scale = dataclasses.replace(SCALES["full"], stage2_steps=steps)
  return align.config_for(work, 2, 0, load_json(os.path.join(work, "band.json")), scale, "plain")


def run(work: str, steps: int, buckets: tuple[int, ...], out_dir: str) -> dict:
  from tga_jax.train import train
  config = plain_stage2_config(work, steps)
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


def step_seconds(work: str, buckets: tuple[int, ...], repeats: int = 5) -> list[dict]:
  import jax
  import numpy as np
  from tga_jax import train as tga_train
  from tga_jax.data import llava as llava_data
  config = plain_stage2_config(work)
  module, _, tokenizer = tga_train.build_model(config.model)
  params = tga_train.load_params(os.path.join(work, "align", "stage1"))
  spec = llava_data.ExampleSpec(template=config.data.template, stage=2, max_length=config.data.max_length,
                                caption_max_length=config.data.caption_max_length,
                                caption_template=config.data.caption_template)
  with tempfile.TemporaryDirectory() as tfds_dir:
    source = llava_data.prepared(llava_data.LlavaJson(json_path=os.path.join(work, "data", "stage2.json"),
                                                      data_dir=tfds_dir, file_format=llava_data.FILE_FORMAT))["train"]
    parse = llava_data.make_parse(tokenizer, module.config, spec)
    examples = [parse(source[i]) for i in range(8)]
  batch = jax.tree.map(lambda *xs: np.stack(xs), *examples)
  batch = llava_data.bucket_trimmer(tuple(config.data.buckets), tuple(config.data.caption_buckets))(batch)
  loss_fn = tga_train.make_loss_fn(module, config.tga, total_steps=config.total_steps)
  grad = jax.jit(lambda projector, b: jax.value_and_grad(
      lambda p: loss_fn({**params, "projector": p}, b, None, 0)[0])(projector))
  rows = []
  for name, b in [("every position", batch), ("target positions", llava_data.target_positions(buckets)(batch))] * 2:
    jax.block_until_ready(grad(params["projector"], b))  # compiled (or cached) first
    start = time.perf_counter()
    for _ in range(repeats):
      loss, _ = jax.block_until_ready(grad(params["projector"], b))
    rows.append({"logits": name, "shape": list(b["input_ids"].shape),
                 "targets_k": int(b["target_index"].shape[1]) if "target_index" in b else None,
                 "loss": round(float(loss), 5), "s_per_step": round((time.perf_counter() - start) / repeats, 3)})
    print(rows[-1], flush=True)
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="a make reproduce workdir (parts, data and stage 1 done)")
  p.add_argument("--steps", type=int, default=30, help="stage-2 steps per run")
  p.add_argument("--buckets", default="16,32,48,64", help="data.target_buckets of the second run")
  args = p.parse_args()
  buckets = tuple(int(b) for b in args.buckets.split(","))
  steps = step_seconds(args.workdir, buckets)
  mean = lambda name: sum(r["s_per_step"] for r in steps if r["logits"] == name) / 2  # noqa: E731
  print(f"one step (forward + backward), s: every position {mean('every position'):.3f}, target positions "
        f"{mean('target positions'):.3f} ({mean('every position') / mean('target positions'):.2f}x faster)")
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
