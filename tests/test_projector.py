"""Projector types from config: 'linear' and 'mlp<N>x_gelu' (exact GELU between the linears)."""
import math

import flax.linen as nn
import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from tga_jax.weights.lvlm import read_projector
from tga_jax.models.projector import Projector, ProjectorConfig, projector_depth


def test_depth_and_numerics():
  assert [projector_depth(k) for k in ("linear", "mlp1x_gelu", "mlp2x_gelu", "mlp3x_gelu")] == [1, 1, 2, 3]
  with pytest.raises(ValueError, match="projector type 'mlp2x_relu'"):
    ProjectorConfig("mlp2x_relu")
  x = np.random.RandomState(0).randn(2, 5, 6).astype(np.float32)
  module = Projector(ProjectorConfig("mlp3x_gelu", 6, 8))
  params = jax.tree.map(np.asarray, nn.meta.unbox(module.init(jax.random.PRNGKey(0), x)["params"]))
  assert sorted(params) == ["linear_1", "linear_2", "linear_3"]
  assert params["linear_1"]["kernel"].shape == (6, 8) and params["linear_3"]["kernel"].shape == (8, 8)
  gelu = lambda v: 0.5 * v * (1 + np.vectorize(math.erf)(v / np.sqrt(2)))  # noqa: E731
  h = x @ params["linear_1"]["kernel"] + params["linear_1"]["bias"]
  for i in (2, 3):
    h = gelu(h) @ params[f"linear_{i}"]["kernel"] + params[f"linear_{i}"]["bias"]
  out, aux = module.apply({"params": params}, x)
  assert aux == {}
  np.testing.assert_allclose(np.asarray(out), h, atol=1e-5)


def test_llava_projector_file_names(tmp_path):
  path = str(tmp_path / "mm_projector.safetensors")
  tensors = {f"model.mm_projector.{i}.{kind}": np.zeros((8, 6 if i == 0 else 8) if kind == "weight" else (8,),
                                                         np.float32)
             for i in (0, 2, 4) for kind in ("weight", "bias")}
  save_file(tensors, path)
  named, kind = read_projector(path)
  assert kind == "mlp3x_gelu" and sorted(named) == [f"linear_{i}.{k}" for i in (1, 2, 3) for k in ("bias", "weight")]
  save_file({"mm_projector.0.weight": np.zeros((8, 6), np.float32), "other.weight": np.zeros(2, np.float32)}, path)
  with pytest.raises(ValueError, match=r"unexpected: \['other.weight'\]"):
    read_projector(path)
