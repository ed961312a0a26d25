"""Tokenizers (with their chat templates) from an HF folder, a GGUF file or a known model name."""
from __future__ import annotations

import os

from tga_jax.models import resolve_model_path


def load_tokenizer(path: str):
  """An HF fast tokenizer for `path` (an HF folder, a `.gguf` file, or a name in KNOWN_MODELS).

  A GGUF file carries its vocabulary, merges, special tokens and chat template in its metadata;
  transformers rebuilds the tokenizer from them.
  """
  from transformers import AutoTokenizer

  path = resolve_model_path(path)
  if os.path.isdir(path):
    return AutoTokenizer.from_pretrained(path)
  folder, name = os.path.split(os.path.abspath(path))
  return AutoTokenizer.from_pretrained(folder, gguf_file=name)


def encode_chat(tokenizer, prompt: str, system: str | None = None) -> list[int]:
  """Token ids of a one-turn chat (the tokenizer's template) ending where the assistant answers."""
  if not getattr(tokenizer, "chat_template", None):
    raise ValueError("the tokenizer has no chat template; pass plain prompts (chat=False)")
  messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
  text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
  return tokenizer(text, add_special_tokens=False)["input_ids"]
