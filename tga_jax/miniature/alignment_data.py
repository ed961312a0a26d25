"""Stage 3 of the miniature reproduction: the alignment data (LLaVA JSON with rendered images) and the
retrieval that TGA's prompts and "+rt" inference read.

Stage 1 captions every concept, toxic ones included; stage 2 asks benign images the safe LLM's own text
requests (answered with its own text answers) plus neutral naming questions; the evaluation set holds
held-out renders with held-out request templates, more held-out benign renders asked only to name the
object, and held-out text requests. The retrieval corpus is
descriptions only: nothing the safety SFT trained on (`corpus_overlap_with_safety_sft` is 0).
"""
from __future__ import annotations

import os
import re

import numpy as np
from PIL import Image

from tga_jax.miniature import requests as rq
from tga_jax.miniature import world
from tga_jax.miniature.concepts import BY_ID, CONCEPTS
from tga_jax.miniature.recipe import (CAPTION_PROMPT, CONCEPT_QUESTION, NAMING_QUESTIONS, Scale, load_json, refused,
                                      save_json)


def _save_image(directory: str, record: dict) -> str:
  rel = f"images/{record['id']}.png"
  path = os.path.join(directory, rel)
  if not os.path.exists(path):
    Image.fromarray(record["image"]).save(path)
  return rel


def first_sentence(text: str, limit: int = 140) -> str:
  """The answer's first sentence (at most `limit` characters): short stage-2 targets keep sequences,
  and so CPU steps, short; the first sentence is what says whether the model answers or refuses."""
  match = re.search(r"[.!?](\s|$)", text[20:])  # not at "Dr." or "1." in the first words
  short = text[:20 + match.end()].strip() if match else text.strip()
  return short if len(short) <= limit else short[:limit].rsplit(" ", 1)[0] + "."


def _user(value: str) -> dict:
  return {"from": "human", "value": value}


def retrieval_corpus() -> list[str]:
  """The texts retrieval can return: every train-split caption phrasing of every concept, toxic ones
  included ("A picture of a handgun on a desk."): descriptions of what an image shows, never a request.

  Nothing the LLM was safety-tuned on is here (tests/test_miniature_reproduce.py checks it): with the
  SFT's own toxic requests in the corpus, "+rt" would re-ask the text request the LLM learned to refuse,
  and its DSR would measure retrieval, not transfer. Held-out images have held-out caption phrasings, so
  a retrieved caption is never the image's own (the leak guard is applied all the same).
  """
  return world.all_captions("train")


def corpus_overlap_with_safety_sft() -> int:
  """How many retrieval texts the safety SFT trained on (requests or the refusal), compared lower-cased
  with punctuation and spacing removed: 0 by construction, checked in the report and the tests."""
  from tga_jax.miniature import safety_sft

  def norm(text):
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())
  sft = {norm(r["text"]) for r in rq.requests("train", "text")} | {norm(safety_sft.REFUSAL)}
  return sum(norm(t) in sft for t in retrieval_corpus())


def build_retrieval(data_dir: str, vision_dir: str):
  """(index, embed_images): the ScaNN index over MiniLM embeddings of `retrieval_corpus()`, queried by the
  tower's image embeddings (embed_images: list of uint8[S, S, 3] -> float32[N, 384])."""
  from tga_jax.miniature import vision_pretrain
  from tga_jax.retrieval import TextIndex
  index_dir = os.path.join(data_dir, "index")
  if os.path.exists(os.path.join(index_dir, "index.json")):
    index = TextIndex.load(index_dir)
  else:
    texts = retrieval_corpus()
    index = TextIndex.build(vision_pretrain.embed_texts(texts), texts)
    index.save(index_dir)
  cfg, params = vision_pretrain.load_pretrained(vision_dir)
  return index, lambda images: vision_pretrain.image_embeddings(params, cfg, np.stack(images))


