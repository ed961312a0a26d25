"""Experiment configs as Python files, loaded by path: `path/to/config.py[:arg]` -> `get_config(arg)`.

Configs live outside the installed packages (configs/ is data, not code that `pip install .` ships), so
every caller loads them by path; a config file may import its neighbours (`from configs.tga.common import
...`): the folder above `configs/` is put on sys.path.
"""
from __future__ import annotations

import importlib.util
import os
import sys


def load_config_module(path: str):
  """The module of a config file (its get_config, sweep() and tables such as VARIANTS)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} does not exist (configs are loaded by path; run from the "
                            f"repository root or pass an absolute path)")
  spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(os.path.abspath(path)))}", path)
  if spec is None or spec.loader is None:
    raise ValueError(f"{path}: not a Python config file")
  _put_configs_root_on_path(path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _put_configs_root_on_path(path: str) -> None:
  """Config files import their neighbours as `configs.<dir>.<name>`: the folder that holds `configs/`
  must be importable, wherever the caller runs from."""
  folder = os.path.dirname(os.path.abspath(path))
  while os.path.basename(folder) and os.path.basename(folder) != "configs":
    folder = os.path.dirname(folder)
  root = os.path.dirname(folder) if os.path.basename(folder) == "configs" else None
  if root and root not in sys.path:
    sys.path.append(root)


def load_config(spec: str):
  """'path/to/config.py[:arg]' -> the ConfigDict its get_config(arg) returns."""
  path, _, arg = spec.partition(":")
  module = load_config_module(path)
  if not hasattr(module, "get_config"):
    raise ValueError(f"{path} has no get_config(arg)")
  return module.get_config(arg)


def apply_overrides(config, overrides: dict):
  """Sets dotted fields ({'cmp.n_drop': 2, 'seed': 1}) in place; keys starting with '_' are labels, not
  fields. An unknown field raises KeyError naming it and the fields that exist."""
  for key, value in overrides.items():
    if key.startswith("_"):
      continue
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise KeyError(f"override {key!r}: the config has no field {leaf!r} (fields: {sorted(node.keys())})")
    node[leaf] = value
  return config
