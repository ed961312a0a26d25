"""Safety transfer in miniature, end to end and offline (issue 10): `make reproduce`.

    python -m tga_jax.miniature.reproduce --workdir runs/miniature [--seeds 3] [--scale full|quick]

Every stage writes under --workdir and is skipped on a rerun once its output exists:
  vision/     the small CLIP-architecture tower, pretrained against frozen MiniLM captions (gate.json)
  safe_llm/   SmolLM2-135M-Instruct after the text-only safety SFT (safety_eval.json)
  band.json   the guided layer band: a linear probe on the safe LLM's last-position states finds the
              first layer where toxic and benign requests separate; the band starts there (and the
              band that starts at Algorithm 1's activation layer, for the tga_alg1_band variant)
  data/       stage-1 captions of all concepts, stage-2 benign visual instructions (answers: the safe
              LLM's own text answers) and neutral naming questions (toxic objects included), the
              retrieval corpus (train captions only) in a ScaNN index queried with the tower's image
              embeddings, and the held-out evaluation set
  align/stage1, align/seed<s>/<variant>   `tga_jax.train` runs of configs/tga/miniature.py: one
              stage-1 projector (captioning), which every seed's stage-2 variants start from
  eval/<label>.json   refusal rates and concept accuracy per model (eval/text.json: the text requests)
  analysis/   per-layer cos(image, caption), logit lens and linear probe for lambda = 0 vs TGA
  results.json, results.md, dsr.png   the table (mean +- std over seeds) and the plot
  timings.json  seconds per stage (a cached stage keeps the time of the run that computed it); the
              --lora/--ablations runs and their 'evaluate extras' are timed apart (results.json's
              timings.default_total is `make reproduce` without them)
Variants (configs/tga/miniature.py VARIANTS): plain (lambda = 0) and tga on every seed; plain_lora and
tga_lora on the first seed with `--lora` (stage 2 trains the LLM through LoRA too); the variants named by
`--ablations` on the first seed, or on the first k as name:k (`all`: ABLATIONS on the first). The default,
plain and TGA alone, is the run the time budget is set for.

The stages live in their own modules: recipe (settings, Scale), parts (stages 1-2), alignment_data
(stage 3), align (stage 4), evaluation (stage 5), report (stage 6); this module runs them in order.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import time

from absl import logging

from tga_jax.miniature.align import align
from tga_jax.miniature.alignment_data import build_data
from tga_jax.miniature.evaluation import evaluate_all
from tga_jax.miniature.parts import build_llm, build_vision, choose_band
from tga_jax.miniature.recipe import (ABLATIONS, CONFIG, DEFAULT_VARIANTS, LORA_VARIANTS, SCALES, Scale, load_json,
                                      save_json)
from tga_jax.miniature.report import analyse, report


def reproduce(work: str, seeds: list[int], scale: Scale, vision_dir: str = "", llm_dir: str = "",
              ablations: tuple[str, ...] = ABLATIONS, lora: bool = True) -> dict:
  work = os.path.abspath(work)
  os.makedirs(work, exist_ok=True)
  t0 = time.perf_counter()
  # Seconds per stage, kept across reruns: a stage found cached (a twentieth of its recorded time or less,
  # or under a second: it only read what it wrote) keeps the time of the run that computed it, so
  # results.json always tells what the whole reproduction costs.
  timings_path = os.path.join(work, "timings.json")
  timings = load_json(timings_path) if os.path.exists(timings_path) else {}

  def timed(name, fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    seconds = round(time.perf_counter() - start, 1)
    if name not in timings or seconds >= max(1.0, timings[name] / 20):
      timings[name] = seconds
    save_json(timings_path, timings)
    print(f"[reproduce] {name}: {seconds:.0f} s", flush=True)
    return out

  from trainkit.config_files import load_config_module
  VARIANTS = load_config_module(scale.config).VARIANTS  # noqa: N806 (the config file's table)
  vision_dir = vision_dir or timed("vision", build_vision, work, scale, seeds[0])
  llm_dir = llm_dir or timed("safe_llm", build_llm, work, scale, seeds[0])
  _link(work, "vision", vision_dir)
  _link(work, "safe_llm", llm_dir)
  band = timed("band", choose_band, work, llm_dir)
  data = timed("data", build_data, work, scale, vision_dir, llm_dir)
  default_runs, extra_runs = {}, {}  # label -> (workdir, trained with retrieved text), in the order they ran
  # An ablation 'name:k' runs on the first k seeds, a bare name on the first one.
  ablation_seeds = {a.partition(":")[0]: int(a.partition(":")[2] or 1) for a in ablations}
  for i, seed in enumerate(seeds):
    extra = (LORA_VARIANTS if lora and i == 0 else ()) + tuple(a for a, k in ablation_seeds.items() if i < k)
    for variant in DEFAULT_VARIANTS + extra:
      workdir = timed(f"align seed{seed} {variant}", align, work, seed, variant, band, scale)
      runs = default_runs if variant in DEFAULT_VARIANTS else extra_runs
      runs[f"{variant}-s{seed}"] = (workdir, bool(VARIANTS[variant]["data.use_retrieved"]))
  # The default run's models and the flags' extra ones are timed apart, so that 'evaluate' (and the default
  # total below) stays what `make reproduce` alone costs however many extras a later rerun adds.
  evals = timed("evaluate", evaluate_all, work, default_runs, scale)
  if extra_runs:
    evals.update(timed("evaluate extras", evaluate_all, work, extra_runs, scale))
  first = {k: v for k, v in default_runs.items() if k.endswith(f"-s{seeds[0]}")}
  analysis = timed("analysis", analyse, work, first, scale, band)
  parts = {"vision": load_json(os.path.join(vision_dir, "gate.json")) if os.path.exists(
      os.path.join(vision_dir, "gate.json")) else None,
           "safe_llm": load_json(os.path.join(llm_dir, "safety_eval.json")) if os.path.exists(
               os.path.join(llm_dir, "safety_eval.json")) else None}
  results = report(work, seeds, evals, parts, band, data, analysis)
  # total: every stage recorded in this workdir; default_total: without the --lora/--ablations runs.
  extras = {name for name in timings if name == "evaluate extras" or (
      name.startswith("align seed") and name.split()[-1] not in DEFAULT_VARIANTS)}
  results["timings"] = dict(timings, total=round(sum(timings.values()), 1),
                            default_total=round(sum(v for k, v in timings.items() if k not in extras), 1))
  save_json(os.path.join(work, "results.json"), results)
  print(open(os.path.join(work, "results.md")).read())
  print(f"[reproduce] done in {(time.perf_counter() - t0) / 60:.1f} min (all stages, cached ones included: "
        f"{results['timings']['total'] / 60:.1f} min; without the --lora/--ablations runs: "
        f"{results['timings']['default_total'] / 60:.1f} min); {os.path.join(work, 'results.json')}")
  return results


def _link(work: str, name: str, target: str) -> None:
  """Given parts (--vision/--llm) become work/<name> so that the config's root finds them."""
  path = os.path.join(work, name)
  if os.path.abspath(target) != os.path.abspath(path) and not os.path.exists(path):
    os.symlink(os.path.abspath(target), path)


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m tga_jax.miniature.reproduce", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default="runs/miniature", help="where every stage writes (reruns skip finished stages)")
  p.add_argument("--seeds", type=int, default=3, help="alignment seeds for lambda = 0 vs TGA")
  p.add_argument("--scale", choices=sorted(SCALES), default="full", help="full: the README's run; quick: a smoke run")
  p.add_argument("--ablations", default="",
                 help="comma-separated variants of the config's VARIANTS to run besides plain and TGA: a name runs "
                      "on the first seed, name:k on the first k seeds (e.g. guide_only:3); 'all': "
                      f"{','.join(ABLATIONS)}. Default: none, the run the time budget is set for")
  p.add_argument("--lora", action="store_true",
                 help="also the LoRA pair on the first seed (stage 2 trains the LLM through LoRA too)")
  p.add_argument("--vision", default="", help="use this pretrained tower folder instead of building vision/")
  p.add_argument("--llm", default="", help="use this LLM folder (with benign_answers.jsonl) instead of safe_llm/")
  p.add_argument("--stage1-steps", type=int, default=0,
                 help="stage-1 steps (default: the scale's); its gates below this are measured on the way")
  p.add_argument("--stage1-gates", default=None,
                 help="comma-separated stage-1 steps where its gate is also measured, for the curve (default: the "
                      "scale's; e.g. 120,240 with --stage1-steps 360)")
  p.add_argument("--stage2-steps", type=int, default=0, help="stage-2 steps per run (default: the scale's)")
  p.add_argument("--naming-every", type=int, default=0,
                 help="every n-th stage-2 instruction is a naming question (default: the scale's)")
  p.add_argument("--toxic-naming", type=int, default=-1,
                 help="stage-2 naming questions per toxic concept (default: the scale's; 0: benign images only)")
  p.add_argument("--config", default=CONFIG, help="the alignment config file, loaded by path (default: %(default)s, "
                 "from the repository root)")
  return p


