"""GGUF (llama.cpp) files -> an HF-style config dict and HF-named float32 tensors.

Tensors are dequantised with the `gguf` package (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K and the
other types it implements). llama.cpp's converter permutes the rows of the q and k projections (it
interleaves the two rotary halves of every head); we undo that so the result is the HF layout.
"""
from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable

import numpy as np

SUPPORTED_GGUF_ARCHITECTURES = ("llama", "mistral")

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def hf_name(gguf_name: str) -> str:
  """'blk.3.attn_q.weight' -> 'model.layers.3.self_attn.q_proj.weight'; unknown names pass through."""
  if gguf_name in _GLOBAL_NAMES:
    return _GLOBAL_NAMES[gguf_name]
  match = _LAYER_RE.fullmatch(gguf_name)
  if match and match.group(2) in _LAYER_NAMES:
    return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}.{match.group(3)}"
  return gguf_name


def unpermute_rows(w: np.ndarray, num_heads: int) -> np.ndarray:
  """Undo llama.cpp's q/k row order: per head, rows (pairs interleaved) -> (first half, second half).

  The converter maps HF rows [head, half, i] to [head, i, half]; this maps them back.
  """
  rows = w.shape[0]
  return w.reshape(num_heads, rows // num_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def open_gguf(path: str):
  """The file's parsed `gguf.GGUFReader` (read-only), shared within the process while the file is unchanged.

  Parsing a GGUF's metadata takes seconds (SmolLM2's 49,152 tokens and 48,900 merges are read entry by
  entry), and one process often opens the same file several times: the tokenizer and the weights, then
  again for evaluation or analysis. Raises what the reader (or os.stat) raises for a missing or bad file.
  """
  stat = os.stat(path)
  return _open_gguf(os.path.realpath(path), stat.st_mtime_ns, stat.st_size, stat.st_ino)


@functools.lru_cache(maxsize=4)
def _open_gguf(path: str, mtime_ns: int, size: int, inode: int):
  del mtime_ns, size, inode  # the cache key: a rewritten file is parsed again
  import gguf
  return gguf.GGUFReader(path)


def _field(reader, key, default=None):
  field = reader.fields.get(key)
  if field is None:
    return default
  return field.contents()


def read_gguf(path: str) -> tuple[dict, dict[str, tuple[tuple, Callable[[], np.ndarray]]]]:
  """Returns (HF-style config dict, HF name -> (HF shape, loader of a float32 array))."""
  try:
    reader = open_gguf(path)
  except Exception as e:  # noqa: BLE001 -- the gguf reader raises assorted types on bad files
    raise ValueError(f"{path}: not a readable GGUF file: {e}") from e
  arch = _field(reader, "general.architecture")
  if arch not in SUPPORTED_GGUF_ARCHITECTURES:
    raise ValueError(f"{path}: general.architecture={arch!r} is not supported; expected one of "
                     f"{SUPPORTED_GGUF_ARCHITECTURES}")

  def meta(key, default=None):
    return _field(reader, f"{arch}.{key}", default)

  needed = ["block_count", "embedding_length", "feed_forward_length", "attention.head_count"]
  absent = [f"{arch}.{k}" for k in needed if meta(k) is None]
  if absent:
    raise ValueError(f"{path}: GGUF metadata lacks {absent}")
  heads = int(meta("attention.head_count"))
  kv_heads = meta("attention.head_count_kv", heads)
  if isinstance(kv_heads, list):
    raise ValueError(f"{path}: {arch}.attention.head_count_kv varies per layer ({kv_heads}); not supported")
  kv_heads = int(kv_heads)
  hidden = int(meta("embedding_length"))
  names = {t.name for t in reader.tensors}
  tokens = _field(reader, "tokenizer.ggml.tokens")
  vocab = int(meta("vocab_size") or (len(tokens) if tokens is not None else 0))
  config = {
      "architectures": ["MistralForCausalLM" if arch == "mistral" else "LlamaForCausalLM"],
      "model_type": arch,
      "vocab_size": vocab,
      "hidden_size": hidden,
      "intermediate_size": int(meta("feed_forward_length")),
      "num_hidden_layers": int(meta("block_count")),
      "num_attention_heads": heads,
      "num_key_value_heads": kv_heads,
      "head_dim": int(meta("attention.key_length") or meta("rope.dimension_count") or hidden // heads),
      "rms_norm_eps": float(meta("attention.layer_norm_rms_epsilon", 1e-6)),
      "rope_theta": float(meta("rope.freq_base", 10000.0)),
      "max_position_embeddings": int(meta("context_length", 4096)),
      "tie_word_embeddings": "output.weight" not in names,
      "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
      "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
      "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
      "attention_bias": "blk.0.attn_q.bias" in names,
  }
  scaling = meta("rope.scaling.type")
  if scaling not in (None, "none"):
    if scaling != "linear":
      raise ValueError(f"{path}: {arch}.rope.scaling.type={scaling!r} is not supported; expected 'linear'")
    config["rope_scaling"] = {"rope_type": "linear", "factor": float(meta("rope.scaling.factor"))}
  sliding = meta("attention.sliding_window")
  if sliding:
    config["sliding_window"] = int(sliding)

  tensors = {}
  for tensor in reader.tensors:
    name = hf_name(tensor.name)
    shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
    permute_heads = None
    if name.endswith("self_attn.q_proj.weight") or name.endswith("self_attn.q_proj.bias"):
      permute_heads = heads
    elif name.endswith("self_attn.k_proj.weight") or name.endswith("self_attn.k_proj.bias"):
      permute_heads = kv_heads
    tensors[name] = (shape, _gguf_loader(path, tensor, shape, permute_heads))
  return config, tensors


def _gguf_loader(path, tensor, shape, permute_heads):
  def load():
    import gguf
    try:
      values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as e:
      raise ValueError(f"{path}: tensor {tensor.name} has type {tensor.tensor_type.name}, which the gguf "
                       f"package cannot dequantise") from e
    values = np.asarray(values, np.float32).reshape(shape)
    if permute_heads:
      values = unpermute_rows(values, permute_heads)
    return values
  return load


def is_gguf(path: str) -> bool:
  """True for a file that starts with the GGUF magic (whatever its name ends with)."""
  if not os.path.isfile(path):
    return False
  with open(path, "rb") as f:
    return f.read(4) == b"GGUF"
