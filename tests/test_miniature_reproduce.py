"""The miniature reproduction end to end on tiny random parts (a 1-layer tower, a 2-layer LLaMA with
SmolLM2's tokenizer): data, retrieval, the layer band, both alignment stages, evaluation, analysis
and the report, then a rerun that finds every stage cached."""
import dataclasses
import hashlib
import json
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
  from tga_jax import LlamaConfig, LlamaForCausalLM, save_llm_hf
  from tga_jax.weights.clip import save_clip_vision
  from tga_jax.miniature import requests as rq
  from tga_jax.miniature import vision_pretrain
  from tga_jax.data.tokenizer import load_tokenizer
  root = tmp_path_factory.mktemp("parts")
  # A random 1-layer tower in the pretrained tower's format (test_miniature_world covers the pretraining).
  vision = str(root / "vision")
  tower = vision_pretrain.tower_config(vision_pretrain.PretrainConfig(hidden=32, layers=1, heads=2))
  # Both inits jitted: one compile each, instead of one per initialiser op run eagerly.
  tower_params = jax.jit(lambda key: vision_pretrain.init_params(tower, key))(jax.random.PRNGKey(0))
  save_clip_vision(vision, tower, tower_params["tower"], np.asarray(tower_params["projection"]),
                   vision_pretrain.processor(tower.image_size))
  config = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                       num_kv_heads=1, head_dim=16, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                       remat_policy="none")
  init = jax.jit(lambda key: LlamaForCausalLM(config).init(key, jnp.zeros((1, 4), jnp.int32))["params"])
  params = nn.meta.unbox(init(jax.random.PRNGKey(0)))
  llm = str(root / "llm")
  save_llm_hf(config, jax.tree.map(np.asarray, params), llm, load_tokenizer("smollm2-135m-instruct"))
  rows = [r for r in rq.requests("train", "text", include_generic=False) if not r["toxic"]][:40]
  with open(os.path.join(llm, "benign_answers.jsonl"), "w") as f:
    for r in rows:
      f.write(json.dumps(dict(r, answer=f"It is {r['concept']}.", image_text=rq.counterpart(r, "image"))) + "\n")
  return vision, llm


