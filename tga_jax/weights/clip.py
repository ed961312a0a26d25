"""HF CLIP checkpoints <-> our CLIP param trees: config translation and key-pattern tables.

Names in the tables are relative to a tower (`embeddings.patch_embedding.weight`,
`encoder.layers.{l}.self_attn.q_proj.weight`); callers strip the checkpoint's prefix first
(`vision_model.`, `vision_tower.`, `model.vision_tower.vision_model.`, ...). Every unknown, missing and
mis-shaped tensor is collected, so a bad checkpoint fails once with the whole list.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping

import numpy as np

from tga_jax.models.clip import ClipConfig, ClipModel
from tga_jax.weights.safetensors_io import Rule, WeightsError, bad_value_hint, read_safetensors_folder, set_path
from tga_jax.models.siglip import vision_tower
from trainkit.json_fields import ConfigError, as_object, bool_field, float_field, int_field

Tensors = Mapping[str, tuple[tuple, Callable[[], np.ndarray]]]
VISION_TYPES = ("clip_vision_model", "siglip_vision_model")
TEXT_TYPES = ("clip_text_model",)


def vision_config_from_hf(hf: Mapping, where: str = "config.json", **overrides) -> ClipConfig:
  """ClipConfig of a vision tower from an HF CLIPVisionConfig dict (a `vision_config` section or a
  CLIPVisionModel's config.json). overrides: feature_layer, feature_strategy, dtype, param_dtype, remat_policy."""
  hf = as_object(hf, where)
  model_type = hf.get("model_type", "clip_vision_model")
  if model_type not in VISION_TYPES:
    raise ValueError(f"{where}: vision model_type={model_type!r} is not supported; expected one of {VISION_TYPES}")
  siglip = model_type == "siglip_vision_model"
  fields = _common_fields(hf, where, "gelu_pytorch_tanh" if siglip else "quick_gelu", 1e-6 if siglip else 1e-5)
  fields.update(image_size=int_field(hf, "image_size", where, default=224, minimum=1),
                patch_size=int_field(hf, "patch_size", where, default=16 if siglip else 32, minimum=1),
                num_channels=int_field(hf, "num_channels", where, default=3, minimum=1),
                model_type="siglip" if siglip else "clip",
                use_head=bool_field(hf, "vision_use_head", where, default=True))
  fields.update(overrides)
  return ClipConfig(**fields)


def text_config_from_hf(hf: Mapping, where: str = "config.json", **overrides) -> ClipConfig:
  """ClipConfig of a text tower from an HF CLIPTextConfig dict."""
  hf = as_object(hf, where)
  model_type = hf.get("model_type", "clip_text_model")
  if model_type not in TEXT_TYPES:
    raise ValueError(f"{where}: text model_type={model_type!r} is not supported; expected one of {TEXT_TYPES}")
  fields = _common_fields(hf, where)
  fields.update(vocab_size=int_field(hf, "vocab_size", where, default=49408, minimum=1),
                max_position_embeddings=int_field(hf, "max_position_embeddings", where, default=77, minimum=1),
                eos_token_id=int_field(hf, "eos_token_id", where, default=2, minimum=0))
  fields.update(overrides)
  return ClipConfig(**fields)


def _common_fields(hf: Mapping, where: str, default_act: str = "quick_gelu", default_eps: float = 1e-5) -> dict:
  missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads") if k not in hf]
  if missing:
    raise ConfigError(f"{where}: CLIP config lacks {missing} (required keys: integers >= 1)")
  act = hf.get("hidden_act", default_act)
  if act not in ("quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh"):
    raise ConfigError(f"{where}: hidden_act={act!r} is not supported")
  fields = dict(hidden_size=int_field(hf, "hidden_size", where, minimum=1),
                intermediate_size=int_field(hf, "intermediate_size", where, minimum=1),
                num_layers=int_field(hf, "num_hidden_layers", where, minimum=1),
                num_heads=int_field(hf, "num_attention_heads", where, minimum=1),
                layer_norm_eps=float_field(hf, "layer_norm_eps", where, default=default_eps, positive=True),
                hidden_act=act)
  if fields["hidden_size"] % fields["num_heads"]:
    raise ConfigError(f"{where}: 'hidden_size' ({fields['hidden_size']}) must be divisible by "
                      f"'num_attention_heads' ({fields['num_heads']})")
  return fields


def vision_config_to_hf(cfg: ClipConfig, projection_dim: int | None = None) -> dict:
  hf = dict(model_type=f"{cfg.model_type}_vision_model", hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, layer_norm_eps=cfg.layer_norm_eps,
            hidden_act=cfg.hidden_act, image_size=cfg.image_size, patch_size=cfg.patch_size,
            num_channels=cfg.num_channels)
  if cfg.model_type == "siglip":
    hf["vision_use_head"] = cfg.use_head
  if projection_dim:
    hf["projection_dim"] = projection_dim
  return hf


# Key-table rows are the LLM table's `Rule` (hf name with '{l}', our path, shapes, transforms).
_same = lambda w, c: w  # noqa: E731
_transpose = lambda w, c: w.T  # noqa: E731
_D = lambda c: (c.hidden_size,)  # noqa: E731
_DD = lambda c: (c.hidden_size, c.hidden_size)  # noqa: E731


def _layer_rules() -> tuple[Rule, ...]:
  pre = "encoder.layers.{l}."
  rules = []
  for norm in ("layer_norm1", "layer_norm2"):
    rules += [Rule(pre + norm + ".weight", ("encoder", "layers", norm, "scale"), _D, _same, _same),
              Rule(pre + norm + ".bias", ("encoder", "layers", norm, "bias"), _D, _same, _same)]
  for ours, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj")):
    rules += [
        Rule(pre + f"self_attn.{theirs}.weight", ("encoder", "layers", ours, "kernel"), _DD,
             lambda w, c: w.T.reshape(c.hidden_size, c.num_heads, c.head_dim),
             lambda w, c: w.reshape(c.hidden_size, -1).T),
        Rule(pre + f"self_attn.{theirs}.bias", ("encoder", "layers", ours, "bias"), _D,
             lambda w, c: w.reshape(c.num_heads, c.head_dim), lambda w, c: w.reshape(-1))]
  rules += [
      Rule(pre + "self_attn.out_proj.weight", ("encoder", "layers", "o", "kernel"), _DD,
           lambda w, c: w.T.reshape(c.num_heads, c.head_dim, c.hidden_size),
           lambda w, c: w.reshape(-1, c.hidden_size).T),
      Rule(pre + "self_attn.out_proj.bias", ("encoder", "layers", "o", "bias"), _D, _same, _same),
      Rule(pre + "mlp.fc1.weight", ("encoder", "layers", "fc1", "kernel"),
           lambda c: (c.intermediate_size, c.hidden_size), _transpose, _transpose),
      Rule(pre + "mlp.fc1.bias", ("encoder", "layers", "fc1", "bias"), lambda c: (c.intermediate_size,), _same, _same),
      Rule(pre + "mlp.fc2.weight", ("encoder", "layers", "fc2", "kernel"),
           lambda c: (c.hidden_size, c.intermediate_size), _transpose, _transpose),
      Rule(pre + "mlp.fc2.bias", ("encoder", "layers", "fc2", "bias"), _D, _same, _same)]
  return tuple(rules)


def _norm_rules(hf: str, ours: str) -> tuple[Rule, ...]:
  return (Rule(hf + ".weight", (ours, "scale"), _D, _same, _same), Rule(hf + ".bias", (ours, "bias"), _D, _same, _same))


VISION_RULES: tuple[Rule, ...] = (
    Rule("embeddings.class_embedding", ("class_embedding",), _D, _same, _same),
    # torch conv [D, C, p, p] <-> our patch matmul kernel [p, p, C, D]
    Rule("embeddings.patch_embedding.weight", ("patch_embedding",),
         lambda c: (c.hidden_size, c.num_channels, c.patch_size, c.patch_size),
         lambda w, c: w.transpose(2, 3, 1, 0), lambda w, c: w.transpose(3, 2, 0, 1)),
    Rule("embeddings.position_embedding.weight", ("position_embedding",),
         lambda c: (c.num_patches + 1, c.hidden_size), _same, _same),
    *_norm_rules("pre_layrnorm", "pre_layrnorm"),
    *_norm_rules("post_layernorm", "post_layernorm"),
    *_layer_rules(),
)

def _siglip_head_rules() -> tuple[Rule, ...]:
  d3 = lambda c: (3 * c.hidden_size, c.hidden_size)  # noqa: E731
  return (
      Rule("head.probe", ("head", "probe"), lambda c: (1, 1, c.hidden_size), lambda w, c: w.reshape(-1),
           lambda w, c: w.reshape(1, 1, -1)),
      # torch MultiheadAttention's packed q/k/v [3D, D] <-> our [D, 3, H, hd]
      Rule("head.attention.in_proj_weight", ("head", "qkv", "kernel"), d3,
           lambda w, c: w.T.reshape(c.hidden_size, 3, c.num_heads, c.head_dim),
           lambda w, c: w.reshape(c.hidden_size, -1).T),
      Rule("head.attention.in_proj_bias", ("head", "qkv", "bias"), lambda c: (3 * c.hidden_size,),
           lambda w, c: w.reshape(3, c.num_heads, c.head_dim), lambda w, c: w.reshape(-1)),
      Rule("head.attention.out_proj.weight", ("head", "o", "kernel"), _DD,
           lambda w, c: w.T.reshape(c.num_heads, c.head_dim, c.hidden_size),
           lambda w, c: w.reshape(-1, c.hidden_size).T),
      Rule("head.attention.out_proj.bias", ("head", "o", "bias"), _D, _same, _same),
      Rule("head.layernorm.weight", ("head", "layernorm", "scale"), _D, _same, _same),
      Rule("head.layernorm.bias", ("head", "layernorm", "bias"), _D, _same, _same),
      Rule("head.mlp.fc1.weight", ("head", "fc1", "kernel"), lambda c: (c.intermediate_size, c.hidden_size),
           _transpose, _transpose),
      Rule("head.mlp.fc1.bias", ("head", "fc1", "bias"), lambda c: (c.intermediate_size,), _same, _same),
      Rule("head.mlp.fc2.weight", ("head", "fc2", "kernel"), lambda c: (c.hidden_size, c.intermediate_size),
           _transpose, _transpose),
      Rule("head.mlp.fc2.bias", ("head", "fc2", "bias"), _D, _same, _same),
  )


SIGLIP_VISION_RULES: tuple[Rule, ...] = (
    # torch conv [D, C, p, p] (+ bias) <-> our patch dense kernel [p * p * C, D]
    Rule("embeddings.patch_embedding.weight", ("patch_embedding", "kernel"),
         lambda c: (c.hidden_size, c.num_channels, c.patch_size, c.patch_size),
         lambda w, c: w.transpose(2, 3, 1, 0).reshape(-1, c.hidden_size),
         lambda w, c: w.reshape(c.patch_size, c.patch_size, c.num_channels, c.hidden_size).transpose(3, 2, 0, 1)),
    Rule("embeddings.patch_embedding.bias", ("patch_embedding", "bias"), _D, _same, _same),
    Rule("embeddings.position_embedding.weight", ("position_embedding",),
         lambda c: (c.num_patches, c.hidden_size), _same, _same),
    *_norm_rules("post_layernorm", "post_layernorm"),
    *_layer_rules(),
)


def vision_rules(cfg: ClipConfig) -> tuple[Rule, ...]:
  """The key table of a vision tower: CLIP's, or SigLIP's (with its pooling head when it has one)."""
  if cfg.model_type == "siglip":
    return SIGLIP_VISION_RULES + (_siglip_head_rules() if cfg.use_head else ())
  return VISION_RULES


TEXT_RULES: tuple[Rule, ...] = (
    Rule("embeddings.token_embedding.weight", ("token_embedding",), lambda c: (c.vocab_size, c.hidden_size),
         _same, _same),
    Rule("embeddings.position_embedding.weight", ("position_embedding",),
         lambda c: (c.max_position_embeddings, c.hidden_size), _same, _same),
    *_norm_rules("final_layer_norm", "final_layer_norm"),
    *_layer_rules(),
)


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def convert_tower(tensors: Tensors, rules, cfg: ClipConfig, problems: list[str], prefix: str = "",
                  dtype=np.float32) -> dict:
  """Our tree for one tower from HF tensors named without `prefix` (problems appended, not raised).

  Names in problems carry `prefix` back, so they read as the checkpoint spells them.
  """
  params: dict = {}
  stacks: dict[tuple, np.ndarray] = {}
  seen: set[str] = set()
  for name in sorted(tensors):
    shape, load = tensors[name]
    for rule in rules:
      match = rule.regex.fullmatch(name)
      if match:
        break
    else:
      problems.append(f"unexpected: {prefix}{name} {tuple(shape)}")
      continue
    want = tuple(rule.hf_shape(cfg))
    if tuple(shape) != want:
      problems.append(f"shape: {prefix}{name} is {tuple(shape)}, expected {want}")
      seen.add(name)
      continue
    seen.add(name)
    try:
      value = rule.to_ours(np.asarray(load()), cfg).astype(dtype)
    except WeightsError as e:  # a non-floating or non-finite tensor: listed with the others
      problems.append(str(e))
      continue
    if not rule.per_layer:
      set_path(params, rule.path, value)
      continue
    layer = int(match.group(1))
    if layer >= cfg.num_layers:
      problems.append(f"unexpected: {prefix}{name} (layer {layer}; the config has {cfg.num_layers} layers)")
      continue
    stack = stacks.setdefault(rule.path, np.zeros((cfg.num_layers,) + value.shape, dtype))
    stack[layer] = value
  for rule in rules:
    names = [rule.hf.format(l=i) for i in range(cfg.num_layers)] if rule.per_layer else [rule.hf]
    problems.extend(f"missing: {prefix}{n} {tuple(rule.hf_shape(cfg))}" for n in names if n not in seen)
  for path, stack in stacks.items():
    set_path(params, path, stack)
  return params


def tower_to_hf(params, rules, cfg: ClipConfig, prefix: str = "") -> dict[str, np.ndarray]:
  """HF-named numpy tensors (torch layout) of one tower, each name prefixed with `prefix`."""
  out = {}
  for rule in rules:
    value = np.asarray(_get(params, rule.path), np.float32)
    if rule.per_layer:
      for layer in range(cfg.num_layers):
        out[prefix + rule.hf.format(l=layer)] = np.ascontiguousarray(rule.to_hf(value[layer], cfg))
    else:
      out[prefix + rule.hf] = np.ascontiguousarray(rule.to_hf(value, cfg))
  return out


def split_prefix(tensors: Tensors, prefixes: tuple[str, ...]) -> tuple[dict, str | None]:
  """The tensors under the longest of `prefixes` that any name starts with, with it stripped."""
  for prefix in sorted(prefixes, key=len, reverse=True):
    picked = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if picked:
      return picked, prefix
  return {}, None


def _read_config(folder: str) -> dict:
  path = os.path.join(folder, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{folder}: no config.json; found {sorted(os.listdir(folder))}")
  try:
    with open(path) as f:
      hf = json.load(f)
  except ValueError as e:
    raise ConfigError(f"{path}: not valid JSON: {e}") from e
  return as_object(hf, path)


def load_clip_vision(folder: str, allow_bad_values: bool = False, **overrides):
  """The vision tower of a CLIPVisionModel / CLIPModel / SiglipVisionModel / SiglipModel folder (HF
  safetensors) -> (ClipVisionTransformer or SiglipVisionTransformer, params)."""
  hf = _read_config(folder)
  where = os.path.join(folder, "config.json")
  vision_hf = hf.get("vision_config", hf) if hf.get("model_type") in ("clip", "siglip") else hf
  cfg = vision_config_from_hf(vision_hf, where, **overrides)
  tensors = read_safetensors_folder(folder, allow_bad_values)
  vision, prefix = split_prefix(tensors, ("vision_model.",))
  if prefix is None:  # transformers 5 saves a CLIPVisionModel without the `vision_model.` prefix
    vision, prefix = {k: v for k, v in tensors.items() if not k.startswith("text_model.")}, ""
    vision = {k: v for k, v in vision.items() if k not in ("visual_projection.weight", "text_projection.weight",
                                                            "logit_scale", "logit_bias")}
  problems: list[str] = []
  params = convert_tower(vision, vision_rules(cfg), cfg, problems, prefix, np.dtype(cfg.param_dtype))
  if problems:
    raise WeightsError(f"{folder}: {len(problems)} tensor(s) do not fit the {cfg.model_type} vision tower "
                       f"({cfg.num_layers} layers, d={cfg.hidden_size}){bad_value_hint(problems)}:\n  "
                       + "\n  ".join(problems))
  return vision_tower(cfg, name=None), params


def load_clip(folder: str, allow_bad_values: bool = False, **overrides) -> tuple[ClipModel, dict]:
  """A full CLIPModel folder (both towers, projections, logit scale) -> (ClipModel, params)."""
  hf = _read_config(folder)
  where = os.path.join(folder, "config.json")
  if hf.get("model_type") != "clip":
    raise ValueError(f"{where}: model_type={hf.get('model_type')!r}; load_clip expects a CLIPModel ('clip')")
  vcfg = vision_config_from_hf(as_object(hf.get("vision_config"), where, "vision_config"), where, **overrides)
  tcfg = text_config_from_hf(as_object(hf.get("text_config"), where, "text_config"), where, **overrides)
  projection_dim = int_field(hf, "projection_dim", where, default=512, minimum=1)
  tensors = read_safetensors_folder(folder, allow_bad_values)
  problems: list[str] = []
  vision, _ = split_prefix(tensors, ("vision_model.",))
  text, _ = split_prefix(tensors, ("text_model.",))
  params = {"vision_model": convert_tower(vision, VISION_RULES, vcfg, problems, "vision_model."),
            "text_model": convert_tower(text, TEXT_RULES, tcfg, problems, "text_model.")}
  heads = {"visual_projection.weight": ("visual_projection", (projection_dim, vcfg.hidden_size)),
           "text_projection.weight": ("text_projection", (projection_dim, tcfg.hidden_size)),
           "logit_scale": ("logit_scale", ())}
  for name, (ours, shape) in heads.items():
    if name not in tensors:
      problems.append(f"missing: {name} {shape}")
    elif tuple(tensors[name][0]) != shape:
      problems.append(f"shape: {name} is {tuple(tensors[name][0])}, expected {shape}")
    else:
      try:
        value = np.asarray(tensors[name][1](), np.float32)
      except WeightsError as e:
        problems.append(str(e))
        continue
      params[ours] = value if ours == "logit_scale" else {"kernel": value.T}
  known = set(heads)
  problems.extend(f"unexpected: {k} {tuple(tensors[k][0])}" for k in sorted(tensors)
                  if not k.startswith(("vision_model.", "text_model.")) and k not in known)
  if problems:
    raise WeightsError(f"{folder}: {len(problems)} tensor(s) do not fit the CLIP model{bad_value_hint(problems)}:\n  "
                       + "\n  ".join(problems))
  return ClipModel(vcfg, tcfg, projection_dim), params


def save_clip_vision(folder: str, cfg: ClipConfig, params, projection=None, processor=None) -> str:
  """Writes a CLIPVisionModel(WithProjection)-style folder: config.json + model.safetensors (+
  preprocessor_config.json when `processor`, an ImageProcessingConfig, is given); returns the folder.

  Args:
    params: the tower's tree (as `load_clip_vision` returns it).
    projection: None, or float[D, P]: CLIP's visual_projection kernel (no bias), saved in torch layout
      [P, D] as `visual_projection.weight`; `load_visual_projection` reads it back.
  """
  from safetensors.numpy import save_file
  os.makedirs(folder, exist_ok=True)
  tensors = tower_to_hf(params, vision_rules(cfg), cfg, prefix="vision_model.")
  hf = vision_config_to_hf(cfg, projection_dim=None if projection is None else int(np.shape(projection)[1]))
  hf["architectures"] = ["CLIPVisionModelWithProjection" if projection is not None else "CLIPVisionModel"]
  if projection is not None:
    tensors["visual_projection.weight"] = np.ascontiguousarray(np.asarray(projection, np.float32).T)
  save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(hf, f, indent=1)
  if processor is not None:
    with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
      json.dump(processor.to_hf(), f, indent=1)
  return folder


def load_visual_projection(folder: str) -> np.ndarray:
  """float32[D, P]: the `visual_projection.weight` of a CLIPVisionModelWithProjection / CLIPModel folder."""
  tensors = read_safetensors_folder(folder)
  if "visual_projection.weight" not in tensors:
    raise WeightsError(f"{folder}: no visual_projection.weight (a CLIPVisionModel without projection?)")
  return np.asarray(tensors["visual_projection.weight"][1](), np.float32).T
