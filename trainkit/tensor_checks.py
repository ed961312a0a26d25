"""Checks on the values of loaded weights: a floating dtype, and no NaN/Inf.

    problem = value_problem(array)      # None, or e.g. 'dtype int64, expected a floating type'

The weight loaders (tga_jax/weights, comploss_jax/encoder_params.py) list every tensor with a problem in
one error by default; their `allow_bad_values=True` loads such tensors anyway (with a warning).
"""
from __future__ import annotations

import numpy as np

FLOAT_NAMES = ("float16", "float32", "float64", "bfloat16")


def value_problem(array) -> str | None:
  """None when `array` is floating and finite; else what is wrong, for an error line."""
  array = np.asarray(array)
  name = array.dtype.name
  if name not in FLOAT_NAMES:
    return f"dtype {name}, expected a floating type ({', '.join(FLOAT_NAMES)})"
  finite = np.isfinite(array if name != "bfloat16" else array.astype(np.float32))
  if not finite.all():
    values = array[~finite].astype(np.float32)
    nan, inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
    return f"non-finite values: {nan} NaN and {inf} Inf of {array.size}"
  return None


ALLOW_HINT = "pass allow_bad_values=True to load such weights anyway"


class WeightsError(ValueError):
  """A checkpoint does not fit the model: lists every problem at once."""