def _fake_minilm(texts, batch=128):
  """Deterministic unit vectors in MiniLM's 384 dimensions, one per text (stands in for
  vision_pretrain.embed_texts). With a random tower, what retrieval returns is arbitrary either way: the
  data stage keeps all its plumbing (corpus, index build, image queries, leak guard) and skips running
  MiniLM over the 777-caption corpus, about a fifth of this test's CPU time. The real embed_texts runs in
  test_miniature_world.py (test_minilm_captions_separate_concepts, over two padded chunks)."""
  from tga_jax.miniature import vision_pretrain
  del batch
  seeds = [int.from_bytes(hashlib.sha256(t.encode()).digest()[:4], "little") for t in texts]
  out = np.stack([np.random.default_rng(s).normal(size=vision_pretrain.EMBED_DIM) for s in seeds])
  return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def test_reproduce_runs_every_stage_and_caches_them(parts, tmp_path, monkeypatch):
  from tga_jax.miniature import reproduce
  from tga_jax.miniature import vision_pretrain
  monkeypatch.setattr(vision_pretrain, "embed_texts", _fake_minilm)
  vision, llm = parts
  work = str(tmp_path / "work")
  # The quick scale with one stage-2 step per variant: each step of a run may land in another length bucket
  # of the config (another compile of the train step, seconds of CPU each) and runs no other code; the
  # loop's later steps are tested in test_tga_train.py.
  scale = dataclasses.replace(reproduce.SCALES["quick"], stage2_steps=1)
  results = reproduce.reproduce(work, [0], scale, vision, llm, ablations=())
  for name in ("results.json", "results.md", "dsr.png", "band.json", "data/stage1.json", "data/stage2.json",
               "analysis/analysis.json", "analysis/probe.png", "eval/plain-s0.json", "eval/tga-s0.json", "eval/tga+rt-s0.json"):
    assert os.path.exists(os.path.join(work, name)), name
  # TGA with and without retrieved text, and both with LoRA on the LLM (the paper's stage 2)
  assert set(results["models"]) == {"plain", "tga", "tga+rt", "plain_lora", "tga_lora", "tga_lora+rt"}
  assert results["retrieval"]["corpus_overlap_with_safety_sft"] == 0
  assert results["stage1"]["steps"] >= 1 and "concept_accuracy" in results["stage1"]
  assert {"text_dsr", "text_false_refusal"} <= set(results["models"]["tga_lora"])
  for row in results["models"].values():
    for metric in ("dsr", "false_refusal", "concept_accuracy"):  # dsr_shared may be NaN at this scale
      assert 0.0 <= row[metric]["mean"] <= 1.0
  data = results["data"]
  assert data["stage1"] == 37 * scale.stage1_per_concept and data["stage2"] > 0
  assert 1 <= results["band"]["first"] <= results["band"]["last"] <= 2
  alg1 = results["band"]["algorithm1"]  # Algorithm 1's band: from the activation layers of toxic requests
  assert 1 <= alg1["first"] <= alg1["last"] <= 2 and sum(alg1["activation_layers"]) > 0
  stage2 = json.load(open(os.path.join(work, "data", "stage2.json")))
  assert all(r["retrieved_caption"] for r in stage2)
  # Toxic images come into stage 2 only as neutral naming questions: no request, no refusal on an image.
  toxic = [r for r in stage2 if r["toxic"]]
  assert len(toxic) == 7 * scale.stage2_toxic_naming > 0
  assert all(r["conversations"][1]["value"].startswith("It is ") for r in toxic)
  tga = json.load(open(os.path.join(work, "eval", "tga+rt-s0.json")))
  assert tga["retrieved_in_prompt"] and len(tga["replies"]) == 2 * 37  # a request and a caption per render
  # Concept accuracy with the image alone rests on eval_naming renders per benign concept (the extra ones
  # are naming-only rows, asked with the image alone, and so is the stage-1 gate).
  benign = 37 - 7
  alone = json.load(open(os.path.join(work, "eval", "tga-s0.json")))["replies"]
  assert len(alone) == 2 * 37 + benign * (scale.eval_naming - scale.eval_benign)
  assert sum(x["kind"] == "caption" and not x["toxic"] for x in alone) == benign * scale.eval_naming
  assert data["eval_naming_renders"] == benign * scale.eval_naming
  gate = json.load(open(os.path.join(work, "align", "stage1", "gate.json")))
  assert sum(not x["toxic"] for x in gate["replies"]) == benign * scale.eval_naming
  assert "probe" in results["analysis"]["tga-s0"]
  # Each model minus plain, seed by seed.
  paired = results["paired"]["tga"]["dsr"]
  assert set(results["paired"]) == set(results["models"]) - {"plain"} and list(paired["per_seed"]) == ["0"]
  assert paired["mean"] == pytest.approx(results["models"]["tga"]["dsr"]["mean"] - results["models"]["plain"]["dsr"]["mean"])
  # A rerun skips every finished stage (no training, no generation).
  again = reproduce.reproduce(work, [0], scale, vision, llm, ablations=())
  assert json.dumps(again["models"]) == json.dumps(results["models"])  # (NaN where no shared-template row)
  # Every stage took under a second, so each keeps the time of the run that computed it.
  assert again["timings"] == results["timings"]
  # The LoRA pair's runs and evaluations are timed apart from what `make reproduce` alone costs.
  timings = results["timings"]
  assert {"align seed0 plain_lora", "align seed0 tga_lora", "evaluate", "evaluate extras"} <= set(timings)
  assert timings["default_total"] == pytest.approx(timings["total"] - timings["align seed0 plain_lora"]
                                                   - timings["align seed0 tga_lora"] - timings["evaluate extras"], abs=0.2)


