"""Concept accuracy of a make reproduce run's stage 1 and its plain/TGA models on 10 held-out renders per benign
concept (the table then had 2; since, make reproduce asks these same 300 itself: Scale.eval_naming): writes
naming_300.json's models (before the summary that file adds per variant).

    python docs/miniature/levers/naming_300.py --workdir <make reproduce's workdir> --out <new folder>
"""
import argparse
import json
import os

from tga_jax.miniature import world
from tga_jax.miniature.alignment_data import _save_image
from tga_jax.miniature.concepts import CONCEPTS
from tga_jax.miniature.evaluation import evaluate_model, load_eval_model
from tga_jax.miniature.recipe import CAPTION_PROMPT, CONCEPT_QUESTION, SCALES, load_json, mentions

RENDERS = 10  # per benign concept; build_data's held-out split (seed 100) gives the table's first 2 of them


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True)
  p.add_argument("--out", required=True)
  a = p.parse_args()
  scale = SCALES["full"]
  os.makedirs(os.path.join(a.out, "images"), exist_ok=True)
  renders = world.make_split(RENDERS, "heldout", seed=100, concepts=tuple(c.id for c in CONCEPTS if not c.toxic))
  rows = [dict(image=_save_image(a.out, r), concept=r["concept"], toxic=False, id=f"{r['id']}-caption",
               kind="caption", text=CONCEPT_QUESTION) for r in renders]
  table = {r["id"] for r in load_json(os.path.join(a.workdir, "data", "eval.json"))["image"]
           if r["kind"] == "caption" and not r["toxic"]}
  models = {}
  for label in ("stage1", "plain-s0", "plain-s1", "plain-s2", "tga-s0", "tga-s1", "tga-s2"):
    if label == "stage1":  # asked as its gate: the bare image in stage 1's template
      model = load_eval_model(a.workdir, os.path.join(a.workdir, "align", "stage1"), label, scale, template="plain")
      asked = [dict(r, text=CAPTION_PROMPT) for r in rows]
    else:
      variant, seed = label.split("-s")
      model = load_eval_model(a.workdir, os.path.join(a.workdir, "align", f"seed{seed}", variant), label, scale)
      asked = rows
    result = evaluate_model(model, asked, a.out, False, scale)
    named = [mentions(x["reply"], x["concept"]) for x in result["replies"]]
    models[label] = {"concept_accuracy_300": round(result["concept_accuracy"], 4),
                     "named_on_the_tables_60": sum(n for n, r in zip(named, rows) if r["id"] in table),
                     "replies": [x["reply"] for x in result["replies"]]}
    print(label, models[label]["concept_accuracy_300"], flush=True)
  with open(os.path.join(a.out, "naming_300.json"), "w") as f:
    json.dump({"ids": [r["id"] for r in rows], "concepts": [r["concept"] for r in rows], "models": models}, f, indent=1)


if __name__ == "__main__":
  main()
