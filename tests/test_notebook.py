"""notebooks/quickstart.ipynb runs headless: its code cells (less the Colab install cell) as one script, in a
process where `import torch` fails. The run-time install has no torch (it is a test extra), so the same
process then takes the run-time paths the notebook does not: generation and the analysis and evaluation
CLIs. With the notebook's own steps (SmolLM2's tokenizer and LLM from the packaged GGUF, a TGA stage,
the analysis, a comparative-loss run on BBC News) every run-time path runs without torch, in one process
(two would each pay the imports and the compiles)."""
import json
import os
import subprocess
import sys

import pytest

from launch.local import without_device_count

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "quickstart.ipynb")


# Before the notebook: `import torch` raises ModuleNotFoundError from here on (transformers sees no torch).
NO_TORCH = 'import sys\nsys.modules["torch"] = None\n\n'

# After the notebook, with its names (tokenizer, tga_dir, WORKDIR). Generation runs on a 2-layer LLaMA
# with SmolLM2's vocabulary: the same code as on SmolLM2 (whose GGUF weights the notebook loaded and ran),
# without compiling a 30-layer decoder twice more (~18 CPU-s).
RUNTIME_PATHS = """
import flax.linen as nn
from tga_jax.safety import evaluate
small = tga_jax.LlamaForCausalLM(tga_jax.LlamaConfig(
    vocab_size=llm.config.vocab_size, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
    num_kv_heads=1, head_dim=16, tie_word_embeddings=True, eos_token_id=llm.config.eos_token_id))
small_params = nn.meta.unbox(jax.jit(small.init)(jax.random.PRNGKey(0), np.zeros((1, 4), np.int32))["params"])
runtime = {"generate": tga_jax.generate(small, small_params, tokenizer, ["What is 2 + 2?"], 4, chat=True)[0]}
analyze.main([f"--model=tiny={tga_dir}", "--data=procedural:n=7,seed=777", f"--out={WORKDIR}/analysis_cli",
              "--batch-size=8"])
runtime["analysis_models"] = sorted(json.load(open(f"{WORKDIR}/analysis_cli/analysis.json"))["models"])
evaluate.main([f"--model=tiny={tga_dir}", "--data=procedural:n=7,seed=5", f"--out={WORKDIR}/eval_cli",
               "--max-new-tokens=2", "--batch-size=8", "--conditions=image"])
runtime["eval_models"] = sorted(json.load(open(f"{WORKDIR}/eval_cli/eval.json"))["models"])
runtime["torch_loaded"] = sys.modules.get("torch") is not None
print("RUNTIME " + json.dumps(runtime))
"""


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
def test_quickstart_notebook_and_the_runtime_paths_run_headless_without_torch(tmp_path):
  script = tmp_path / "quickstart.py"
  script.write_text(NO_TORCH + notebook_script(NOTEBOOK) + RUNTIME_PATHS)
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
  runtime = json.loads(next(line for line in out.splitlines() if line.startswith("RUNTIME "))[len("RUNTIME "):])
  assert isinstance(runtime["generate"], str) and runtime["generate"].strip()
  assert runtime["analysis_models"] == ["tiny"] and runtime["eval_models"] == ["tiny"]
  assert runtime["torch_loaded"] is False
