"""KV-cache generation vs transformers' generate on tiny random models; sampling, stops, streaming."""
import numpy as np
import pytest

import tga_jax
from tga_jax.generate import left_pad

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 97
PAD = 0
# EOS never appears in these tiny vocabularies' greedy runs by chance: use an id out of reach.
PROMPTS = [[5, 17, 33, 2 + 40], [9, 8, 7, 6, 5, 4, 3, 12, 50, 61, 70], [44]]


def reference_model(folder, kind="llama", **fields):
  torch.manual_seed(1)
  common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                bos_token_id=1, eos_token_id=2, pad_token_id=PAD)
  common.update(fields)
  config_cls, model_cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                           "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM)}[kind]
  model = model_cls(config_cls(**common)).eval()
  model.save_pretrained(folder)
  return model


def reference_greedy(model, prompts, max_new_tokens):
  """transformers' greedy generate on a left-padded batch -> int[B, max_new_tokens] (PAD after EOS)."""
  ids, mask = left_pad(prompts, PAD, multiple=1)
  with torch.no_grad():
    out = model.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                         max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=PAD)
  new = out[:, ids.shape[1]:].numpy()
  return np.pad(new, ((0, 0), (0, max_new_tokens - new.shape[1])), constant_values=PAD)


@pytest.mark.parametrize("kind,fields", [("llama", {}), ("llama", {"tie_word_embeddings": True}),
                                         ("mistral", {"sliding_window": 6})])
def test_greedy_matches_transformers_generate(tmp_path, kind, fields):
  reference = reference_model(str(tmp_path), kind, **fields)
  module, params = tga_jax.load_llm(str(tmp_path))
  want = reference_greedy(reference, PROMPTS, 32)
  # Our own padding rounds the prompt length up to 16: more left padding than transformers uses.
  ids, mask = left_pad(PROMPTS, PAD)
  got = tga_jax.generate_tokens(module, params, ids, mask, 32, pad_token_id=PAD)
  np.testing.assert_array_equal(got, want)
  # Each prompt alone gives what it gives in the batch.
  for row, prompt in enumerate(PROMPTS[:2]):
    ids, mask = left_pad([prompt], PAD)
    alone = tga_jax.generate_tokens(module, params, ids, mask, 32, pad_token_id=PAD, chunk_size=7)
    np.testing.assert_array_equal(alone[0], want[row])


def test_eos_stops_a_row_and_pads_it(tmp_path):
  reference = reference_model(str(tmp_path))
  module, params = tga_jax.load_llm(str(tmp_path))
  ids, mask = left_pad(PROMPTS, PAD)
  free = tga_jax.generate_tokens(module, params, ids, mask, 12, pad_token_id=PAD)
  eos = int(free[2, 3])  # pretend the fourth greedy token of row 2 ends a sequence
  assert eos not in (PAD, 2)
  # An explicit EOS adds to the config's (2), as a chat model's end-of-turn token does.
  got = tga_jax.generate_tokens(module, params, ids, mask, 12, eos_token_id=eos, pad_token_id=PAD)
  first = int(np.argmax(free[2] == eos))
  np.testing.assert_array_equal(got[2, :first + 1], free[2, :first + 1])
  assert np.all(got[2, first + 1:] == PAD)
  with torch.no_grad():
    ref_ids, ref_mask = left_pad(PROMPTS, PAD, multiple=1)
    out = reference.generate(torch.tensor(ref_ids, dtype=torch.long), attention_mask=torch.tensor(ref_mask),
                             max_new_tokens=12, do_sample=False, pad_token_id=PAD, eos_token_id=[2, eos])
  new = out[:, ref_ids.shape[1]:].numpy()
  np.testing.assert_array_equal(got[:, :new.shape[1]], new)


def test_sampling_is_seeded_and_filters(tmp_path):
  reference_model(str(tmp_path))
  module, params = tga_jax.load_llm(str(tmp_path))
  ids, mask = left_pad(PROMPTS, PAD)
  run = lambda **kw: tga_jax.generate_tokens(module, params, ids, mask, 16, pad_token_id=PAD, **kw)  # noqa: E731
  greedy = run()
  a, b, c = run(temperature=1.0, seed=3), run(temperature=1.0, seed=3), run(temperature=1.0, seed=4)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert not np.array_equal(a, greedy)
  # top_k=1 and a tiny top_p keep only the most likely token: greedy whatever the temperature.
  np.testing.assert_array_equal(run(temperature=2.0, top_k=1, seed=5), greedy)
  np.testing.assert_array_equal(run(temperature=2.0, top_p=1e-6, seed=5), greedy)
  # top_k=3: every sampled token is among the 3 most likely at its step.
  sampled = run(temperature=5.0, top_k=3, seed=7)
  full = np.concatenate([ids, sampled], axis=1)
  full_mask = np.concatenate([mask, np.ones_like(sampled)], axis=1)
  positions = np.maximum(np.cumsum(full_mask, -1) - 1, 0)
  logits, _ = module.apply({"params": params}, full, full_mask, positions)
  logits = np.asarray(logits)[:, ids.shape[1] - 1:-1]
  top3 = np.argsort(-logits, axis=-1)[..., :3]
  assert np.all((top3 == sampled[..., None]).any(-1))


class CharTokenizer:
  """A byte-level stand-in for an HF tokenizer: ids 3.. are characters."""
  eos_token_id = 2
  pad_token_id = 0
  chat_template = None

  def __call__(self, text, add_special_tokens=True):
    return {"input_ids": [1] + [3 + (ord(c) % (VOCAB - 3)) for c in text]}

  def decode(self, ids, skip_special_tokens=True):
    return "".join(chr(97 + (i - 3) % 26) for i in ids if i >= 3)


def test_text_generation_with_stop_strings_and_streaming(tmp_path):
  reference_model(str(tmp_path))
  module, params = tga_jax.load_llm(str(tmp_path))
  tokenizer = CharTokenizer()
  prompts = ["hello there", "abc"]
  full = tga_jax.generate(module, params, tokenizer, prompts, 24)
  assert len(full[0]) == 24  # (row 1 may meet EOS or ids the stand-in decodes to nothing)
  stop = full[0][6:8]
  stopped = tga_jax.generate(module, params, tokenizer, prompts, 24, stop=[stop])
  assert stopped[0] == full[0][:full[0].find(stop)]
  assert stopped[1] == (full[1][:full[1].find(stop)] if stop in full[1] else full[1])
  pieces = {0: [], 1: []}
  streamed = tga_jax.generate(module, params, tokenizer, prompts, 24, stop=[stop],
                              stream=lambda row, text: pieces[row].append(text))
  assert streamed == stopped
  assert ["".join(pieces[r]) for r in (0, 1)] == stopped
  assert len(pieces[0]) > 1  # it streamed in pieces, not all at the end
