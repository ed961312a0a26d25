"""The safety-mechanism analysis (spec §2) as a CLI: JSON + PNG plots for one model or several overlaid.

    python -m tga_jax.safety.analyze --model=runs/tiny/llava --data=procedural --out=runs/tiny/analysis
    python -m tga_jax.safety.analyze --model=llava=runs/tiny/llava --model=tga=runs/tiny/tga \\
        --config=configs/tga/tiny.py --data=toxic_pairs.json --out=DIR

For every toxic image/caption pair, two forward passes with the same safety system prompt: the image
run `<image>\\nDescribe this image.` with the image and the text run `Describe this scene: {caption}`
(text only). Written to --out:
  analysis.json   per model: activation layer (Algorithm 1, top-1 and the reference's top-5 variant),
                  end layer, per-layer cos(mean image state, mean caption state), per-layer attention of
                  the last position to the image / caption span, per-layer refusal probability; both runs.
  cosine.png, attention.png, refusal_prob.png, activation_layers.png   (models overlaid).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from tga_jax.safety import analysis
from tga_jax.safety import eval_inputs

PLOTS = ("cosine.png", "attention.png", "refusal_prob.png", "activation_layers.png")


def collect_stats(model: eval_inputs.Model, pairs, run: str, refusal_ids, system: str, batch_size: int = 8,
                  top_ks=(1, 5)) -> dict:
  """analysis.forward_stats of one run ('image' or 'text') over all pairs, concatenated on the sample axis."""
  tokens, images = eval_inputs.tokenize_runs(pairs, run, model, system)
  collected = []
  for batch, real in eval_inputs.batches(tokens, images, model, batch_size):
    span = batch["segments"]["image" if run == "image" else "caption"]
    pixels = batch["pixel_values"] if run == "image" else None  # the text run needs no vision tower
    stats = analysis.forward_stats(model.params, batch["input_ids"], batch["attention_mask"], pixels, span,
                                   config=model.module.config, refusal_ids=tuple(refusal_ids),
                                   top_ks=tuple(top_ks))
    stats = jax.tree.map(np.asarray, stats)
    # The sample axis is 0 for per-sample values ([B]) and 1 for per-layer ones ([L(+1), B, ...]).
    collected.append({k: v[:real] if v.ndim == 1 else v[:, :real] for k, v in stats.items()})
  return {k: np.concatenate([c[k] for c in collected], axis=0 if collected[0][k].ndim == 1 else 1)
          for k in collected[0]}


def analyze_model(model: eval_inputs.Model, pairs, refusal_ids, system: str, batch_size: int = 8,
                  top_ks=(1, 5), benign_pairs=(), probe_threshold: float = 0.9) -> dict:
  """The per-model summary (analysis.summarise) over all pairs, both runs; with benign_pairs, also the
  linear probe per run: 'probe' {run: {'accuracy': [L+1], 'first_layer': int (-1: never), 'threshold'}}."""
  per_run = {run: collect_stats(model, pairs, run, refusal_ids, system, batch_size, top_ks)
             for run in ("image", "text")}
  summary = analysis.summarise(per_run["image"], per_run["text"], top_ks)
  if benign_pairs:
    summary["probe"] = {}
    for run in ("image", "text"):
      benign = collect_stats(model, benign_pairs, run, refusal_ids, system, batch_size, top_ks)["last_states"]
      states = np.concatenate([per_run[run]["last_states"], benign], axis=1)
      labels = np.r_[np.ones(len(pairs), int), np.zeros(len(benign_pairs), int)]
      accuracy = analysis.probe_accuracies(states, labels)
      summary["probe"][run] = {"accuracy": accuracy, "first_layer": analysis.first_layer_at(accuracy, probe_threshold),
                               "threshold": probe_threshold}
  return summary


def plot(results: dict, out_dir: str, guided_layers=()) -> list[str]:
  """Per-layer curves, text (solid) vs image (dashed), one colour per model; returns the PNG paths.
  guided_layers: the hidden-state indices TGA guides, shaded in the cosine plot."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.ticker import MaxNLocator

  colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  paths = []

  def save(fig, name):
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

  fig, ax = plt.subplots(figsize=(6, 4))
  if guided_layers:
    ax.axvspan(min(guided_layers) - 0.4, max(guided_layers) + 0.4, color="gold", alpha=0.25,
               label=f"guided layers {min(guided_layers)}-{max(guided_layers)}")
  for i, (label, r) in enumerate(results.items()):
    ax.plot(range(len(r["cosine"])), r["cosine"], "o-", color=colours[i % len(colours)], label=label)
  ax.set(xlabel="layer (0 = embeddings)", ylabel="cos(mean image, mean caption state)",
         title="Image vs caption hidden states")
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.legend(fontsize=8, loc="best", framealpha=0.8)
  save(fig, "cosine.png")

  curves = (("attention", "attention.png", "attention mass (heads summed)", 1,
             "Last position's attention to the span\n(image tokens in the image run, caption in the text run)"),
            ("refusal_prob", "refusal_prob.png", "p_l(refusal ids)", 0, "Logit lens: probability of refusal tokens"))
  for key, name, ylabel, first, title in curves:
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, r) in enumerate(results.items()):
      colour = colours[i % len(colours)]
      for run, style in (("text", "o-"), ("image", "s--")):
        values = r[key][run]
        ax.plot(range(first, first + len(values)), values, style, color=colour, label=f"{label} {run}")
    ax.set(xlabel="layer", ylabel=ylabel, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    save(fig, name)

  fig, ax = plt.subplots(figsize=(6, 4))
  bars = [(f"{run}\n{k}", run, k) for run in ("text", "image") for k in ("top1", "top5")] + \
         [("text\nend", "text", "end"), ("image\nend", "image", "end")]
  width = 0.8 / max(len(results), 1)
  for i, (label, r) in enumerate(results.items()):
    values = [r["end_layer"][run]["mean"] if k == "end" else r["activation_layer"][run][k]["mean"]
              for _, run, k in bars]
    values = [np.nan if v is None else v for v in values]  # no end layer in any sample: no bar
    ax.bar(np.arange(len(bars)) + i * width, values, width, color=colours[i % len(colours)], label=label)
  ax.set_xticks(np.arange(len(bars)) + width * (len(results) - 1) / 2, [b[0] for b in bars], fontsize=8)
  ax.set(ylabel="mean layer", title="Safety activation layer (Algorithm 1) and end layer\n(end: over samples "
                                    "that have one)")
  ax.legend()
  save(fig, "activation_layers.png")

  if any("probe" in r for r in results.values()):
    fig, ax = plt.subplots(figsize=(6, 4))
    curves = [(label, run) for label, r in results.items() if "probe" in r for run in ("text", "image")]
    for k, (label, run) in enumerate(curves):
      # Curves often coincide (e.g. 1.0 from the first layer on): a small vertical offset and hollow,
      # shrinking markers keep every one of them visible.
      values = np.asarray(results[label]["probe"][run]["accuracy"]) + 0.006 * (k - (len(curves) - 1) / 2)
      colour = colours[list(results).index(label) % len(colours)]
      ax.plot(range(len(values)), values, "-" if run == "text" else "--", color=colour, lw=1.2,
              marker="o" if run == "text" else "s", markersize=7 - k, markerfacecolor="none",
              label=f"{label} {run}")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":", label="chance (0.5)")
    ax.set(xlabel="layer (0 = embeddings)", ylabel="cross-validated accuracy", ylim=(0.4, 1.04),
           title="Linear probe: toxic vs benign from the last position's state\n(curves offset by <1% to stay "
                 "visible)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    save(fig, "probe.png")
  return paths


def run(models, pairs, out_dir: str, phrases=analysis.DEFAULT_REFUSAL_PHRASES, system=eval_inputs.SAFETY_SYSTEM,
        batch_size: int = 8, benign_pairs=(), probe_threshold: float = 0.9, guided_layers=()) -> dict:
  """Analyses each model, writes analysis.json and the plots into out_dir; returns the JSON object.
  benign_pairs: benign images with captions, for the toxic-vs-benign linear probe (skipped when empty).
  guided_layers: TGA's guided hidden-state indices, shaded in cosine.png."""
  os.makedirs(out_dir, exist_ok=True)
  report = {"num_pairs": len(pairs), "num_benign_pairs": len(benign_pairs), "refusal_phrases": list(phrases),
            "system": system, "guided_layers": [int(j) for j in guided_layers], "models": {}}
  for model in models:
    start = time.perf_counter()
    ids = analysis.refusal_token_ids(model.tokenizer, phrases)
    summary = analyze_model(model, pairs, ids, system, batch_size, benign_pairs=benign_pairs,
                            probe_threshold=probe_threshold)
    summary["refusal_ids"] = list(ids)
    summary["refusal_tokens"] = [model.tokenizer.decode([i]) for i in ids]
    summary["seconds"] = round(time.perf_counter() - start, 2)
    report["models"][model.label] = summary
  report["plots"] = plot(report["models"], out_dir, guided_layers)
  with open(os.path.join(out_dir, "analysis.json"), "w") as f:
    json.dump(report, f, indent=1)
  return report


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m tga_jax.safety.analyze", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", action="append", required=True, metavar="[LABEL=]PATH",
                 help="a tga_jax.train workdir (with params/) or a llava-hf folder / composition JSON; repeat it "
                      "to overlay models (e.g. --model=llava=runs/a --model=tga=runs/b). LABEL names the model in "
                      "the JSON and plots (default: the folder name).")
  p.add_argument("--compare", nargs="*", default=[], metavar="[LABEL=]PATH",
                 help="more models to overlay, the same as further --model flags.")
  p.add_argument("--data", required=True,
                 help="a LLaVA JSON of toxic pairs (records with 'image' and 'image_caption' (else the first "
                      "answer); records with toxic=false are skipped), or 'procedural[:n=28,seed=12345,"
                      "image_size=32]' to draw the 7 toxic scenes of tga_jax.data.procedural into --out.")
  p.add_argument("--out", required=True, help="output folder for analysis.json and the PNG plots.")
  p.add_argument("--config", default="configs/tga/tiny.py",
                 help="the training config of workdir models (architecture, tokenizer, template); 'file.py[:arg]'.")
  p.add_argument("--tokenizer", default="", help="tokenizer path or name (default: the config's / the model folder's).")
  p.add_argument("--template", default="", help="conversation template (default: the config's stage-2 template, "
                                                 "else vicuna_v1).")
  p.add_argument("--refusal-phrases", default=",".join(analysis.DEFAULT_REFUSAL_PHRASES),
                 help="comma-separated refusal words; their token ids (at a text's start and after a space; see "
                      "tga_jax.safety.analysis.refusal_token_ids) form K, the refusal ids of Algorithm 1.")
  p.add_argument("--system", default=eval_inputs.SAFETY_SYSTEM, help="the safety system prompt both runs share.")
  p.add_argument("--image-dir", default="", help="image root for --data (default: the JSON's folder).")
  p.add_argument("--limit", type=int, default=0, help="analyse at most this many pairs (0 = all).")
  p.add_argument("--batch-size", type=int, default=8, help="pairs per forward pass.")
  p.add_argument("--benign-data", default="",
                 help="a LLaVA JSON whose toxic=false records (image + caption) are the benign side of the linear "
                      "probe (toxic vs benign from the last position's state, per layer); no probe without it.")
  p.add_argument("--probe-threshold", type=float, default=0.9,
                 help="the probe layer is the first whose cross-validated accuracy reaches this.")
  p.add_argument("--guided-layers", default="",
                 help="comma-separated hidden-state indices TGA guided, shaded in cosine.png (default: --config's "
                      "tga.layers; 'none': no shading).")
  return p


