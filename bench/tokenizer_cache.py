"""CPU seconds to get SmolLM2's tokenizer from its packaged GGUF file: rebuilt from the file's metadata
(`gguf_tokenizer`, what every process paid before the cache) vs read back from the cache folder
(`load_tokenizer`, every process after the first). Each in a fresh process, so nothing is shared.

    python bench/tokenizer_cache.py
"""
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "smollm2-135m-instruct"
TIMED = """
import sys, time
import tokenizers, transformers  # imported before the clock: both paths need them
from transformers import PreTrainedTokenizerFast
from tga_jax.data import tokenizer as t
from tga_jax.weights.known_models import resolve_model_path
path = resolve_model_path({name!r})
start = time.process_time()
tok = t.gguf_tokenizer(path) if sys.argv[1] == "rebuild" else t.load_tokenizer(path)
print(time.process_time() - start, len(tok("Hello world!")["input_ids"]))
"""


def cpu_seconds(mode: str, cache: str) -> float:
  env = dict(os.environ, TGA_JAX_CACHE=cache, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, "-c", TIMED.format(name=NAME), mode], env=env, capture_output=True,
                       text=True, check=True).stdout.split()
  return float(out[0])


def main() -> None:
  with tempfile.TemporaryDirectory() as cache:
    rebuild = cpu_seconds("rebuild", cache)
    cpu_seconds("cached", cache)  # the first load_tokenizer builds and saves the folder
    cached = cpu_seconds("cached", cache)
  print(f"{NAME} tokenizer, CPU seconds in a fresh process: rebuilt from the GGUF {rebuild:.2f}, "
        f"from the cache folder {cached:.2f} ({rebuild / cached:.0f}x less)")


if __name__ == "__main__":
  main()
