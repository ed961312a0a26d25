"""HF LLaMA/Mistral checkpoints <-> our param tree: config translation and a key-pattern table.

Each table row names an HF tensor (`model.layers.{l}.self_attn.q_proj.weight`), where it lives in our
tree (`layers/attn/q/kernel`, stacked over layers on axis 0), its HF shape, and the two transforms
between HF's `[out, in]` torch layout and our `[in, ...out]` DenseGeneral layout. Loading collects every
unknown, missing and mis-shaped tensor and raises once, naming them all.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping

import numpy as np

from tga_jax.models.llama import LlamaConfig
from trainkit.json_fields import ConfigError, as_object, bool_field, float_field, int_field
from tga_jax.weights.safetensors_io import Rule, WeightsError, bad_value_hint, natural_key, set_path

SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral"}
# Tensors some checkpoints carry that hold nothing we need (old rotary caches).
IGNORED = (re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"),)


def config_from_hf(hf: Mapping, where: str = "config.json", **overrides) -> LlamaConfig:
  """LlamaConfig from an HF config dict (transformers 4 `rope_scaling` or 5 `rope_parameters`).

  Args:
    where: names the source in errors (the config.json path).
    overrides: run-time fields (dtype, param_dtype, remat_policy, scan_unroll).
  Raises:
    trainkit's ConfigError (a ValueError) naming `where`, the key, what it expects and what it found.
  """
  hf = as_object(hf, where)
  architectures = hf.get("architectures") or []
  if not isinstance(architectures, list):
    raise ConfigError(f"{where}: 'architectures' must be a list of class names, found {architectures!r}")
  model_type = hf.get("model_type")
  known = [SUPPORTED_ARCHITECTURES[a] for a in architectures if a in SUPPORTED_ARCHITECTURES]
  if not known and model_type not in SUPPORTED_ARCHITECTURES.values():
    raise ValueError(f"{where}: architectures={architectures} model_type={model_type!r} is not supported; "
                     f"expected one of {sorted(SUPPORTED_ARCHITECTURES)} (model_type 'llama' or 'mistral')")
  model_type = known[0] if known else model_type
  missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                         "num_attention_heads") if k not in hf]
  if missing:
    raise ConfigError(f"{where}: missing fields {missing} (required keys: integers >= 1)")
  sizes = {k: int_field(hf, k, where, minimum=1) for k in ("vocab_size", "hidden_size", "intermediate_size",
                                                            "num_hidden_layers", "num_attention_heads")}
  heads = sizes["num_attention_heads"]
  kv_heads = int_field(hf, "num_key_value_heads", where, default=heads, minimum=1)
  if heads % kv_heads:
    raise ConfigError(f"{where}: 'num_attention_heads' ({heads}) must be divisible by 'num_key_value_heads' "
                      f"({kv_heads})")
  head_dim = int_field(hf, "head_dim", where, default=None, minimum=1)
  if head_dim is None:
    if sizes["hidden_size"] % heads:
      raise ConfigError(f"{where}: 'hidden_size' ({sizes['hidden_size']}) must be divisible by "
                        f"'num_attention_heads' ({heads}) when 'head_dim' is not given")
    head_dim = sizes["hidden_size"] // heads
  if hf.get("hidden_act", "silu") != "silu":
    raise ValueError(f"{where}: hidden_act={hf['hidden_act']!r} is not supported; expected 'silu'")

  rope = as_object(hf.get("rope_parameters") or {}, where, "rope_parameters")
  legacy = hf.get("rope_scaling")
  if legacy:
    rope.update(as_object(legacy, where, "rope_scaling"))
  if "type" in rope and "rope_type" not in rope:
    rope["rope_type"] = rope.pop("type")
  rope_theta = float_field({"rope_theta": rope.pop("rope_theta", hf.get("rope_theta"))}, "rope_theta", where,
                           default=10000.0, positive=True)
  rope_type = rope.get("rope_type", "default")
  if rope_type not in ("default", "linear", "llama3"):
    raise ValueError(f"{where}: rope_type={rope_type!r} is not supported; expected 'default', 'linear' or "
                     f"'llama3'")
  if rope_type == "default":
    rope = {}
  else:
    if rope_type == "llama3":
      rope.setdefault("original_max_position_embeddings", hf.get("max_position_embeddings"))
    keep = {"linear": ("rope_type", "factor"),
            "llama3": ("rope_type", "factor", "low_freq_factor", "high_freq_factor",
                       "original_max_position_embeddings")}[rope_type]
    absent = [k for k in keep if rope.get(k) is None]
    if absent:
      raise ValueError(f"{where}: rope scaling {rope_type!r} lacks {absent}")
    rope = {k: rope[k] for k in keep}

  eos = hf.get("eos_token_id")
  sliding = int_field(hf, "sliding_window", where, default=None, minimum=1) if model_type == "mistral" else None
  fields = dict(
      vocab_size=sizes["vocab_size"], hidden_size=sizes["hidden_size"],
      intermediate_size=sizes["intermediate_size"], num_layers=sizes["num_hidden_layers"],
      num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
      rms_norm_eps=float_field(hf, "rms_norm_eps", where, default=1e-6, positive=True), rope_theta=rope_theta,
      rope_scaling=tuple(sorted(rope.items())) or None,
      max_position_embeddings=int_field(hf, "max_position_embeddings", where, default=4096, minimum=1),
      tie_word_embeddings=bool_field(hf, "tie_word_embeddings", where, default=False),
      attention_bias=bool_field(hf, "attention_bias", where, default=False),
      mlp_bias=bool_field(hf, "mlp_bias", where, default=False),
      sliding_window=sliding, model_type=model_type,
      bos_token_id=hf.get("bos_token_id"), eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
      pad_token_id=hf.get("pad_token_id"))
  fields.update(overrides)
  return LlamaConfig(**fields)


def config_to_hf(config: LlamaConfig) -> dict:
  """An HF config.json dict that transformers' LlamaConfig / MistralConfig reads."""
  mistral = config.model_type == "mistral"
  rope = {"rope_theta": config.rope_theta, "rope_type": "default"}
  rope.update(config.rope_dict())
  eos = config.eos_token_id
  hf = {
      "architectures": ["MistralForCausalLM" if mistral else "LlamaForCausalLM"],
      "model_type": "mistral" if mistral else "llama",
      "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
      "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
      "head_dim": config.head_dim, "hidden_act": "silu", "rms_norm_eps": config.rms_norm_eps,
      "rope_parameters": rope, "rope_theta": config.rope_theta,
      "max_position_embeddings": config.max_position_embeddings,
      "tie_word_embeddings": config.tie_word_embeddings, "attention_bias": config.attention_bias,
      "mlp_bias": config.mlp_bias, "bos_token_id": config.bos_token_id,
      "eos_token_id": list(eos) if isinstance(eos, tuple) else eos, "pad_token_id": config.pad_token_id,
      "torch_dtype": "float32",
  }
  if config.rope_scaling:
    hf["rope_scaling"] = dict(config.rope_dict())
  if mistral:
    hf["sliding_window"] = config.sliding_window
  return hf