def main(argv=None):
  args = parser().parse_args(argv)
  phrases = tuple(p.strip() for p in args.refusal_phrases.split(",") if p.strip())
  if not phrases:
    raise SystemExit("--refusal-phrases: no phrase given")
  pairs = eval_inputs.load_pairs(args.data, args.out, args.image_dir, args.limit)
  models = [eval_inputs.load_model(m, args.config, args.tokenizer, args.template) for m in args.model + args.compare]
  labels = [m.label for m in models]
  if len(set(labels)) != len(labels):
    raise SystemExit(f"--model: labels {labels} repeat; name them as LABEL=PATH")
  benign = eval_inputs.load_pairs(args.benign_data, args.out, args.image_dir, args.limit, benign_only=True) \
      if args.benign_data else ()
  if args.guided_layers == "none":
    guided = ()
  elif args.guided_layers:
    guided = tuple(int(j) for j in args.guided_layers.split(","))
  else:
    from trainkit.config_files import load_config
    guided = tuple(load_config(args.config).tga.layers)
  report = run(models, pairs, args.out, phrases, args.system, args.batch_size, benign, args.probe_threshold,
               guided)
  for label, r in report["models"].items():
    act = r["activation_layer"]
    print(f"{label}: activation layer text {act['text']['top1']['mean']:.2f} (top-5 {act['text']['top5']['mean']:.2f})"
          f", image {act['image']['top1']['mean']:.2f} (top-5 {act['image']['top5']['mean']:.2f}); cosine per layer "
          + " ".join(f"{c:.3f}" for c in r["cosine"]))
    for run_name, probe in r.get("probe", {}).items():
      print(f"  probe ({run_name} run): first layer with accuracy >= {probe['threshold']}: {probe['first_layer']}; "
            f"per layer " + " ".join(f"{a:.2f}" for a in probe["accuracy"]))
  print("wrote", os.path.join(args.out, "analysis.json"), *report["plots"])
  return report


if __name__ == "__main__":
  main()
