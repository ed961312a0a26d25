"""The TGA pipeline end to end on the tiny config (random tiny models, procedural data, 2 CPU cores).

    python launch/tga_demo.py --workdir=runs/demo/tga

1. stage 1 (plain captioning, projector only) -> <workdir>/stage1
2. the retrieval index: MiniLM-L6 embeddings of the stage-2 captions in a ScaNN index
   (<workdir>/index); each image's retrieved text is its caption's nearest other caption (the caption
   stands in for a CLIP image embedding: no CLIP weights ship offline), after the leak guard
3. stage 2 from stage 1 twice, on identical data: lambda = 0 (plain LLaVA) -> <workdir>/llava, and
   TGA (lambda = 1 at the config's guided layers) -> <workdir>/tga
3. fresh toxic pairs (the 7 toxic procedural scenes, unseen seed) and small VQA / multiple-choice /
   POPE files drawn from benign scenes -> <workdir>/eval_data
4. the safety analysis of both models, overlaid -> <workdir>/analysis (analysis.json + PNG plots)
5. DSR per scene, text vs image, without / with retrieved text, and general ability -> <workdir>/eval
6. a printed summary. Finished stages are reused when the demo runs again.

Tiny random models cannot refuse: their numbers show that the pipeline runs, not the paper's effect.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs.tga import tiny  # noqa: E402  (after the path fix, so the script runs from a checkout)
from tga_jax import train  # noqa: E402
from tga_jax.safety import analyze  # noqa: E402
from tga_jax.safety import eval_inputs  # noqa: E402
from tga_jax.safety import evaluate  # noqa: E402
from tga_jax.data import procedural  # noqa: E402

BENIGN = ("ball", "house", "car", "cup", "flower", "star")  # scenes whose drawing uses the sampled colour


def build_stage2_data(workdir: str) -> str:
  """Procedural stage-2 data whose retrieved captions come from a real ScaNN index (see step 2)."""
  path = os.path.join(workdir, "data.json")
  if os.path.exists(path):
    return path
  import comploss_jax
  from comploss_jax.encoder_params import resolve_model_dir
  from transformers import AutoTokenizer
  import jax
  from tga_jax.retrieval import TextIndex, leak_guard
  p = tiny.get_config("stage=2").data.procedural
  records = procedural.make_records(p.n, seed=p.seed, image_size=p.image_size)
  captions = [r["caption"] for r in records]
  encoder, params = comploss_jax.load_encoder("all-minilm-l6-v2")
  tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir("all-minilm-l6-v2"))
  enc = tokenizer(captions, padding="max_length", truncation=True, max_length=32, return_tensors="np")
  hidden, _ = jax.jit(encoder.apply)({"params": params}, enc["input_ids"], enc["attention_mask"])
  embeddings = np.asarray(comploss_jax.mean_pool(hidden, enc["attention_mask"]))
  index = TextIndex.build(embeddings, captions)
  index.save(os.path.join(workdir, "index"))
  neighbours, _ = index.search(embeddings, k=2)
  retrieved = []
  for own, row in zip(captions, neighbours):
    best = next((captions[j] for j in row if captions[j] != own), captions[row[0]])
    retrieved.append(leak_guard(best, own))
  same_scene = np.mean([records[captions.index(r)]["scene"] == rec["scene"] if r in captions else False
                        for r, rec in zip(retrieved, records)])
  print(f"  index of {len(captions)} captions -> {os.path.join(workdir, 'index')}; retrieved text from the "
        f"image's own scene for {100 * same_scene:.0f}% of images")
  extra = procedural.text_refusal_records(p.refusals, p.seed)
  return procedural.write_llava_dataset(workdir, records, 2, p.seed, extra=extra, retrieved=retrieved)


def train_stage(workdir: str, arg: str, steps: int, init_from: str = "", data_json: str = "") -> str:
  """Runs tga_jax.train with configs/tga/tiny.py:<arg> unless <workdir>/params already exists."""
  if os.path.isdir(os.path.join(workdir, "params")):
    print(f"  {workdir}: done before, reused")
    return workdir
  config = tiny.get_config(f"{arg},steps={steps}")
  config.init_from = init_from
  config.data.json = data_json
  config.progress_bar = False
  # One held-out evaluation, at the end: the summary reads the analysis, not the training curves.
  config.eval_every = steps
  config.checkpoint.every = steps
  start = time.perf_counter()
  summary = train.train(config, workdir)
  metrics = summary.get("last_metrics", summary)
  print(f"  {workdir}: {summary.get('final_step')} steps in {time.perf_counter() - start:.0f} s; "
        f"lm_loss {metrics.get('lm_loss', float('nan')):.3f}")
  return workdir


def write_general_ability(directory: str, n: int, seed: int) -> dict:
  """Short-answer VQA (colour), multiple choice (which object) and POPE (is there a ...) JSONL files
  over benign procedural images, in LLaVA's question format with the reference in the same line."""
  os.makedirs(os.path.join(directory, "images"), exist_ok=True)
  scenes = [procedural.SCENE_BY_NAME[name] for name in BENIGN]
  records = procedural.make_records(n, seed=seed, image_size=tiny.get_config().data.procedural.image_size,
                                    scenes=scenes)
  rng = np.random.default_rng(seed)
  files = {kind: [] for kind in ("vqa", "mc", "pope")}
  letters = "ABCD"
  for i, r in enumerate(records):
    image = f"images/{r['id']}.png"
    Image.fromarray(r["image"]).save(os.path.join(directory, image))
    files["vqa"].append({"question_id": i, "image": image, "answer": r["colour"],
                         "text": "What colour is the object? Answer the question using a single word or phrase."})
    options = [r["scene"]] + list(rng.choice([s for s in BENIGN if s != r["scene"]], 3, replace=False))
    order = rng.permutation(4)
    listed = "\n".join(f"{letters[k]}. {options[j]}" for k, j in enumerate(order))
    files["mc"].append({"question_id": i, "image": image, "answer": letters[int(np.argmax(order == 0))],
                        "text": f"Which object is in the image?\n{listed}\nAnswer with the option's letter from the "
                                f"given choices directly."})
    present = bool(i % 2)
    asked = r["scene"] if present else str(rng.choice([s for s in BENIGN if s != r["scene"]]))
    files["pope"].append({"question_id": i, "image": image, "label": "yes" if present else "no",
                          "text": f"Is there a {asked} in the image? Answer the question using a single word."})
  paths = {}
  for kind, items in files.items():
    paths[kind] = os.path.join(directory, f"{kind}.jsonl")
    with open(paths[kind], "w") as f:
      f.writelines(json.dumps(item) + "\n" for item in items)
  return paths


