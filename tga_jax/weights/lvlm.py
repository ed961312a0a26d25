"""`load_lvlm(path) -> (module, params)`, the export to a llava-hf folder, and the stage masks.

Sources:
  - a llava-hf folder (config.json with model_type 'llava' + safetensors), in either key layout:
    transformers 4 / hub (`language_model.model.*`, `language_model.lm_head.*`, `vision_tower.[vision_model.]*`,
    `multi_modal_projector.*`) or transformers 5 (`model.language_model.*`, `lm_head.*`,
    `model.vision_tower.[vision_model.]*`, `model.multi_modal_projector.*`);
  - a composition: a JSON file (or a folder holding `lvlm.json`) naming a CLIP folder, an LLM (anything
    load_llm takes) and optionally a projector safetensors -- or the same through `compose_lvlm(...)`.
Params: {'vision': CLIP vision tower, 'projector': {'linear_1', ...}, 'llm': LlamaForCausalLM params}.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re

import flax.linen as nn
import jax
import numpy as np

import trainkit
from tga_jax.weights import clip as clip_params
from tga_jax.weights import llama as llama_params
from tga_jax.models.clip import ClipConfig
from tga_jax.models.image_config import ImageProcessingConfig
from tga_jax.weights.safetensors_io import WeightsError, bad_value_hint, checked_tensors, read_safetensors_folder
from tga_jax.weights.llm import load_llm
from tga_jax.models.lvlm import LLAVA_IMAGE_TOKEN_INDEX, LlavaLVLM, LvlmConfig
from tga_jax.models.projector import Projector, ProjectorConfig
from trainkit.json_fields import ConfigError, as_object

# (checkpoint prefix, canonical prefix) of the language model's tensors, longest first.
LLM_PREFIXES = (("language_model.model.", "model."), ("language_model.lm_head.", "lm_head."),
                ("model.language_model.", "model."), ("lm_head.", "lm_head."))
VISION_PREFIXES = ("model.vision_tower.vision_model.", "vision_tower.vision_model.", "model.vision_tower.",
                   "vision_tower.")
PROJECTOR_PREFIXES = ("model.multi_modal_projector.", "multi_modal_projector.")
# transformers' LlamaConfig / MistralConfig defaults: hub llava configs omit the fields that equal them.
TEXT_DEFAULTS = {
    "llama": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
    "mistral": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=8, max_position_embeddings=32768, rope_theta=10000.0),
}
# Stage 1 trains the projector; stage 2 the projector and the whole LLM; the vision tower never.
STAGE_TRAINABLE = {1: ("projector/.*",), 2: ("projector/.*", "llm/.*")}
RUNTIME_FIELDS = ("dtype", "param_dtype", "remat_policy")


def trainable_patterns(stage: int) -> tuple[str, ...]:
  """Regexes over '/'-joined param paths for `config.optimizer.trainable` (trainkit.make_optimizer)."""
  if stage not in STAGE_TRAINABLE:
    raise ValueError(f"stage={stage!r}: expected 1 (projector only) or 2 (projector + LLM)")
  return STAGE_TRAINABLE[stage]


def trainable_mask(params, stage: int):
  """Bool tree over `params` ({'vision', 'projector', 'llm'}): True where the stage trains."""
  return trainkit.trainable_mask(params, trainable_patterns(stage))


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except OSError as e:
    raise FileNotFoundError(f"{path}: cannot read ({e})") from e
  except ValueError as e:
    raise ValueError(f"{path}: not valid JSON: {e}") from e


def _runtime(overrides: dict) -> tuple[dict, dict]:
  """Splits overrides into the tower/LLM run-time fields and the LVLM-level ones."""
  unknown = set(overrides) - set(RUNTIME_FIELDS) - {"train_vision", "feature_layer", "feature_strategy",
                                                    "image_aspect", "scan_unroll", "image_pool", "allow_bad_values"}
  if unknown:
    raise TypeError(f"unknown overrides {sorted(unknown)}; expected some of {RUNTIME_FIELDS} or train_vision, "
                    f"feature_layer, feature_strategy, image_aspect, scan_unroll, image_pool")
  return {k: v for k, v in overrides.items() if k in RUNTIME_FIELDS}, overrides


def load_lvlm(path: str, **overrides) -> tuple[LlavaLVLM, dict]:
  """Loads a LLaVA-style model from a llava-hf folder, a composition spec (see the module docstring), or a
  Hugging Face repo id of a llava-hf model ('org/name[@revision]', downloaded through trainkit.hub).

  Args:
    overrides: dtype, param_dtype, remat_policy, scan_unroll (the LLM's), allow_bad_values (load tensors with
      NaN/Inf or a non-floating dtype, with a warning, instead of raising), train_vision, feature_layer,
      feature_strategy, image_aspect ('pad' or 'crop').
  Returns:
    (LlavaLVLM, params of numpy arrays).
  Raises:
    FileNotFoundError / ValueError naming the file and field; WeightsError listing every unknown, missing
    and mis-shaped tensor.
  """
  if not os.path.exists(path):
    from trainkit import hub  # only here: local loads never import huggingface_hub

    if hub.looks_like_repo_id(path):  # 'org/name[@revision]': a llava-hf repo (rule: trainkit/hub.py)
      path = hub.download_model(path, gguf=False)
  if os.path.isdir(path) and os.path.exists(os.path.join(path, "lvlm.json")):
    return _load_composition(os.path.join(path, "lvlm.json"), overrides)
  if os.path.isfile(path) and path.endswith(".json"):
    return _load_composition(path, overrides)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path!r}: expected a llava-hf folder, a folder with lvlm.json, or a composition "
                            f".json file")
  config_path = os.path.join(path, "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{path}: no config.json (nor lvlm.json); found {sorted(os.listdir(path))}")
  hf = _read_json(config_path)
  config = config_from_hf(hf, config_path, path, **overrides)
  tensors = read_safetensors_folder(path, bool(overrides.get("allow_bad_values", False)))
  params = params_from_hf(tensors, config, path)
  return LlavaLVLM(config), params


def config_from_hf(hf: dict, where: str, folder: str | None = None, **overrides) -> LvlmConfig:
  """LvlmConfig from a llava-hf config.json dict."""
  runtime, overrides = _runtime(overrides)
  hf = as_object(hf, where)
  if hf.get("model_type") != "llava":
    raise ValueError(f"{where}: model_type={hf.get('model_type')!r}; expected 'llava' (LlavaForConditionalGeneration)")
  layer = overrides.get("feature_layer", hf.get("vision_feature_layer", -2))
  if not isinstance(layer, int):
    raise ValueError(f"{where}: vision_feature_layer={layer!r}: only a single layer (an int) is supported")
  strategy = overrides.get("feature_strategy", hf.get("vision_feature_select_strategy", "default"))
  if hf.get("projector_hidden_act", "gelu") != "gelu":
    raise ValueError(f"{where}: projector_hidden_act={hf['projector_hidden_act']!r}; expected 'gelu'")
  text = as_object(hf.get("text_config") or {}, where, "text_config")
  text_type = text.get("model_type", "llama")
  for key, value in TEXT_DEFAULTS.get(text_type, {}).items():
    text.setdefault(key, value)
  text.setdefault("model_type", text_type)
  llm_overrides = dict(runtime)
  if "scan_unroll" in overrides:
    llm_overrides["scan_unroll"] = overrides["scan_unroll"]
  llm = llama_params.config_from_hf(text, f"{where} (text_config)", **llm_overrides)
  vision_runtime = {k: v for k, v in runtime.items() if k != "remat_policy"}
  vision = clip_params.vision_config_from_hf(as_object(hf.get("vision_config") or {}, where, "vision_config"),
                                             f"{where} (vision_config)",
                                             feature_layer=layer, feature_strategy=strategy, **vision_runtime)
  projector = ProjectorConfig("mlp2x_gelu", vision.hidden_size, llm.hidden_size,
                              bool(hf.get("multimodal_projector_bias", True)), **_projector_runtime(runtime))
  token = hf.get("image_token_id", hf.get("image_token_index"))
  if token is None:
    raise ConfigError(f"{where}: no image_token_index / image_token_id")
  if isinstance(token, bool) or not isinstance(token, int):
    raise ConfigError(f"{where}: 'image_token_index' must be an integer, found {token!r}")
  processing = ImageProcessingConfig.from_folder(folder, overrides.get("image_aspect", "pad"), vision.image_size) \
      if folder else ImageProcessingConfig(vision.image_size, vision.image_size)
  return LvlmConfig(vision, projector, llm, int(token), bool(overrides.get("train_vision", False)), processing)


def _projector_runtime(runtime: dict) -> dict:
  return {k: v for k, v in runtime.items() if k in ("dtype", "param_dtype")}


def _split(tensors: dict) -> tuple[dict, dict, dict, list[str]]:
  """(llm, vision, projector, unexpected) with the llm's names made canonical (`model.*`, `lm_head.*`)."""
  llm, vision, projector, unexpected = {}, {}, {}, []
  for name, value in tensors.items():
    for theirs, ours in LLM_PREFIXES:
      if name.startswith(theirs):
        llm[ours + name[len(theirs):]] = value
        break
    else:
      for prefix in VISION_PREFIXES:
        if name.startswith(prefix):
          vision[name[len(prefix):]] = (prefix, value)
          break
      else:
        for prefix in PROJECTOR_PREFIXES:
          if name.startswith(prefix):
            projector[name[len(prefix):]] = (prefix, value)
            break
        else:
          unexpected.append(f"unexpected: {name} {tuple(value[0])}")
  return llm, vision, projector, unexpected