def _identity(w, c):
  return w


def _in_out(w, c):  # HF [out, in] <-> ours [in, out]
  return w.T


def _heads_in(n):  # [n*hd, D] -> [D, n, hd]
  return lambda w, c: w.T.reshape(w.shape[1], n(c), c.head_dim)


def _heads_out(n):  # [D, n, hd] -> [n*hd, D]
  return lambda w, c: w.reshape(w.shape[0], -1).T


def _heads_bias_in(n):
  return lambda w, c: w.reshape(n(c), c.head_dim)


def _flatten(w, c):
  return w.reshape(-1)


_H = lambda c: c.num_heads  # noqa: E731
_KV = lambda c: c.num_kv_heads  # noqa: E731
_attn_bias = lambda c: c.attention_bias  # noqa: E731
_mlp_bias = lambda c: c.mlp_bias  # noqa: E731
_LAYER = "model.layers.{l}."

RULES: tuple[Rule, ...] = (
    Rule("model.embed_tokens.weight", ("embedding",), lambda c: (c.vocab_size, c.hidden_size), _identity, _identity),
    Rule("model.norm.weight", ("final_norm", "scale"), lambda c: (c.hidden_size,), _identity, _identity),
    Rule("lm_head.weight", ("lm_head", "kernel"), lambda c: (c.vocab_size, c.hidden_size), _in_out, _in_out,
         when=lambda c: not c.tie_word_embeddings),
    Rule(_LAYER + "input_layernorm.weight", ("layers", "input_norm", "scale"), lambda c: (c.hidden_size,),
         _identity, _identity),
    Rule(_LAYER + "post_attention_layernorm.weight", ("layers", "post_attn_norm", "scale"),
         lambda c: (c.hidden_size,), _identity, _identity),
    Rule(_LAYER + "self_attn.q_proj.weight", ("layers", "attn", "q", "kernel"),
         lambda c: (c.num_heads * c.head_dim, c.hidden_size), _heads_in(_H), _heads_out(_H)),
    Rule(_LAYER + "self_attn.k_proj.weight", ("layers", "attn", "k", "kernel"),
         lambda c: (c.num_kv_heads * c.head_dim, c.hidden_size), _heads_in(_KV), _heads_out(_KV)),
    Rule(_LAYER + "self_attn.v_proj.weight", ("layers", "attn", "v", "kernel"),
         lambda c: (c.num_kv_heads * c.head_dim, c.hidden_size), _heads_in(_KV), _heads_out(_KV)),
    Rule(_LAYER + "self_attn.o_proj.weight", ("layers", "attn", "o", "kernel"),
         lambda c: (c.hidden_size, c.num_heads * c.head_dim),
         lambda w, c: w.T.reshape(c.num_heads, c.head_dim, c.hidden_size),
         lambda w, c: w.reshape(-1, w.shape[-1]).T),
    Rule(_LAYER + "self_attn.q_proj.bias", ("layers", "attn", "q", "bias"), lambda c: (c.num_heads * c.head_dim,),
         _heads_bias_in(_H), _flatten, when=_attn_bias),
    Rule(_LAYER + "self_attn.k_proj.bias", ("layers", "attn", "k", "bias"),
         lambda c: (c.num_kv_heads * c.head_dim,), _heads_bias_in(_KV), _flatten, when=_attn_bias),
    Rule(_LAYER + "self_attn.v_proj.bias", ("layers", "attn", "v", "bias"),
         lambda c: (c.num_kv_heads * c.head_dim,), _heads_bias_in(_KV), _flatten, when=_attn_bias),
    Rule(_LAYER + "self_attn.o_proj.bias", ("layers", "attn", "o", "bias"), lambda c: (c.hidden_size,),
         _identity, _identity, when=_attn_bias),
    Rule(_LAYER + "mlp.gate_proj.weight", ("layers", "mlp", "gate", "kernel"),
         lambda c: (c.intermediate_size, c.hidden_size), _in_out, _in_out),
    Rule(_LAYER + "mlp.up_proj.weight", ("layers", "mlp", "up", "kernel"),
         lambda c: (c.intermediate_size, c.hidden_size), _in_out, _in_out),
    Rule(_LAYER + "mlp.down_proj.weight", ("layers", "mlp", "down", "kernel"),
         lambda c: (c.hidden_size, c.intermediate_size), _in_out, _in_out),
    Rule(_LAYER + "mlp.gate_proj.bias", ("layers", "mlp", "gate", "bias"), lambda c: (c.intermediate_size,),
         _identity, _identity, when=_mlp_bias),
    Rule(_LAYER + "mlp.up_proj.bias", ("layers", "mlp", "up", "bias"), lambda c: (c.intermediate_size,),
         _identity, _identity, when=_mlp_bias),
    Rule(_LAYER + "mlp.down_proj.bias", ("layers", "mlp", "down", "bias"), lambda c: (c.hidden_size,),
         _identity, _identity, when=_mlp_bias),
)


