"""Every config file loads, every sweep() point applies to its config, and the mesh sizes resolve."""
import glob
import os

import pytest

from trainkit.config_files import apply_overrides, load_config_module
from trainkit.mesh import resolve_mesh_shape

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*", "*.py"))
                 if not p.endswith(("common.py", "__init__.py")))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_and_its_sweep(path):
  module = load_config_module(path)
  config = module.get_config("")
  config.lock()
  grid = module.sweep("") if module.sweep.__code__.co_argcount else module.sweep()
  assert grid
  for point in grid:
    apply_overrides(module.get_config(""), point)
  resolvable = []
  for devices in (8, 32):  # one 8-GPU node / 8 simulated devices, a 32-chip pod slice
    try:
      resolvable.append(resolve_mesh_shape(dict(config.mesh), devices))
    except ValueError:
      pass
  assert resolvable, f"{path}: mesh {dict(config.mesh)} fits neither 8 nor 32 devices"
  with pytest.raises(Exception):
    config.no_such_field = 1  # locked


@pytest.mark.parametrize("module, config", [("tga_jax.train", "configs/tga/tiny.py:stage=1"),
                                            ("comploss_jax.train", "configs/comploss/bbc.py")])
def test_trainer_cli_rejects_a_misspelt_override(tmp_path, module, config):
  import subprocess
  import sys
  result = subprocess.run([sys.executable, "-m", module, f"--config={config}", f"--workdir={tmp_path}",
                           "--config.optimizer.learning_rat=1"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode != 0 and "learning_rat" in result.stderr