def params_from_hf(tensors, config: LvlmConfig, source: str) -> dict:
  """Our params from the tensors of a llava-hf checkpoint (either layout); one WeightsError for all problems."""
  llm_tensors, vision, projector, problems = _split(dict(tensors))
  vision_prefix = next(iter(vision.values()))[0] if vision else "vision_tower."
  vision_params = clip_params.convert_tower({k: v for k, (_, v) in vision.items()},
                                            clip_params.vision_rules(config.vision),
                                            config.vision, problems, vision_prefix,
                                            np.dtype(config.vision.param_dtype))
  projector_prefix = next(iter(projector.values()))[0] if projector else "multi_modal_projector."
  projector_params = _projector_from_named({k: v for k, (_, v) in projector.items()}, config.projector, problems,
                                           projector_prefix)
  llm_params = None
  try:
    llm_params = llama_params.params_from_hf(llm_tensors, config.llm, source, dtype=np.dtype(config.llm.param_dtype))
  except WeightsError as e:
    lines = str(e).split("\n")[1:]
    problems.extend("language model " + line.strip() for line in lines)
  if problems:
    raise WeightsError(f"{source}: {len(problems)} tensor(s) do not fit the LLaVA model (vision "
                       f"{config.vision.num_layers} layers d={config.vision.hidden_size}, LLM {config.llm.num_layers} "
                       f"layers d={config.llm.hidden_size}; language-model names shown without their "
                       f"'language_model.'/'model.language_model.' prefix){bad_value_hint(problems)}:\n  "
                       + "\n  ".join(problems))
  return {"vision": vision_params, "projector": projector_params, "llm": llm_params}