def params_from_hf(tensors: Mapping[str, tuple[tuple, Callable[[], np.ndarray]]], config: LlamaConfig,
                   source: str, dtype=np.float32) -> dict:
  """Our param tree (numpy, `dtype`) from HF-named tensors.

  Args:
    tensors: HF name -> (shape, loader); loaders run only for tensors that fit, so a bad checkpoint
      fails before anything large is read.
    source: names the checkpoint in the error.
  Raises:
    WeightsError listing every unknown, missing and mis-shaped tensor.
  """
  rules = [r for r in RULES if r.when(config)]
  tied_head = config.tie_word_embeddings
  problems: list[str] = []
  stacks: dict[tuple, np.ndarray] = {}
  filled: dict[tuple, set] = {}
  params: dict = {}
  for name in sorted(tensors, key=natural_key):
    shape, load = tensors[name]
    if any(p.fullmatch(name) for p in IGNORED) or (tied_head and name == "lm_head.weight"):
      continue  # a tied model may still carry a copy of the embeddings as lm_head
    for rule in rules:
      match = rule.regex.fullmatch(name)
      if match:
        break
    else:
      problems.append(f"unexpected: {name} {tuple(shape)}")
      continue
    if tuple(shape) != tuple(rule.hf_shape(config)):
      problems.append(f"shape: {name} is {tuple(shape)}, expected {tuple(rule.hf_shape(config))}")
      continue
    try:
      value = rule.to_ours(np.asarray(load()), config).astype(dtype)
    except WeightsError as e:  # a non-floating or non-finite tensor: listed with the others
      problems.append(str(e))
      continue
    if not rule.per_layer:
      set_path(params, rule.path, value)
      continue
    layer = int(match.group(1))
    if layer >= config.num_layers:
      problems.append(f"unexpected: {name} (layer {layer}; the config has {config.num_layers} layers)")
      continue
    if rule.path not in stacks:
      stacks[rule.path] = np.empty((config.num_layers,) + value.shape, dtype)
      filled[rule.path] = set()
    stacks[rule.path][layer] = value
    filled[rule.path].add(layer)
  for rule in rules:
    if not rule.per_layer:
      if rule.hf not in tensors:
        problems.append(f"missing: {rule.hf} {tuple(rule.hf_shape(config))}")
      continue
    have = filled.get(rule.path, set())
    for layer in range(config.num_layers):
      if layer not in have and rule.hf.format(l=layer) not in tensors:
        problems.append(f"missing: {rule.hf.format(l=layer)} {tuple(rule.hf_shape(config))}")
  if problems:
    raise WeightsError(f"{source}: {len(problems)} tensor(s) do not fit the {config.model_type} model "
                       f"({config.num_layers} layers, d={config.hidden_size}){bad_value_hint(problems)}:\n  "
                       + "\n  ".join(problems))
  for path, stack in stacks.items():
    set_path(params, path, stack)
  return params


def params_to_hf(params, config: LlamaConfig, dtype=np.float32) -> dict[str, np.ndarray]:
  """HF-named numpy tensors (torch layout) from our param tree."""
  out = {}
  for rule in RULES:
    if not rule.when(config):
      continue
    value = params
    for key in rule.path:
      value = value[key]
    value = np.asarray(value)
    if rule.per_layer:
      for layer in range(config.num_layers):
        out[rule.hf.format(l=layer)] = np.ascontiguousarray(rule.to_hf(value[layer], config).astype(dtype))
    else:
      out[rule.hf] = np.ascontiguousarray(rule.to_hf(value, config).astype(dtype))
  return out
