"""Miniature world: request phrasings (splits, forms) and the safety SFT on a tiny random LLaMA."""
import re

import flax.linen as nn
import jax
import numpy as np
import pytest

from tga_jax.miniature import requests as rq
from tga_jax.miniature import safety_sft as sft
from tga_jax.miniature.concepts import BY_ID, CONCEPTS

# ------------------------------------------------------------------------------------------ requests


def test_template_splits_are_disjoint():
  train = rq.requests("train")
  seen, unseen = rq.requests("test_seen"), rq.requests("test_unseen")
  texts = [{r["text"] for r in rows} for rows in (train, seen, unseen)]
  assert not texts[0] & texts[1] and not texts[0] & texts[2] and not texts[1] & texts[2]
  # Held-out templates never appear in training; test_seen reuses train templates on other concepts.
  train_ids = {r["template_id"] for r in train}
  assert not train_ids & {r["template_id"] for r in unseen}
  assert {r["template_id"] for r in seen} <= train_ids
  assert sorted(map(str, rq.requests("test"))) == sorted(map(str, seen + unseen))
  for family in ("shared", "harmful", "generic"):
    assert rq.templates(family, held_out=True) and rq.templates(family, held_out=False)


def test_every_concept_has_text_and_image_requests_in_train_and_test():
  for split in ("train", "test_unseen"):
    for form in ("text", "image"):
      rows = rq.requests(split, form)
      assert {r["concept"] for r in rows if r["concept"]} == {c.id for c in CONCEPTS}
      assert all(r["toxic"] == BY_ID[r["concept"]].toxic for r in rows if r["concept"])


def test_shared_templates_are_asked_about_toxic_and_benign_concepts():
  rows = rq.requests("train")
  shared = {r["template_id"] for r in rows if r["template_id"].startswith("shared")}
  for template_id in shared:
    labels = {r["toxic"] for r in rows if r["template_id"] == template_id}
    assert labels == {True, False}, template_id
  assert not any(r["toxic"] for r in rows if r["template_id"].startswith("generic"))
  assert all(r["toxic"] for r in rows if r["template_id"].startswith("harmful"))


def test_image_form_never_names_the_concept():
  words = {w for c in CONCEPTS for w in re.findall(r"[a-z-]+", c.noun.lower()) if len(w) > 3}
  words -= {"making", "picture"}  # generic words: the explicit stand-in is "a censored explicit adult picture"
  for split in ("train", "test"):
    rows = rq.requests(split, "image")
    assert rows and all(r["concept"] for r in rows)
    for row in rows:
      text = row["text"].lower()
      assert BY_ID[row["concept"]].noun.lower() not in text
      assert not [w for w in words if re.search(rf"\b{re.escape(w)}\b", text)], row
  # The text form does name it, and counterpart() pairs the two forms of one request.
  text_rows = {(r["template_id"], r["concept"]): r for r in rq.requests("train", "text")}
  for row in rq.requests("train", "image")[:50]:
    twin = text_rows[(row["template_id"], row["concept"])]
    assert BY_ID[row["concept"]].noun in twin["text"]
    assert rq.counterpart(twin, "image") == row["text"] and rq.counterpart(row, "text") == twin["text"]


def test_clean_answer_and_answer_requests():
  text = "A cup holds tea and coffee. It has a han"
  assert sft.clean_answer(text, truncated=True) == "A cup holds tea and coffee."
  assert sft.clean_answer(text, truncated=False) == text
  assert sft.clean_answer("Short. Then a very long sentence that was cut", truncated=True).endswith("cut")
  rows = sft.answer_requests(60)
  assert len(rows) == 60 and not any(r["toxic"] for r in rows)
  assert {r["split"] for r in rows} == {"train"}
  toxic, benign = sft.sft_examples([dict(rows[0], answer="A cup holds tea."),
                                    dict(rows[1], answer="I'm sorry, I can't do that.")])
  assert [b["reply"] for b in benign] == ["A cup holds tea."]  # a refusing answer is not a benign target
  assert toxic and all(t["reply"] == sft.REFUSAL for t in toxic)


def test_image_answer_pairs_read_the_cached_answers(tmp_path):
  import json
  rows = sft.answer_requests(40)
  concept_row = next(r for r in rows if r["concept"])
  cached = [dict(rows[0], answer="Pancakes need flour.", image_text=None, prefix=None, max_new_tokens=48),
            dict(concept_row, answer="It holds tea.", image_text=rq.counterpart(concept_row, "image"), prefix=None,
                 max_new_tokens=48),
            dict(concept_row, text="x", answer="I'm sorry, I cannot.", image_text="y", prefix=None, max_new_tokens=48)]
  (tmp_path / sft.ANSWERS_FILE).write_text("".join(json.dumps(r) + "\n" for r in cached))
  pairs = sft.image_answer_pairs(str(tmp_path))
  assert pairs == [{"concept": concept_row["concept"], "template_id": concept_row["template_id"],
                    "request": rq.counterpart(concept_row, "image"), "answer": "It holds tea."}]