_HF_LINEAR = re.compile(r"linear_(\d+)\.(weight|bias)")
_LLAVA_LINEAR = re.compile(r"(?:model\.)?mm_projector\.(\d+)\.(weight|bias)")


def _projector_from_named(named: dict, cfg: ProjectorConfig, problems: list[str], prefix: str) -> dict:
  """{'linear_i': {kernel, bias}} from tensors named `linear_{i}.weight|bias` (1-based)."""
  out: dict = {}
  for i in range(1, cfg.depth + 1):
    in_dim = cfg.in_dim if i == 1 else cfg.out_dim
    parts = {"weight": ((cfg.out_dim, in_dim), "kernel")}
    if cfg.use_bias:
      parts["bias"] = ((cfg.out_dim,), "bias")
    for kind, (shape, ours) in parts.items():
      name = f"linear_{i}.{kind}"
      if name not in named:
        problems.append(f"missing: {prefix}{name} {shape}")
        continue
      have = tuple(named[name][0])
      if have != shape:
        problems.append(f"shape: {prefix}{name} is {have}, expected {shape}")
        continue
      try:
        value = np.asarray(named[name][1](), np.dtype(cfg.param_dtype))
      except WeightsError as e:  # a non-floating or non-finite tensor: listed with the others
        problems.append(str(e))
        continue
      out.setdefault(f"linear_{i}", {})[ours] = value.T if kind == "weight" else value
  for name in sorted(named):
    match = _HF_LINEAR.fullmatch(name)
    if not match or not 1 <= int(match.group(1)) <= cfg.depth or (match.group(2) == "bias" and not cfg.use_bias):
      problems.append(f"unexpected: {prefix}{name} {tuple(named[name][0])}")
  return out


