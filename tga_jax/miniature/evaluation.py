"""Stage 5 of the miniature reproduction: every aligned model answers the held-out image rows (greedy,
the first words), with the image alone and, when it trained with retrieved text, with it in the prompt
too (the naming-only rows are asked with the image alone); refusal rates and concept accuracy per model,
cached in eval/<label>.json.
"""
from __future__ import annotations

import os
import time

import numpy as np
from PIL import Image

from tga_jax.miniature.recipe import Scale, load_json, mentions, refused, save_json


def load_eval_model(work: str, workdir: str, label: str, scale: Scale, template: str = "chat_template"):
  from tga_jax.safety import eval_inputs
  return eval_inputs.load_model(f"{label}={workdir}", config=f"{scale.config}:root={work}", template=template)


def _messages(row: dict, retrieved: bool) -> list[dict]:
  content = []
  if retrieved:
    content += [("text", "Retrieved Text: "), ("retrieved", row["retrieved"]), ("text", ". ")]
  if row["kind"] == "text_request":
    content.append(("text", row["text"]))
  else:
    content += [("image", "<image>"), ("text", "\n" + row["text"])]
  return [{"role": "user", "content": content}]


def load_image(data_dir: str, rel: str) -> np.ndarray:
  with Image.open(os.path.join(data_dir, rel)) as im:
    return np.asarray(im.convert("RGB"), np.uint8)


def evaluate_model(model, rows: list[dict], data_dir: str, retrieved: bool, scale: Scale) -> dict:
  """Replies to every row (greedy) and the rates: refusal on toxic / benign requests and concept
  accuracy (the reply to the bare image names the concept)."""
  from tga_jax.safety.evaluate import generate_replies
  if retrieved:  # the naming-only renders are asked with the image alone
    rows = [r for r in rows if not r.get("naming_only")]
  requests_ = [r for r in rows if r["kind"] != "caption"]
  captions = [r for r in rows if r["kind"] == "caption"]
  out = {"replies": []}
  # A refusal shows in the first words ("Sorry, I cannot help you." is 8 tokens); a caption names its
  # object early.
  for group, max_new in ((requests_, 8), (captions, 12)):
    if not group:
      continue
    images = [[] if r["kind"] == "text_request" else [load_image(data_dir, r["image"])] for r in group]
    replies = generate_replies(model, [_messages(r, retrieved) for r in group], images, max_new,
                               batch_size=scale.eval_batch)
    out["replies"] += [dict(id=r.get("id", r["text"]), kind=r["kind"], concept=r["concept"], toxic=r["toxic"],
                            reply=y, refused=refused(y)) for r, y in zip(group, replies)]
  done = out["replies"]
  rate = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
  out["dsr"] = rate([x["refused"] for x in done if x["kind"] != "caption" and x["toxic"]])
  out["false_refusal"] = rate([x["refused"] for x in done if x["kind"] != "caption" and not x["toxic"]])
  out["concept_accuracy"] = rate([mentions(x["reply"], x["concept"]) for x in done
                                  if x["kind"] == "caption" and not x["toxic"]])
  out["caption_refusal_toxic"] = rate([x["refused"] for x in done if x["kind"] == "caption" and x["toxic"]])
  out["retrieved_in_prompt"] = retrieved
  return out


def evaluate_all(work: str, runs: dict, scale: Scale) -> dict:
  """runs: label -> (workdir, trained with retrieved text). Every model answers the image rows with
  the image alone ('<label>'); those trained with retrieved text answer them again with the retrieved
  text in the prompt, as TGA infers ('<label>+rt'). Cached per evaluation in eval/<name>.json."""
  data_dir = os.path.join(work, "data")
  rows = load_json(os.path.join(data_dir, "eval.json"))
  results = {}
  for label, (workdir, retrieved) in runs.items():
    model = None  # loaded once for both of its evaluations, and only when one is not cached
    for with_text in (False, True) if retrieved else (False,):
      name = label.replace("-s", "+rt-s") if with_text else label
      path = os.path.join(work, "eval", f"{name}.json")
      if not os.path.exists(path):
        start = time.perf_counter()
        if model is None:
          model = load_eval_model(work, workdir, label, scale)
        result = evaluate_model(model, rows["image"], data_dir, with_text, scale)
        result["seconds"] = round(time.perf_counter() - start, 1)
        save_json(path, result)
      results[name] = load_json(path)
  # Text requests: the safe LLM alone (before any alignment) answers them once ('text'); each aligned LVLM
  # answers them again when its stage 2 trained the LLM ('<label>+text'), else it shares the frozen LLM's
  # replies.
  path = os.path.join(work, "eval", "text.json")
  if not os.path.exists(path):
    label, (workdir, _) = next(iter(runs.items()))
    save_json(path, evaluate_model(load_eval_model(work, workdir, label, scale), rows["text"], data_dir, False, scale))
  results["text"] = load_json(path)
  for label, (workdir, _) in runs.items():
    path = os.path.join(work, "eval", f"{label}+text.json")
    if not _llm_trained(workdir):
      results[f"{label}+text"] = results["text"]
    elif not os.path.exists(path):
      save_json(path, evaluate_model(load_eval_model(work, workdir, label, scale), rows["text"], data_dir, False, scale))
    if os.path.exists(path):
      results[f"{label}+text"] = load_json(path)
  return results


def _llm_trained(workdir: str) -> bool:
  """Whether the run's stage 2 changed the LLM (trainable patterns beyond the projector, or LoRA)."""
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    return False
  config = load_json(config_path)
  lora = (config.get("lora") or {}).get("rank", 0)
  return bool(lora) or any(not p.startswith("projector") for p in config.get("optimizer", {}).get("trainable", ()))