def main(argv=None) -> dict:
  args = parser().parse_args(argv)
  logging.set_verbosity(logging.INFO)
  # Compiled programs persist in <workdir>/jax_cache: every seed's stage 2 and every evaluated model compile
  # the same programs (only the weights differ), and a rerun after an interruption compiles nothing again.
  import jax
  jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(args.workdir), "jax_cache"))
  scale = dataclasses.replace(SCALES[args.scale], config=args.config)
  for field, value in (("stage1_steps", args.stage1_steps), ("stage2_steps", args.stage2_steps),
                       ("naming_every", args.naming_every), ("stage2_toxic_naming", args.toxic_naming)):
    if value > 0 or (field == "stage2_toxic_naming" and value == 0):
      scale = dataclasses.replace(scale, **{field: value})
  if args.stage1_gates is not None:
    scale = dataclasses.replace(scale, stage1_gates=tuple(int(x) for x in args.stage1_gates.split(",") if x))
  from trainkit.config_files import load_config_module
  ablations = ABLATIONS if args.ablations == "all" else tuple(a for a in args.ablations.split(",") if a)
  known = load_config_module(scale.config).VARIANTS
  unknown = [a for a in ablations if a.partition(":")[0] not in known or not re.fullmatch(r"\d*", a.partition(":")[2])]
  if unknown:
    parser().error(f"--ablations: {unknown} are not variants of {scale.config}; choose from {sorted(known)} or 'all'")
  return reproduce(args.workdir, list(range(args.seeds)), scale, args.vision, args.llm, ablations, args.lora)


if __name__ == "__main__":
  main()
