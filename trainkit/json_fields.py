"""Typed reads of fields from JSON config files, with errors that name the file, key, expected and found value.

    hf = as_object(json.load(f), "model/config.json")
    width = int_field(hf, "hidden_size", "model/config.json", minimum=1)          # required
    eps = float_field(hf, "rms_norm_eps", "model/config.json", default=1e-6)      # optional

A missing required key, a string where a number belongs ("abc"), a bool where an int belongs, zero heads or a
list where an object belongs all raise ConfigError (a ValueError) instead of int()'s or ZeroDivision's bare
traceback, and nothing silently falls back to a default the file did not state.
"""
from __future__ import annotations

from collections.abc import Mapping

REQUIRED = object()


class ConfigError(ValueError):
  """A config file's field is missing or has the wrong type or value."""


def _found(value) -> str:
  return f"{value!r} ({type(value).__name__})"


def as_object(value, where: str, key: str | None = None) -> dict:
  """`value` as a dict; ConfigError when the file (or its `key`) holds a list, a string, ... instead."""
  if not isinstance(value, Mapping):
    place = f"'{key}'" if key else "the file"
    raise ConfigError(f"{where}: {place} must be a JSON object {{...}}, found {_found(value)[:200]}")
  return dict(value)


def _get(config: Mapping, key: str, where: str, default, expected: str):
  value = config.get(key)
  if value is None:
    if default is REQUIRED:
      detail = "missing required key" if key not in config else "required key is null:"
      raise ConfigError(f"{where}: {detail} '{key}' ({expected})")
    return default, True
  return value, False


def int_field(config: Mapping, key: str, where: str, default=REQUIRED, minimum: int | None = None) -> int:
  """An integer (an integral float such as 4096.0 is accepted; bools and strings are not)."""
  expected = "an integer" + (f" >= {minimum}" if minimum is not None else "")
  value, absent = _get(config, key, where, default, expected)
  if absent:
    return value
  if isinstance(value, bool) or not isinstance(value, (int, float)) or (
      isinstance(value, float) and not value.is_integer()):
    raise ConfigError(f"{where}: '{key}' must be {expected}, found {_found(value)}")
  if minimum is not None and value < minimum:
    raise ConfigError(f"{where}: '{key}' must be {expected}, found {value!r}")
  return int(value)


def float_field(config: Mapping, key: str, where: str, default=REQUIRED, minimum: float | None = None,
                positive: bool = False) -> float:
  """A finite number (int or float); `positive`: > 0; `minimum`: >= minimum."""
  expected = "a number" + (" > 0" if positive else "") + (f" >= {minimum}" if minimum is not None else "")
  value, absent = _get(config, key, where, default, expected)
  if absent:
    return value
  if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value in (
      float("inf"), float("-inf")):
    raise ConfigError(f"{where}: '{key}' must be {expected}, found {_found(value)}")
  if (positive and value <= 0) or (minimum is not None and value < minimum):
    raise ConfigError(f"{where}: '{key}' must be {expected}, found {value!r}")
  return float(value)


def bool_field(config: Mapping, key: str, where: str, default=REQUIRED) -> bool:
  value, absent = _get(config, key, where, default, "true or false")
  if absent:
    return value
  if not isinstance(value, bool):
    raise ConfigError(f"{where}: '{key}' must be true or false, found {_found(value)}")
  return value


def str_field(config: Mapping, key: str, where: str, default=REQUIRED, choices=None) -> str:
  expected = f"one of {sorted(choices)}" if choices else "a string"
  value, absent = _get(config, key, where, default, expected)
  if absent:
    return value
  if not isinstance(value, str) or (choices and value not in choices):
    raise ConfigError(f"{where}: '{key}' must be {expected}, found {_found(value)}")
  return value


def divisible(config: Mapping, numerator: str, denominator: str, where: str) -> None:
  """ConfigError unless config[numerator] is a multiple of config[denominator] (both already checked ints)."""
  a, b = config[numerator], config[denominator]
  if a % b:
    raise ConfigError(f"{where}: '{numerator}' ({a}) must be divisible by '{denominator}' ({b})")
