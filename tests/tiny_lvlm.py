"""A tiny random LVLM saved as a `tga_jax.train` workdir (params/ only), for the analysis/evaluation tests."""
import os

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from tga_jax.safety.eval_inputs import build_from_config


def random_params(module, seed: int = 0) -> dict:
  """Random params of an LVLM module, filled on the host from the abstract shapes (normal(0.02) weights,
  unit norm scales, zero biases): tracing init costs a second where compiling it would cost ten on a busy
  2-core machine."""
  vision = module.config.vision
  ids = np.zeros((1, 8), np.int32)
  pixels = np.zeros((1, 1, vision.image_size, vision.image_size, 3), np.float32)
  abstract = nn.meta.unbox(jax.eval_shape(module.init, jax.random.PRNGKey(0), ids, pixels)["params"])
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    if "scale" in name:
      return np.ones(leaf.shape, leaf.dtype)
    if "bias" in name:
      return np.zeros(leaf.shape, leaf.dtype)
    return (0.02 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def save_random_workdir(workdir: str, seed: int = 0) -> str:
  """Random params of configs/tga/tiny.py (`random_params`) exported as `<workdir>/params`, as tga_jax.train
  exports them."""
  module = build_from_config("configs/tga/tiny.py")[0]  # cached: the tokenizer loads once per session
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(os.path.abspath(workdir), "params"), random_params(module, seed), force=True)
  checkpointer.wait_until_finished()
  return workdir
