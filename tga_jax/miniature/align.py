"""Stage 4 of the miniature reproduction: the `tga_jax.train` runs of the alignment config. One stage 1
(captioning, its gate measured on bare held-out images), then each seed's stage-2 variants from it.
"""
from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
from absl import logging

from tga_jax.miniature.evaluation import evaluate_model, load_eval_model
from tga_jax.miniature.recipe import CAPTION_PROMPT, Scale, load_json, mentions, save_json


def config_for(work: str, stage: int, seed: int, band: dict, scale: Scale, variant: str | None = None,
               schedule_steps: int = 0):
  """The run's config; `schedule_steps`: stage 1's schedule length when it pauses before the end."""
  from trainkit.config_files import apply_overrides, load_config, load_config_module
  steps = scale.stage1_steps if stage == 1 else scale.stage2_steps
  fields = dict(load_config_module(scale.config).VARIANTS[variant]) if variant else {}
  # '_band': which of band.json's bands the variant guides (default: the probe band).
  layers = band[fields["_band"]] if "_band" in fields else band
  arg = (f"stage={stage},seed={seed},steps={steps},batch={scale.batch},root={work},"
         f"band={layers['first']}-{layers['last']},schedule_steps={schedule_steps}")
  config = load_config(f"{scale.config}:{arg}")
  apply_overrides(config, {k: v for k, v in fields.items() if not k.startswith("_")})
  config.progress_bar = True
  return config


def align(work: str, seed: int, variant: str, band: dict, scale: Scale) -> str:
  """One `tga_jax.train` run; skipped when its params are exported. Variant 'stage1' is the captioning
  stage, run once (with the first seed that needs it): as LLaVA's released stage-1 projector, every
  seed's stage 2 starts from it, so the seeds compare the stage-2 variants."""
  from tga_jax.train import train
  workdir = os.path.join(work, "align", *(("stage1",) if variant == "stage1" else (f"seed{seed}", variant)))
  if variant == "stage1":  # its own cache: the curve's points (a shorter finished stage 1 is continued)
    return stage1(work, seed, band, scale, workdir)
  if os.path.exists(os.path.join(workdir, "summary.json")) and os.path.isdir(os.path.join(workdir, "params")):
    return workdir
  config = config_for(work, 2, seed, band, scale, variant)
  config.init_from = align(work, seed, "stage1", band, scale)
  logging.info("align seed %d %s -> %s", seed, variant, workdir)
  train(config, workdir)
  return workdir


def stage1(work: str, seed: int, band: dict, scale: Scale, workdir: str) -> str:
  """Stage 1 (captioning, projector only) as one run, paused at each of `scale.stage1_gates` to measure
  the gate: can the LVLM name the object of held-out renders from the bare image? Pausing is exact: every
  segment follows the schedule of the whole run (its length is the last step) and a resumed run continues
  from its checkpoint on the next batch, so the curve's points are the one run's states. Writes
  <workdir>/gate.json (the last point) and curve.json (every point: steps, samples seen, training seconds
  so far, concept accuracy)."""
  from tga_jax.train import train
  curve_path = os.path.join(workdir, "curve.json")
  curve = load_json(curve_path) if os.path.exists(curve_path) else []
  done = load_json(os.path.join(workdir, "summary.json")).get("final_step", 0) if os.path.exists(
      os.path.join(workdir, "summary.json")) else 0
  config_path = os.path.join(workdir, "config.json")
  if done and os.path.exists(config_path):  # a decaying schedule cannot be stretched after the fact
    previous = load_json(config_path)
    optimizer = previous["optimizer"]
    length = optimizer.get("schedule_steps") or previous["total_steps"]
    if optimizer.get("schedule") != "constant" and length != scale.stage1_steps and done < scale.stage1_steps:
      raise ValueError(f"{workdir} holds a stage 1 whose {optimizer.get('schedule')} schedule ends at step {length}, "
                       f"not at {scale.stage1_steps}: it cannot be continued to that step. Remove {workdir} "
                       "(and the align/seed* runs made from it) or use a new --workdir.")
  for steps in sorted({*scale.stage1_gates, scale.stage1_steps}):
    if steps > scale.stage1_steps or any(point["steps"] == steps for point in curve):
      continue
    if steps < done:  # the run is past this point: it cannot be measured any more
      logging.warning("stage 1 is at step %d: its gate at step %d cannot be measured now", done, steps)
      continue
    config = config_for(work, 1, seed, band, dataclasses.replace(scale, stage1_steps=steps),
                        schedule_steps=scale.stage1_steps)
    logging.info("stage 1 to step %d -> %s", steps, workdir)
    start = time.perf_counter()
    train(config, workdir)
    # Seconds of training to this point (the gates' own evaluation excluded), summed over the segments.
    seconds = ((curve[-1].get("seconds") or 0.0) if curve else 0.0) + time.perf_counter() - start
    gate = stage1_gate(work, workdir, scale)
    curve.append(dict(steps=steps, samples=steps * scale.batch, seconds=round(seconds, 1),
                      **{k: gate[k] for k in ("concept_accuracy", "concept_accuracy_toxic")}))
    save_json(curve_path, curve)
    save_json(os.path.join(workdir, "gate.json"), dict(gate, steps=steps))
  return workdir


def stage1_gate(work: str, workdir: str, scale: Scale) -> dict:
  """Stage-1 concept accuracy on bare held-out images: the stage-1 prompt (the image alone), the reply
  names the concept (benign renders; toxic ones reported beside)."""
  data_dir = os.path.join(work, "data")
  rows = [dict(r, text=CAPTION_PROMPT) for r in load_json(os.path.join(data_dir, "eval.json"))["image"]
          if r["kind"] == "caption"]
  # Stage 1 trains on LLaVA's 'plain' template (the image tokens, then the caption): asked the same way.
  result = evaluate_model(load_eval_model(work, workdir, "stage1", scale, template="plain"), rows, data_dir, False, scale)
  named = [mentions(x["reply"], x["concept"]) for x in result["replies"] if x["toxic"]]
  return {"concept_accuracy": result["concept_accuracy"],
          "concept_accuracy_toxic": float(np.mean(named)) if named else float("nan"),
          "replies": result["replies"]}