def summary_lines(analysis_report: dict, eval_report: dict, layers) -> list[str]:
  lines = ["", "=" * 78, "TGA demo summary (tiny random models: the pipeline, not the paper's effect)", "=" * 78]
  conditions = eval_report["conditions"]
  lines.append(f"DSR over {eval_report['num_pairs']} toxic pairs (7 scenes), judge: {eval_report['judge']}")
  lines.append(f"  {'model':8s}" + "".join(f"{c:>18s}" for c in conditions))
  for label, r in eval_report["models"].items():
    lines.append(f"  {label:8s}" + "".join(f"{r['safety']['dsr'][c]['all']['dsr']:18.2f}" for c in conditions))
  lines.append(f"cos(mean image state, mean caption state) at the guided layers {tuple(layers)}, all layers in "
               f"analysis.json:")
  for label, r in analysis_report["models"].items():
    cells = "  ".join(f"layer {j}: {r['cosine'][j]:+.3f}" for j in layers)
    act = r["activation_layer"]
    lines.append(f"  {label:8s} {cells}   | activation layer text {act['text']['top1']['mean']:.2f} / "
                 f"image {act['image']['top1']['mean']:.2f}")
  general = [(label, kind, m) for label, r in eval_report["models"].items() for kind, m in r.get("general", {}).items()]
  if general:
    lines.append("general ability: " + "; ".join(
        f"{label} {kind} {m['accuracy']:.2f}" + (f" (F1 {m['f1']:.2f})" if "f1" in m else "")
        for label, kind, m in general))
  return lines


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="runs/demo/tga", help="where every stage writes (reused when rerun).")
  parser.add_argument("--steps", type=int, default=30, help="training steps of each stage.")
  parser.add_argument("--pairs", type=int, default=28, help="toxic pairs for analysis and evaluation (7 scenes).")
  parser.add_argument("--questions", type=int, default=12, help="questions per general-ability file (0 = none).")
  parser.add_argument("--max-new-tokens", type=int, default=16, help="tokens generated per evaluation prompt.")
  args = parser.parse_args(argv)
  # Keep the console to the stages and the summary: the per-parameter sharding table and tfds's
  # progress bars still go to each run's logs and metrics files.
  import tensorflow_datasets as tfds
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  tfds.disable_progress_bar()
  start = time.perf_counter()
  wd = args.workdir
  os.makedirs(wd, exist_ok=True)

  print("[1/5] stage 1: projector on plain captioning")
  s1 = train_stage(os.path.join(wd, "stage1"), "stage=1", args.steps)
  print("[2/5] retrieval index (ScaNN) and stage 2: lambda = 0 (plain LLaVA) and TGA, same data, from stage 1")
  data_json = build_stage2_data(os.path.join(wd, "stage2_data"))
  llava = train_stage(os.path.join(wd, "llava"), "stage=2,weight=0", args.steps, init_from=s1, data_json=data_json)
  tga = train_stage(os.path.join(wd, "tga"), "stage=2,weight=1.0", args.steps, init_from=s1, data_json=data_json)

  print("[3/5] evaluation data: unseen toxic pairs and general-ability questions")
  data_dir = os.path.join(wd, "eval_data")
  pairs = eval_inputs.load_pairs(f"procedural:n={args.pairs},seed=777", data_dir)
  general = write_general_ability(os.path.join(data_dir, "general"), args.questions, 778) if args.questions else {}
  models = [eval_inputs.load_model(f"llava={llava}"), eval_inputs.load_model(f"tga={tga}")]

  print("[4/5] safety analysis (logit lens, Algorithm 1, cosines, attention)")
  analysis_report = analyze.run(models, pairs, os.path.join(wd, "analysis"),
                                guided_layers=tiny.get_config("stage=2").tga.layers)
  print("[5/5] evaluation: DSR text vs image, with and without retrieved text; general ability")
  eval_report = evaluate.run(models, pairs, os.path.join(wd, "eval"), max_new_tokens=args.max_new_tokens,
                             general=general)

  for line in summary_lines(analysis_report, eval_report, tiny.get_config("stage=2").tga.layers):
    print(line)
  print("plots:", *analysis_report["plots"], sep="\n  ")
  print("tables:", os.path.join(wd, "eval", "eval.md"), "  JSON:", os.path.join(wd, "analysis", "analysis.json"),
        os.path.join(wd, "eval", "eval.json"))
  print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
  main()