def test_refusal_and_concept_matching():
  from tga_jax.miniature.recipe import mentions, refused
  assert refused("Sorry, I cannot help you.") and refused("I can\u2019t help with that")
  assert not refused("A knife is a tool for cutting.")
  assert mentions("It is a red apple.", "apple") and mentions("Two kites!", "kite")
  assert not mentions("A pineapple.", "apple")
  # A toxic concept is named by its noun phrase's head word too, not only by its id.
  assert mentions("A drawing of a handgun.", "gun") and mentions("A bottle of whiskey.", "alcohol")
  assert mentions("A hand making a middle-finger gesture.", "insult") and not mentions("A gunboat.", "gun")


def test_seen_split_asks_whether_refusal_follows_what_the_model_names():
  from tga_jax.miniature.report import seen_split

  def render(i, concept, toxic, answer, refused):
    return [dict(id=f"r{i}-caption", kind="caption", concept=concept, toxic=toxic, reply=answer, refused=False),
            dict(id=f"r{i}-request", kind="request", concept=concept, toxic=toxic, reply="", refused=refused)]

  replies = (render(0, "gun", True, "It is a handgun.", True) + render(1, "gun", True, "It is a cup.", False)
             + render(2, "knife", True, "A knife.", False) + render(3, "knife", True, "A lamp.", False)
             + render(4, "apple", False, "An apple.", True))  # benign renders are not counted
  assert seen_split(replies) == {"concept_accuracy_toxic": 0.5, "dsr_named": 0.5, "dsr_not_named": 0.0}


def _normalised(text: str) -> str:
  return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


def test_retrieval_corpus_holds_nothing_the_llm_was_safety_tuned_on():
  """The safety SFT trains on the train-split text requests (toxic ones -> the refusal, benign ones ->
  the base model's answers to them): none of them, nor the refusal, may be retrievable, as strings or
  after normalisation (case, punctuation, spacing), nor inside a corpus text."""
  from tga_jax.miniature import requests as rq
  from tga_jax.miniature import safety_sft
  from tga_jax.miniature.concepts import CONCEPTS
  from tga_jax.miniature.alignment_data import retrieval_corpus
  corpus = retrieval_corpus()
  sft = [r["text"] for r in rq.requests("train", "text")] + [safety_sft.REFUSAL]
  assert corpus and not set(corpus) & set(sft)
  normal_corpus = {_normalised(t) for t in corpus}
  normal_sft = {_normalised(t) for t in sft}
  assert not normal_corpus & normal_sft
  assert not [(c, q) for c in normal_corpus for q in normal_sft if q in c or c in q]
  # Toxic concepts are in the corpus as descriptions of what an image shows.
  toxic_nouns = [c.noun.lower() for c in CONCEPTS if c.toxic]
  assert all(any(noun in t.lower() for t in corpus) for noun in toxic_nouns)


def test_ablation_names_are_checked_against_the_config(capsys):
  from tga_jax.miniature import reproduce
  for bad in ("nope", "guide_only:x"):
    with pytest.raises(SystemExit):
      reproduce.main(["--ablations", bad])
    assert f"['{bad}'] are not variants of configs/tga/miniature.py" in capsys.readouterr().err


def test_paired_concept_accuracy_compares_the_renders_both_models_were_asked():
  from tga_jax.miniature.report import paired_differences

  def evaluation(named, extra=()):
    replies = [dict(id=f"r{i}", kind="caption", concept="cup", toxic=False, reply="a cup" if ok else "a hat")
               for i, ok in enumerate(named)] + [dict(id=f"n{i}", kind="caption", concept="cup", toxic=False,
                                                      reply="a cup" if ok else "a hat") for i, ok in enumerate(extra)]
    flags = list(named) + list(extra)
    return dict(replies=replies, dsr=0.5, dsr_shared=0.5, false_refusal=0.0, concept_accuracy=sum(flags) / len(flags))

  evals = {"plain-s0": evaluation([1, 0], extra=[1, 1, 1, 1, 1, 1]), "tga+rt-s0": evaluation([1, 1])}
  diff = paired_differences(evals, ["plain", "tga+rt"], [0])["tga+rt"]["concept_accuracy"]
  assert diff["per_seed"]["0"] == pytest.approx(0.5)  # on r0, r1: 1.0 against 0.5 (not against plain's 7/8)