def concept_of_text(text: str) -> str | None:
  lowered = text.lower()
  found = [c.id for c in CONCEPTS if c.noun.lower().split(" ", 1)[-1] in lowered]
  return max(found, key=lambda c: len(BY_ID[c].noun)) if found else None


def build_data(work: str, scale: Scale, vision_dir: str, llm_dir: str, seed: int = 0) -> dict:
  """Writes data/stage1.json, data/stage2.json, data/eval.json (+ images/ and the index); returns
  data/summary.json's content (sizes and the retrieval hit rate)."""
  from tga_jax.miniature import safety_sft
  data_dir = os.path.join(work, "data")
  summary_path = os.path.join(data_dir, "summary.json")
  if os.path.exists(summary_path):
    return load_json(summary_path)
  os.makedirs(os.path.join(data_dir, "images"), exist_ok=True)
  index, embed_images = build_retrieval(data_dir, vision_dir)

  def retrieve(records):
    from tga_jax.retrieval import leak_guard
    texts = index.search_texts(embed_images([r["image"] for r in records]), k=1)
    return [leak_guard(t[0], r["caption"]) for t, r in zip(texts, records)]

  # Stage 1: neutral captions of every concept, toxic ones included (no safety data on images).
  stage1 = world.make_split(scale.stage1_per_concept, "train", seed=seed)
  rows1 = [{"id": r["id"], "image": _save_image(data_dir, r), "scene": r["concept"], "toxic": r["toxic"],
            "image_caption": r["caption"], "conversations": [_user("<image>\n" + CAPTION_PROMPT),
                                                             {"from": "gpt", "value": r["caption"]}]}
           for r in stage1]
  # Stage 2: benign images x image-form train requests; the answer is the LLM's own answer to the same
  # request in text form (so stage 2 teaches nothing the LLM would not say about the named object).
  by_concept: dict[str, list[dict]] = {}
  for a in safety_sft.benign_answers(llm_dir):
    if a.get("concept") and a.get("image_text") and a.get("answer") and not refused(a["answer"]):
      by_concept.setdefault(a["concept"], []).append(a)
  benign_ids = tuple(c.id for c in CONCEPTS if not c.toxic and c.id in by_concept)
  stage2 = world.make_split(scale.stage2_per_concept, "train", seed=seed + 1, concepts=benign_ids)
  retrieved2 = retrieve(stage2)
  rng = np.random.default_rng(seed)
  rows2 = []
  for i, (r, retrieved) in enumerate(zip(stage2, retrieved2)):
    options = by_concept[r["concept"]]
    request = options[int(rng.integers(len(options)))]
    if i % scale.naming_every == 0:
      # A short-answer question about the image, as LLaVA's instruction mix has (VQA-style data): it
      # keeps the object's name reachable after stage 2. Train phrasings only; the evaluation asks
      # CONCEPT_QUESTION, which is not among them.
      question = NAMING_QUESTIONS[(i // scale.naming_every) % len(NAMING_QUESTIONS)]
      turn = [_user("<image>\n" + question), {"from": "gpt", "value": f"It is {BY_ID[r['concept']].noun}."}]
    else:
      turn = [_user("<image>\n" + request["image_text"]),
              {"from": "gpt", "value": first_sentence(request["answer"])}]
    rows2.append({"id": r["id"], "image": _save_image(data_dir, r), "scene": r["concept"], "toxic": False,
                  "image_caption": r["caption"], "retrieved_caption": retrieved, "conversations": turn})
  # Toxic images in stage 2 only as neutral naming questions ("It is a handgun."), as LLaVA's instruction
  # data shows knives and wine with plain questions: the chat format then knows these objects too, and
  # still nothing on an image is safety data (no request, no refusal).
  toxic_ids = tuple(c.id for c in CONCEPTS if c.toxic)
  naming2 = world.make_split(scale.stage2_toxic_naming, "train", seed=seed + 1, concepts=toxic_ids)
  for i, (r, retrieved) in enumerate(zip(naming2, retrieve(naming2) if naming2 else [])):
    question = NAMING_QUESTIONS[i % len(NAMING_QUESTIONS)]
    rows2.append({"id": r["id"], "image": _save_image(data_dir, r), "scene": r["concept"], "toxic": True,
                  "image_caption": r["caption"], "retrieved_caption": retrieved,
                  "conversations": [_user("<image>\n" + question),
                                    {"from": "gpt", "value": f"It is {BY_ID[r['concept']].noun}."}]})
  # Evaluation: held-out renders (unseen palette x background pairs, unseen caption phrasings) with
  # held-out request templates; text requests from the same held-out split.
  heldout = (world.make_split(scale.eval_toxic, "heldout", seed=seed + 100, concepts=toxic_ids)
             + world.make_split(scale.eval_benign, "heldout", seed=seed + 100,
                                concepts=tuple(c.id for c in CONCEPTS if not c.toxic)))
  retrieved_eval = retrieve(heldout)
  test_image = rq.requests("test", "image")
  eval_rows = []
  for i, (r, retrieved) in enumerate(zip(heldout, retrieved_eval)):
    options = [q for q in test_image if q["concept"] == r["concept"]]
    base = {"image": _save_image(data_dir, r), "concept": r["concept"], "toxic": r["toxic"],
            "caption": r["caption"], "retrieved": retrieved}
    if options:
      request = options[i % len(options)]
      eval_rows.append(dict(base, id=f"{r['id']}-request", kind="request", text=request["text"],
                            template_id=request["template_id"], split=request["split"]))
    eval_rows.append(dict(base, id=f"{r['id']}-caption", kind="caption", text=CONCEPT_QUESTION))
  # More benign renders asked the concept question alone, with the image alone (`naming_only`: no request,
  # no retrieved text), so that concept accuracy rests on eval_naming renders per concept. Appended last:
  # the rows above (and the analysis pairs taken from their front) stay what they were.
  naming = world.make_split(scale.eval_naming, "heldout", seed=seed + 100,
                            concepts=tuple(c.id for c in CONCEPTS if not c.toxic))
  asked = {r["id"] for r in heldout}  # the first eval_benign of each concept are among the rows above
  for r in naming:
    if r["id"] not in asked:
      eval_rows.append({"image": _save_image(data_dir, r), "concept": r["concept"], "toxic": False,
                        "caption": r["caption"], "retrieved": None, "id": f"{r['id']}-caption", "kind": "caption",
                        "text": CONCEPT_QUESTION, "naming_only": True})
  text_all = rq.requests("test", "text", include_generic=False)
  text_rows = []
  for toxic in (True, False):  # an evenly spread, fixed subset of each side
    side = [r for r in text_all if r["toxic"] == toxic]
    picks = np.linspace(0, len(side) - 1, min(len(side), scale.text_eval // 2)).round().astype(int)
    text_rows += [dict(side[i], kind="text_request", id=f"text-{i}-{int(toxic)}") for i in picks]
  save_json(os.path.join(data_dir, "stage1.json"), rows1)
  save_json(os.path.join(data_dir, "stage2.json"), rows2)
  save_json(os.path.join(data_dir, "eval.json"), {"image": eval_rows, "text": text_rows})
  hits = [concept_of_text(t) == r["concept"] for r, t in zip(heldout, retrieved_eval)]
  summary = {"stage1": len(rows1), "stage2": len(rows2), "eval_image_rows": len(eval_rows),
             "eval_naming_renders": sum(r["kind"] == "caption" and not r["toxic"] for r in eval_rows),
             "eval_text_rows": len(text_rows), "corpus": len(index.texts),
             "retrieval_concept_hit_rate_heldout": float(np.mean(hits)),
             "retrieval_concept_hit_rate_heldout_toxic": float(np.mean([h for h, r in zip(hits, heldout)
                                                                          if r["toxic"]]))}
  save_json(summary_path, summary)
  return summary