def read_projector(path: str) -> tuple[dict, str]:
  """A projector safetensors file -> (tensors renamed to `linear_{i}.weight|bias`, projector type).

  Accepts LLaVA's names (`model.mm_projector.{0,2,4..}.weight`: nn.Sequential indices, GELUs between) and
  llava-hf's (`[model.]multi_modal_projector.linear_{1,2}.weight`).
  """
  from safetensors import safe_open

  if not os.path.isfile(path):
    raise FileNotFoundError(f"projector {path!r}: no such file")
  try:
    handle = safe_open(path, framework="numpy")
    keys = list(handle.keys())
  except Exception as e:  # noqa: BLE001 -- re-raised naming the file
    raise ValueError(f"{path}: not a readable safetensors file: {e}") from e
  named, bad = {}, []
  for key in keys:
    loader = (tuple(handle.get_slice(key).get_shape()), (lambda k=key: handle.get_tensor(k)))
    match = _LLAVA_LINEAR.fullmatch(key)
    if match and int(match.group(1)) % 2 == 0:
      named[f"linear_{int(match.group(1)) // 2 + 1}.{match.group(2)}"] = loader
      continue
    for prefix in PROJECTOR_PREFIXES:
      if key.startswith(prefix) and _HF_LINEAR.fullmatch(key[len(prefix):]):
        named[key[len(prefix):]] = loader
        break
    else:
      bad.append(key)
  if bad or not named:
    raise WeightsError(f"{path}: projector tensors must be named model.mm_projector.<i>.weight|bias (LLaVA) or "
                       f"multi_modal_projector.linear_<i>.weight|bias (llava-hf); unexpected: {bad or keys}")
  depth = max(int(_HF_LINEAR.fullmatch(k).group(1)) for k in named)
  return named, "linear" if depth == 1 else f"mlp{depth}x_gelu"


def compose_lvlm(vision: str, llm: str, projector: str | None = None, projector_type: str | None = None,
                 image_token_id: int = LLAVA_IMAGE_TOKEN_INDEX, feature_layer: int = -2,
                 feature_strategy: str = "default", seed: int = 0, **overrides) -> tuple[LlavaLVLM, dict]:
  """An LVLM from parts: a CLIP folder (CLIPModel or CLIPVisionModel), an LLM (any `load_llm` path) and
  a projector safetensors -- or, without one, a freshly initialised projector (stage 1 starts there).

  Args:
    projector_type: 'linear' / 'mlp<N>x_gelu'; inferred from the projector file when None (else mlp2x_gelu).
    image_token_id: the placeholder id; LLaVA's -200 suits a tokenizer without an `<image>` token.
    overrides: as load_lvlm.
  """
  runtime, overrides = _runtime(overrides)
  vision_runtime = {k: v for k, v in runtime.items() if k != "remat_policy"}
  allow = bool(overrides.get("allow_bad_values", False))
  vision_module, vision_params = clip_params.load_clip_vision(
      vision, allow_bad_values=allow, feature_layer=overrides.get("feature_layer", feature_layer),
      feature_strategy=overrides.get("feature_strategy", feature_strategy), **vision_runtime)
  llm_overrides = dict(runtime, **({"scan_unroll": overrides["scan_unroll"]} if "scan_unroll" in overrides else {}))
  llm_module, llm_params = load_llm(llm, allow, **llm_overrides)
  vcfg: ClipConfig = vision_module.config
  named, found_type = (read_projector(projector) if projector else ({}, None))
  named = checked_tensors(named, allow)
  kind = projector_type or found_type or "mlp2x_gelu"
  if projector and found_type != kind:
    raise ValueError(f"projector {projector}: holds a {found_type!r} projector but projector_type={kind!r}")
  has_bias = any(k.endswith(".bias") for k in named) if named else True
  pcfg = ProjectorConfig(kind, vcfg.hidden_size, llm_module.config.hidden_size, has_bias, **_projector_runtime(runtime))
  if projector:
    problems: list[str] = []
    projector_params = _projector_from_named(named, pcfg, problems, "")
    if problems:
      raise WeightsError(f"{projector}: {len(problems)} tensor(s) do not fit a {kind} projector "
                         f"({vcfg.hidden_size} -> {llm_module.config.hidden_size}){bad_value_hint(problems)}:\n  "
                         + "\n  ".join(problems))
  else:
    features = np.zeros((1, vcfg.hidden_size), np.float32)
    initial = Projector(pcfg).init(jax.random.PRNGKey(seed), features)["params"]
    projector_params = jax.tree.map(np.asarray, nn.meta.unbox(initial))
  processing = ImageProcessingConfig.from_folder(vision, overrides.get("image_aspect", "pad"), vcfg.image_size)
  config = LvlmConfig(vcfg, pcfg, llm_module.config, int(image_token_id), bool(overrides.get("train_vision", False)),
                      processing, int(overrides.get("image_pool", 1)))
  return LlavaLVLM(config), {"vision": vision_params, "projector": projector_params, "llm": llm_params}


