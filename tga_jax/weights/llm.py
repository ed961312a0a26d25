"""`load_llm(path) -> (module, params)` and the export back to an HF folder."""
from __future__ import annotations

import json
import os

import numpy as np

from tga_jax.weights import gguf_io
from tga_jax.weights import llama as llama_params
from tga_jax.models.llama import LlamaConfig, LlamaForCausalLM
from tga_jax.weights.known_models import resolve_model_path
from tga_jax.weights.safetensors_io import checked_tensors, read_safetensors_folder


def load_llm(path: str, allow_bad_values: bool = False, **overrides) -> tuple[LlamaForCausalLM, dict]:
  """Loads a LLaMA-family decoder.

  Args:
    path: an HF folder (config.json + model.safetensors, or shards with model.safetensors.index.json),
      a `.gguf` file, or a name in `tga_jax.weights.known_models.KNOWN_MODELS` ('smollm2-135m-instruct').
    allow_bad_values: load tensors with NaN/Inf or a non-floating dtype (with a warning) instead of raising.
    overrides: LlamaConfig run-time fields: dtype, param_dtype, remat_policy, scan_unroll.
  Returns:
    (module, params): params a dict of numpy arrays in `param_dtype` (layers stacked on axis 0);
    `module.apply({'params': params}, input_ids, ...)`.
  Raises:
    FileNotFoundError / ValueError naming the file and what is wrong; WeightsError listing
    every unknown, missing and mis-shaped tensor.
  """
  path = resolve_model_path(path)
  if os.path.isdir(path):
    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
      raise FileNotFoundError(f"{path}: no config.json (an HF model folder needs config.json + *.safetensors); "
                              f"found {sorted(os.listdir(path))}")
    try:
      with open(config_path) as f:
        hf_config = json.load(f)
    except ValueError as e:
      raise ValueError(f"{config_path}: not valid JSON: {e}") from e
    config = llama_params.config_from_hf(hf_config, config_path, **overrides)
    tensors = read_safetensors_folder(path, allow_bad_values)
  elif gguf_io.is_gguf(path):
    hf_config, tensors = gguf_io.read_gguf(path)
    tensors = checked_tensors(tensors, allow_bad_values)
    config = llama_params.config_from_hf(hf_config, path, **overrides)
  else:
    raise ValueError(f"{path}: expected an HF model folder or a GGUF file (magic b'GGUF')")
  params = llama_params.params_from_hf(tensors, config, path, dtype=np.dtype(config.param_dtype))
  return LlamaForCausalLM(config), params


def save_llm_hf(module_or_config, params, folder: str, tokenizer=None) -> str:
  """Writes config.json + model.safetensors (float32, HF names and layout) that transformers loads.

  Args:
    module_or_config: a LlamaForCausalLM or its LlamaConfig.
    tokenizer: optional; saved beside the weights (`save_pretrained`).
  """
  from safetensors.numpy import save_file

  config = module_or_config.config if hasattr(module_or_config, "config") else module_or_config
  if not isinstance(config, LlamaConfig):
    raise TypeError(f"expected a LlamaForCausalLM or LlamaConfig, got {type(module_or_config).__name__}")
  os.makedirs(folder, exist_ok=True)
  tensors = llama_params.params_to_hf(params, config)
  save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(llama_params.config_to_hf(config), f, indent=2)
  if tokenizer is not None:
    tokenizer.save_pretrained(folder)
  return folder
