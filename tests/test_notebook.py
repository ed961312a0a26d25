"""notebooks/quickstart.ipynb runs headless: its code cells (less the Colab install cell) as one script."""
import json
import os
import subprocess
import sys

import pytest

from launch.local import without_device_count

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "quickstart.ipynb")


def notebook_script(path: str) -> str:
  """The code cells joined in order, skipping cells tagged 'install' (pip / git lines need a shell)."""
  cells = json.load(open(path))["cells"]
  code = ["".join(c["source"]) for c in cells
          if c["cell_type"] == "code" and "install" not in c.get("metadata", {}).get("tags", [])]
  assert not any(line.lstrip().startswith(("!", "%")) for block in code for line in block.splitlines()), \
      "shell and magic lines belong in the install cell only"
  return "\n\n".join(code) + "\n"


def test_only_the_install_cell_is_skipped():
  cells = [c for c in json.load(open(NOTEBOOK))["cells"] if c["cell_type"] == "code"]
  skipped = [c for c in cells if "install" in c.get("metadata", {}).get("tags", [])]
  assert len(skipped) == 1 and "pip install" in "".join(skipped[0]["source"])
  compile(notebook_script(NOTEBOOK), NOTEBOOK, "exec")


@pytest.mark.slow
def test_quickstart_notebook_runs_headless(tmp_path):
  script = tmp_path / "quickstart.py"
  script.write_text(notebook_script(NOTEBOOK))
  # Like a Colab CPU runtime: one device (not the suite's 8 simulated ones), offline. XLA_FLAGS keeps the
  # session's compile settings (tests/conftest.py) less any device count.
  flags = without_device_count(os.environ.get("XLA_FLAGS", ""))
  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1", XLA_FLAGS=flags,
             MPLBACKEND="Agg", QUICKSTART_WORKDIR=str(tmp_path / "runs"), PYTHONPATH=ROOT)
  result = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  out = result.stdout
  assert "most likely next tokens:" in out and "cosine similarities:" in out
  assert "TGA stage 1:" in out and "comparative loss, dev:" in out
  plots = [line.split("plot: ", 1)[1] for line in out.splitlines() if line.startswith("plot: ")]
  assert {os.path.basename(p) for p in plots} >= {"cosine.png", "attention.png", "refusal_prob.png", "losses.png"}
  assert all(os.path.getsize(p) > 1000 for p in plots)
