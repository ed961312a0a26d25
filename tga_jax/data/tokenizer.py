"""Tokenizers (with their chat templates) from an HF folder, a GGUF file or a known model name.

A GGUF file carries its vocabulary, merges, special tokens and chat template in its metadata. We rebuild
the tokenizer from them with the `gguf` and `tokenizers` packages, so the run-time install needs no
torch (transformers' own GGUF reader imports torch). Rebuilding takes seconds (SmolLM2: ~4 CPU-s, most
of it reading 49,152 tokens and 48,900 merges entry by entry), so the result is kept as an HF folder in
a cache, $TGA_JAX_CACHE/gguf_tokenizers/ (default ~/.cache/tga_jax), keyed by the file's path, size and
modification time; every later process loads that folder in ~0.3 CPU-s (bench/tokenizer_cache.py).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile

from absl import logging

from tga_jax.weights.known_models import resolve_model_path

# GGUF token types (llama.cpp's llama_token_type): which vocabulary entries are added tokens.
_GGUF_NORMAL, _GGUF_CONTROL, _GGUF_USER_DEFINED = 1, 3, 4


def load_tokenizer(path: str):
  """An HF fast tokenizer for `path` (an HF folder, a `.gguf` file, or a name in KNOWN_MODELS)."""
  path = resolve_model_path(path)
  if os.path.isdir(path):
    from transformers import AutoTokenizer  # its import alone is ~2 CPU-s: only folders need it
    return AutoTokenizer.from_pretrained(path)
  return cached_gguf_tokenizer(path)


def cache_root() -> str:
  """The project's cache folder: $TGA_JAX_CACHE, else $XDG_CACHE_HOME/tga_jax (default ~/.cache/tga_jax)."""
  return os.environ.get("TGA_JAX_CACHE") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "tga_jax")


def cached_gguf_tokenizer(path: str):
  """`gguf_tokenizer(path)`, saved once as an HF folder under `cache_root()` and loaded from there after.

  The key is the file's absolute path, size and modification time, so a rewritten file is rebuilt. The
  folder is written under a temporary name and renamed into place, so a reader never sees half of it.
  Processes that start together (the hosts of a launch on one machine) take turns on a lock file: the
  first builds, the others then find its folder instead of each rebuilding (seconds of CPU apiece). An
  unwritable cache only costs the rebuild (logged once per call).
  """
  from transformers import PreTrainedTokenizerFast

  stat = os.stat(path)
  key = hashlib.sha256(f"{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
  folder = os.path.join(cache_root(), "gguf_tokenizers", f"{os.path.basename(path)}-{key}")
  if os.path.isfile(os.path.join(folder, "tokenizer.json")):
    return PreTrainedTokenizerFast.from_pretrained(folder)
  with _build_lock(os.path.join(cache_root(), "locks", os.path.basename(folder) + ".lock")):
    if os.path.isfile(os.path.join(folder, "tokenizer.json")):  # built by the process that held the lock
      return PreTrainedTokenizerFast.from_pretrained(folder)
    return _build_and_cache(path, folder)


@contextlib.contextmanager
def _build_lock(lock_path: str):
  """An exclusive lock on `lock_path` while a tokenizer is built (none where the cache is unwritable or
  the platform has no fcntl: then each process builds its own)."""
  try:
    import fcntl
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    handle = open(lock_path, "a")
  except (ImportError, OSError):
    yield
    return
  with handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


def _build_and_cache(path: str, folder: str):
  tokenizer = gguf_tokenizer(path)
  try:
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".staging-", dir=os.path.dirname(folder))
    tokenizer.save_pretrained(staging)
    try:
      os.rename(staging, folder)
    except OSError:  # another process put the same folder in place first
      shutil.rmtree(staging, ignore_errors=True)
  except OSError as e:
    logging.warning("could not cache the tokenizer of %s under %s (%s); it is rebuilt in each process",
                    path, cache_root(), e)
  return tokenizer


def _gguf_field(reader, key: str, default=None):
  field = reader.fields.get(key)
  return default if field is None else field.contents()


def gguf_tokenizer(path: str):
  """The byte-level BPE tokenizer stored in a GGUF file's metadata (`tokenizer.ggml.*`), without torch.

  Equal token ids to transformers' GGUF reader, which needs torch (tests/test_llama_smollm2.py): a
  byte-level pre-tokenizer without a prefix space, the file's merges, CONTROL and USER_DEFINED entries as
  added tokens that are never split, and bos/eos/unk/pad from the `*_token_id` fields.
  """
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast

  from tga_jax.weights.gguf_io import open_gguf

  try:
    reader = open_gguf(path)  # parsed once per process (the weights share it)
  except Exception as e:  # noqa: BLE001 -- the gguf reader raises assorted types on bad files
    raise ValueError(f"{path}: not a readable GGUF file: {e}") from e
  kind = _gguf_field(reader, "tokenizer.ggml.model")
  if kind != "gpt2":
    raise ValueError(f"{path}: tokenizer.ggml.model={kind!r}; only byte-level BPE ('gpt2') GGUF tokenizers are "
                     f"rebuilt without torch. Convert the model to an HF folder (tokenizer.json) instead.")
  tokens = _gguf_field(reader, "tokenizer.ggml.tokens")
  merges = _gguf_field(reader, "tokenizer.ggml.merges")
  if not tokens or merges is None:
    raise ValueError(f"{path}: GGUF metadata lacks tokenizer.ggml.tokens or tokenizer.ggml.merges")
  types = _gguf_field(reader, "tokenizer.ggml.token_type", [_GGUF_NORMAL] * len(tokens))
  if len(types) != len(tokens):
    raise ValueError(f"{path}: tokenizer.ggml.token_type has {len(types)} entries, tokens has {len(tokens)}")

  vocab = {token: i for i, token in enumerate(tokens)}
  pairs = [tuple(m.split(" ", 1)) for m in merges]
  backend = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
  backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  backend.decoder = decoders.ByteLevel()
  added = [AddedToken(tokens[i], special=t == _GGUF_CONTROL, normalized=False)
           for i, t in enumerate(types) if t in (_GGUF_CONTROL, _GGUF_USER_DEFINED)]
  backend.add_tokens(added)  # ids are the vocabulary's own: each token is already in `vocab`

  def special(name: str):
    token_id = _gguf_field(reader, f"tokenizer.ggml.{name}_token_id")
    return None if token_id is None else tokens[int(token_id)]

  return PreTrainedTokenizerFast(
      tokenizer_object=backend, bos_token=special("bos"), eos_token=special("eos"), unk_token=special("unknown"),
      pad_token=special("padding"), chat_template=_gguf_field(reader, "tokenizer.chat_template"))


def encode_chat(tokenizer, prompt: str, system: str | None = None) -> list[int]:
  """Token ids of a one-turn chat (the tokenizer's template) ending where the assistant answers."""
  if not getattr(tokenizer, "chat_template", None):
    raise ValueError("the tokenizer has no chat template; pass plain prompts (chat=False)")
  messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
  text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
  return tokenizer(text, add_special_tokens=False)["input_ids"]