def _load_composition(spec_path: str, overrides: dict) -> tuple[LlavaLVLM, dict]:
  """A JSON spec {"vision": dir, "llm": path, "projector": file?, "projector_type"?, "image_token_id"?,
  "feature_layer"?, "feature_strategy"?}; relative paths are relative to the spec's folder."""
  spec = as_object(_read_json(spec_path), spec_path)
  base = os.path.dirname(os.path.abspath(spec_path))
  missing = [k for k in ("vision", "llm") if k not in spec]
  if missing:
    raise ValueError(f"{spec_path}: missing fields {missing}; expected vision, llm and optionally projector, "
                     f"projector_type, image_token_id, feature_layer, feature_strategy")
  known = {"vision", "llm", "projector", "projector_type", "image_token_id", "feature_layer", "feature_strategy"}
  unknown = sorted(set(spec) - known)
  if unknown:
    raise ValueError(f"{spec_path}: unknown fields {unknown}; expected some of {sorted(known)}")

  def resolve(p):
    return p if p is None or os.path.isabs(p) or not os.path.exists(os.path.join(base, p)) else os.path.join(base, p)

  kwargs = {k: spec[k] for k in ("projector_type", "image_token_id", "feature_layer", "feature_strategy") if k in spec}
  return compose_lvlm(resolve(spec["vision"]), resolve(spec["llm"]), resolve(spec.get("projector")), **kwargs,
                      **overrides)


def config_to_hf(config: LvlmConfig) -> dict:
  """A llava-hf config.json dict (transformers' LlavaConfig)."""
  if config.image_pool != 1:
    raise ValueError(f"image_pool={config.image_pool}: llava-hf has no patch pooling; save the parts "
                     f"(save_projector) and compose them with image_pool instead")
  if config.projector.kind != "mlp2x_gelu":
    raise ValueError(f"llava-hf has only the mlp2x_gelu projector; this model's is {config.projector.kind!r} "
                     f"(save it with save_projector instead)")
  if not 0 <= config.image_token_id < config.llm.vocab_size:
    raise ValueError(f"image_token_id={config.image_token_id} is outside the vocabulary "
                     f"(0..{config.llm.vocab_size - 1}); "
                     f"llava-hf looks the placeholder up in the embeddings, so add an <image> token to the "
                     f"tokenizer and the embedding table first")
  text = llama_params.config_to_hf(config.llm)
  return {
      "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
      "text_config": text, "vision_config": clip_params.vision_config_to_hf(config.vision),
      "image_token_index": config.image_token_id, "image_seq_length": config.tokens_per_image,
      "vision_feature_layer": config.vision.feature_layer,
      "vision_feature_select_strategy": config.vision.feature_strategy, "projector_hidden_act": "gelu",
      "multimodal_projector_bias": config.projector.use_bias, "tie_word_embeddings": config.llm.tie_word_embeddings,
      "torch_dtype": "float32",
  }


def params_to_hf(params, config: LvlmConfig) -> dict[str, np.ndarray]:
  """HF-named float32 tensors in the hub's llava-hf layout (`language_model.model.*`, `vision_tower.vision_model.*`)."""
  out = {}
  for name, value in llama_params.params_to_hf(params["llm"], config.llm).items():
    out["language_model." + name] = value
  out.update(clip_params.tower_to_hf(params["vision"], clip_params.vision_rules(config.vision), config.vision,
                                     "vision_tower.vision_model."))
  out.update(_projector_to_named(params["projector"], config.projector, "multi_modal_projector."))
  return out


