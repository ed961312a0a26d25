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
from absl import logging

from trainkit.json_fields import ConfigError, as_object
from trainkit.paths import OutsideRoot, inside_root
from trainkit.tensor_checks import ALLOW_HINT, WeightsError, value_problem



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


def read_safetensors_folder(folder: str, allow_bad_values: bool = False
                            ) -> dict[str, tuple[tuple, Callable[[], np.ndarray]]]:
  """HF name -> (shape, loader) over `model.safetensors` or the sharded files its index lists.

  Every shard the index names must lie inside `folder` (after symlinks). A loader raises WeightsError
  for a tensor of a non-floating dtype or with NaN/Inf unless `allow_bad_values` (see `checked_tensors`).
  """
  from safetensors import SafetensorError, safe_open

  index_path = os.path.join(folder, "model.safetensors.index.json")
  if os.path.exists(index_path):
    files = [_shard(folder, index_path, name) for name in _index_shards(index_path)]
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
  return checked_tensors(tensors, allow_bad_values)


def _index_shards(index_path: str) -> list[str]:
  """The shard file names a model.safetensors.index.json lists."""
  try:
    with open(index_path) as f:
      index = as_object(json.load(f), index_path)
  except ConfigError:
    raise
  except (OSError, ValueError) as e:
    raise ConfigError(f"{index_path}: not a readable JSON safetensors index ({e})") from e
  if "weight_map" not in index:
    raise ConfigError(f"{index_path}: missing required key 'weight_map' (an object: tensor name -> shard file)")
  weight_map = as_object(index["weight_map"], index_path, "weight_map")
  bad = sorted(k for k, v in weight_map.items() if not isinstance(v, str) or not v)
  if bad:
    raise ConfigError(f"{index_path}: 'weight_map' must map tensor names to shard file names; not so for "
                      f"{bad[:5]} (found {weight_map[bad[0]]!r})")
  return sorted(set(weight_map.values()))


def _shard(folder: str, index_path: str, name: str) -> str:
  """`name` relative to `folder`, after checking it stays inside (no '../', absolute path or symlink out)."""
  try:
    inside_root(folder, name, "weights shard")
  except OutsideRoot as e:
    raise OutsideRoot(f"{index_path}: shard {name!r} lies outside the model folder: {e}") from e
  return name


def checked_tensors(tensors: dict, allow_bad_values: bool = False) -> dict:
  """Wraps each (shape, loader) so that loading a tensor of a non-floating dtype (int64, bool, ...) or with
  NaN/Inf raises WeightsError naming it, or with `allow_bad_values` only logs a warning. Loaders run only for
  the tensors a model uses, so integer buffers a checkpoint carries (position_ids) never trip it."""
  def wrap(key, load):
    def checked():
      value = load()
      problem = value_problem(value)
      if problem and not allow_bad_values:
        raise WeightsError(f"value: {key}: {problem}")
      if problem:
        logging.warning("tensor %s: %s (loaded anyway: allow_bad_values=True)", key, problem)
      return value
    return checked
  return {key: (shape, wrap(key, load)) for key, (shape, load) in tensors.items()}


def bad_value_hint(problems: list[str]) -> str:
  """' (pass allow_bad_values=True ...)' when a problem line is a bad value, for the error's first line."""
  return f" ({ALLOW_HINT})" if any("value: " in p for p in problems) else ""


def _tensor_loader(handle, key, path):
  def load():
    try:
      return handle.get_tensor(key)
    except Exception as e:  # noqa: BLE001 -- re-raised with the file and tensor named
      raise ValueError(f"{path}: cannot read tensor {key}: {e}") from e
  return load
