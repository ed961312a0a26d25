"""One reader for HF safetensors checkpoints, and the pieces every per-family key table shares.

`read_safetensors_folder` maps each tensor name to (shape, loader) without reading the data, so a table
(weights/llama.py, weights/clip.py, weights/lvlm.py) can check every name and shape first and raise one
`WeightsError` that lists every problem.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable
from typing import Any

import numpy as np


class WeightsError(ValueError):
  """A checkpoint does not fit the model: lists every problem at once."""


@dataclasses.dataclass(frozen=True)
class Rule:
  """One HF tensor name pattern and how it maps onto our tree; the callables take the model config."""
  hf: str                                   # with '{l}' for the layer index
  path: tuple[str, ...]                     # our param path; stacked over layers when hf has '{l}'
  hf_shape: Callable[[Any], tuple]
  to_ours: Callable[[np.ndarray, Any], np.ndarray]
  to_hf: Callable[[np.ndarray, Any], np.ndarray]
  when: Callable[[Any], bool] = lambda c: True

  @property
  def per_layer(self) -> bool:
    return "{l}" in self.hf

  @property
  def regex(self) -> re.Pattern:
    return re.compile(re.escape(self.hf).replace(r"\{l\}", r"(\d+)"))


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
  """tree[path[0]][path[1]]... = value, creating the dicts on the way."""
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def natural_key(name: str):
  """Sort key that orders layer 10 after layer 9."""
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def read_safetensors_folder(folder: str) -> dict[str, tuple[tuple, Callable[[], np.ndarray]]]:
  """HF name -> (shape, loader) over `model.safetensors` or the sharded files its index lists."""
  from safetensors import SafetensorError, safe_open

  index_path = os.path.join(folder, "model.safetensors.index.json")
  if os.path.exists(index_path):
    try:
      with open(index_path) as f:
        weight_map = json.load(f)["weight_map"]
    except (OSError, ValueError, KeyError) as e:
      raise ValueError(f"{index_path}: not a safetensors index with a 'weight_map' ({e})") from e
    files = sorted(set(weight_map.values()))
  else:
    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    if not files:
      found = sorted(os.listdir(folder))
      bins = [f for f in found if f.endswith((".bin", ".pt", ".pth"))]
      hint = f" (found {bins}: pickled torch files are never loaded; convert them to safetensors)" if bins else ""
      raise FileNotFoundError(f"{folder}: no *.safetensors file{hint}; found {found}")
  tensors = {}
  for name in files:
    path = os.path.join(folder, name)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{index_path} lists {name}, which is not in {folder}")
    try:
      handle = safe_open(path, framework="numpy")
      keys = list(handle.keys())
      shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in keys}
    except (SafetensorError, OSError, ValueError) as e:
      raise ValueError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from e
    for key in keys:
      tensors[key] = (shapes[key], _tensor_loader(handle, key, path))
  return tensors


def _tensor_loader(handle, key, path):
  def load():
    try:
      return handle.get_tensor(key)
    except Exception as e:  # noqa: BLE001 -- re-raised with the file and tensor named
      raise ValueError(f"{path}: cannot read tensor {key}: {e}") from e
  return load