def _projector_to_named(params, cfg: ProjectorConfig, prefix: str, llava_names: bool = False) -> dict:
  out = {}
  for i in range(1, cfg.depth + 1):
    layer = params[f"linear_{i}"]
    base = f"model.mm_projector.{2 * (i - 1)}" if llava_names else f"{prefix}linear_{i}"
    out[f"{base}.weight"] = np.ascontiguousarray(np.asarray(layer["kernel"], np.float32).T)
    if cfg.use_bias:
      out[f"{base}.bias"] = np.asarray(layer["bias"], np.float32)
  return out


def save_lvlm_hf(module: LlavaLVLM, params, folder: str, tokenizer=None, push_to_hub: str | None = None) -> str:
  """Writes a llava-hf folder (config.json, model.safetensors, preprocessor_config.json) that
  transformers' LlavaForConditionalGeneration loads; the tokenizer too when given.

  push_to_hub: a Hugging Face repo id ('org/name'): after the folder is written, its files are uploaded
    there (the repo is created if needed; a write token from `hf auth login` or HF_TOKEN). Offline
    (HF_HUB_OFFLINE=1) or with the hub unreachable, `trainkit.hub.HubUnavailableError` says so; the folder
    stays written either way.
  """
  from safetensors.numpy import save_file

  config = module.config
  hf = config_to_hf(config)
  if push_to_hub is not None:
    from trainkit import hub

    hub.push_target(push_to_hub)  # a malformed repo id fails before anything is written
  os.makedirs(folder, exist_ok=True)
  save_file(params_to_hf(params, config), os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(hf, f, indent=2)
  with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
    json.dump(config.image_processing.to_hf(), f, indent=2)
  if tokenizer is not None:
    tokenizer.save_pretrained(folder)
  if push_to_hub is not None:
    hub.upload_folder(folder, push_to_hub, commit_message="Upload LLaVA model (tga_jax save_lvlm_hf)")
  return folder


def save_projector(module: LlavaLVLM, params, path: str) -> str:
  """The projector alone as LLaVA names it (`model.mm_projector.{0,2,..}.weight|bias`): a stage-1 result."""
  from safetensors.numpy import save_file

  tensors = _projector_to_named(params["projector"], module.config.projector, "", llava_names=True)
  save_file(tensors, path, metadata={"format": "pt", "projector_type": module.config.projector.kind})
  return path


def add_image_token(module: LlavaLVLM, params, tokenizer=None, token: str = "<image>", pad_to_multiple: int = 64):
  """Gives the model a real `<image>` id inside its vocabulary (what llava-hf checkpoints have, and what
  export to llava-hf needs): the id is the tokenizer's `token` (added as a special token if missing,
  the tokenizer is changed in place) or, without a tokenizer, the current vocab_size; the embedding (and
  an untied LM head) grow to hold it, rounded up to `pad_to_multiple`, new rows set to the mean of the
  old ones (new logits rows then score like an average token, not like noise).

  Returns:
    (module, params) with image_token_id and vocab_size updated; ids of the old placeholder
    (e.g. LLaVA's -200) must be replaced by `module.config.image_token_id` in tokenised data.
  """
  config = module.config
  if tokenizer is not None:
    if token not in tokenizer.get_vocab():
      tokenizer.add_special_tokens({"additional_special_tokens": [token]})
    new_id = tokenizer.convert_tokens_to_ids(token)
  else:
    new_id = config.llm.vocab_size
  vocab = max(config.llm.vocab_size, new_id + 1)
  vocab = -(-vocab // pad_to_multiple) * pad_to_multiple

  def grow(table, axis):
    table = np.asarray(table)
    extra = vocab - table.shape[axis]
    if extra <= 0:
      return table
    mean = table.mean(axis=axis, keepdims=True)
    return np.concatenate([table, np.repeat(mean, extra, axis=axis)], axis=axis).astype(table.dtype)

  llm_params = dict(params["llm"], embedding=grow(params["llm"]["embedding"], 0))
  if not config.llm.tie_word_embeddings:
    llm_params["lm_head"] = dict(params["llm"]["lm_head"], kernel=grow(params["llm"]["lm_head"]["kernel"], 1))
  llm = dataclasses.replace(config.llm, vocab_size=vocab)
  new_config = dataclasses.replace(config, llm=llm, image_token_id=int(new_id))
  return LlavaLVLM(new_config), dict(params, llm=llm_params)
