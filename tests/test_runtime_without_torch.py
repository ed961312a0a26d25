"""The run-time install has no torch (it is a test extra): every run-time path must work without it.

One subprocess in which `import torch` fails (sys.modules['torch'] = None, so transformers also sees no
torch) loads the SmolLM2 tokenizer and LLM from the packaged GGUF, generates, trains a tiny TGA stage,
runs the analysis and evaluation CLIs on it, and trains a comparative-loss step on BBC News.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import json, os, sys
    sys.modules["torch"] = None  # `import torch` raises ModuleNotFoundError from here on
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    out, report = sys.argv[1], {}

    import tga_jax
    tokenizer = tga_jax.load_tokenizer("smollm2-135m-instruct")
    module, params = tga_jax.load_llm("smollm2-135m-instruct")
    report["generate"] = tga_jax.generate(module, params, tokenizer, ["What is 2 + 2?"], 4, chat=True)[0]
    del params

    from trainkit.config_files import load_config
    from tga_jax.train import train
    config = load_config("configs/tga/tiny.py:stage=1,steps=2")
    config.progress_bar = False
    config.eval_batches = 1
    stage = os.path.join(out, "stage1")
    report["tga_stage1_steps"] = train(config, stage)["final_step"]

    from tga_jax.safety import analyze, evaluate
    analyze.main([f"--model=tiny={stage}", "--data=procedural:n=7,seed=3", f"--out={out}/analysis",
                  "--batch-size=8"])
    report["analysis_models"] = sorted(json.load(open(f"{out}/analysis/analysis.json"))["models"])
    evaluate.main([f"--model=tiny={stage}", "--data=procedural:n=7,seed=5", f"--out={out}/eval",
                   "--max-new-tokens=2", "--batch-size=8", "--conditions=image"])
    report["eval_models"] = sorted(json.load(open(f"{out}/eval/eval.json"))["models"])

    from comploss_jax.train import train as train_comploss
    config = load_config("configs/comploss/tiny.py:train_size=16")
    config.progress_bar = False
    config.total_steps = 2
    report["comploss"] = sorted(train_comploss(config, os.path.join(out, "comploss")))

    report["torch_loaded"] = sys.modules.get("torch") is not None
    print("REPORT " + json.dumps(report))
""")


@pytest.mark.slow
def test_runtime_paths_work_where_import_torch_fails(tmp_path):
  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", TFDS_DATA_DIR=str(tmp_path / "tfds"))
  proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  line = next(line for line in proc.stdout.splitlines() if line.startswith("REPORT "))
  report = json.loads(line[len("REPORT "):])
  assert isinstance(report["generate"], str) and report["generate"].strip()
  assert report["tga_stage1_steps"] == 2
  assert report["analysis_models"] == ["tiny"] and report["eval_models"] == ["tiny"]
  assert "dev" in report["comploss"]
  assert report["torch_loaded"] is False