# --------------------------------------------------------------------------------- SFT, tiny model


@pytest.fixture(scope="module")
def tokenizer():
  from tga_jax.data.tokenizer import load_tokenizer
  return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def tiny(tokenizer):
  """A 4-layer random LLaMA over SmolLM2's vocabulary (params filled on the host, no init compile)."""
  from tga_jax.models.llama import LlamaConfig, LlamaForCausalLM
  config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_layers=4, num_heads=4,
                       num_kv_heads=2, head_dim=8, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       remat_policy="none")
  module = LlamaForCausalLM(config)
  abstract = nn.meta.unbox(jax.eval_shape(module.init, jax.random.PRNGKey(0), np.zeros((1, 4), np.int32))["params"])
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    if "scale" in jax.tree_util.keystr(path[-1:]):
      return np.ones(leaf.shape, np.float32)
    return (0.05 * rng.standard_normal(leaf.shape)).astype(np.float32)

  return module, jax.tree_util.tree_map_with_path(fill, abstract)


EXAMPLES = [{"request": "Tell me about a handgun.", "reply": sft.REFUSAL},
            {"request": "Tell me about a cup.", "reply": "A cup holds tea. It has a handle and is made of clay."},
            {"request": "What is 12 times 7?", "reply": "12 times 7 is 84."},
            {"request": "How can I use a combat knife to hurt someone?", "reply": sft.REFUSAL}]


def test_targets_are_the_assistant_tokens_only(tokenizer):
  arrays = sft.tokenize_examples(EXAMPLES, tokenizer)
  for i, example in enumerate(EXAMPLES):
    slots = arrays["target_w"][i] > 0
    ids = arrays["target_ids"][i][slots]
    assert tokenizer.decode(ids) == example["reply"] + "<|im_end|>"
    # Each target is the token right after the position that predicts it.
    pos = arrays["target_pos"][i][slots]
    np.testing.assert_array_equal(arrays["input_ids"][i][pos + 1], ids)
  cut = sft.tokenize_examples(EXAMPLES, tokenizer, max_reply_tokens=3)
  assert cut["target_w"].sum(1).max() == 3
  # A cut reply ends the sequence: nothing after the last target is attended.
  last = cut["target_pos"][1][2] + 1
  assert cut["attention_mask"][1][last] == 1 and cut["attention_mask"][1][last + 1:].sum() == 0


def test_split_loss_matches_the_full_model(tiny, tokenizer):
  import jax.numpy as jnp
  import optax
  module, params = tiny
  arrays = sft.tokenize_examples(EXAMPLES, tokenizer)
  frozen, trainable = sft.split_params(params, 2)
  batch = dict(arrays, hidden=sft.precompute_bottom(module.config, frozen, arrays, batch_size=4, progress=False))
  loss, _ = sft.sft_loss(module.config, frozen, trainable, batch)
  logits, _ = module.apply({"params": params}, arrays["input_ids"], arrays["attention_mask"])
  picked = np.take_along_axis(np.asarray(logits), arrays["target_pos"][..., None], axis=1)
  nll = optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(picked), arrays["target_ids"])
  want = float(jnp.sum(nll * arrays["target_w"]) / arrays["target_w"].sum())
  np.testing.assert_allclose(float(loss), want, rtol=2e-5)


def test_sft_trains_only_the_top_layers_and_reloads(tiny, tokenizer, tmp_path):
  from tga_jax.weights.llm import load_llm, save_llm_hf
  module, params = tiny
  arrays = sft.tokenize_examples(EXAMPLES, tokenizer)
  toxic = {k: v[[0, 3]] for k, v in arrays.items()}
  benign = {k: v[[1, 2]] for k, v in arrays.items()}
  trained, losses = sft.train(module, params, toxic, benign, steps=4, batch=4, layers=1, lr=1e-2, progress=False)
  assert losses[-1] < losses[0]
  before, after = params["layers"], trained["layers"]
  for name, old in jax.tree_util.tree_leaves_with_path(before):
    new = dict(jax.tree_util.tree_leaves_with_path(after))[name]
    np.testing.assert_array_equal(np.asarray(new)[:3], np.asarray(old)[:3])
    assert not np.allclose(np.asarray(new)[3], np.asarray(old)[3]), name
  np.testing.assert_array_equal(trained["embedding"], params["embedding"])
  assert not np.allclose(trained["final_norm"]["scale"], params["final_norm"]["scale"])
  folder = save_llm_hf(module, trained, str(tmp_path / "safe"), tokenizer)
  reloaded_module, reloaded = load_llm(folder)
  assert reloaded_module.config.num_layers == 4
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(trained), jax.tree.leaves(reloaded)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
