"""The GGUF tokenizer is rebuilt once and then read from the cache folder: the same ids, special tokens
and chat template as the rebuild, without rebuilding."""
import os

from tga_jax.data import tokenizer as tokenization
from tga_jax.weights.known_models import resolve_model_path

TEXTS = ["Hello world!", "naïve café — “quotes” 日本語 😀", "<|im_start|>user\nhi<|im_end|>\n", "x<|endoftext|>y", ""]


def test_gguf_tokenizer_is_rebuilt_once_then_read_from_the_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("TGA_JAX_CACHE", str(tmp_path / "cache"))
  path = resolve_model_path("smollm2-135m-instruct")
  rebuilt = tokenization.load_tokenizer(path)
  folders = os.listdir(tmp_path / "cache" / "gguf_tokenizers")
  assert len(folders) == 1 and folders[0].startswith(os.path.basename(path))  # no staging folder left behind
  def no_rebuild(path):
    raise AssertionError(f"rebuilt {path} although its cached folder exists")
  monkeypatch.setattr(tokenization, "gguf_tokenizer", no_rebuild)
  cached = tokenization.load_tokenizer("smollm2-135m-instruct")
  for text in TEXTS:
    assert cached(text)["input_ids"] == rebuilt(text)["input_ids"], text
  assert cached.special_tokens_map == rebuilt.special_tokens_map
  messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
  assert cached.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
      rebuilt.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_an_unwritable_cache_only_costs_the_rebuild(tmp_path, monkeypatch):
  blocked = tmp_path / "file"
  blocked.write_text("a file where the cache folder would go")
  monkeypatch.setenv("TGA_JAX_CACHE", str(blocked))
  tokenizer = tokenization.load_tokenizer("smollm2-135m-instruct")
  assert tokenizer("Hello world!")["input_ids"]


def test_processes_starting_together_build_it_once(tmp_path, monkeypatch):
  """Callers that miss the cache at the same time take turns on a lock: one builds, the rest read its folder.
  (Threads stand in for processes: each opens the lock file itself, and flock excludes open files.)"""
  import threading
  import time
  monkeypatch.setenv("TGA_JAX_CACHE", str(tmp_path / "cache"))
  path = resolve_model_path("smollm2-135m-instruct")
  real, builds = tokenization.gguf_tokenizer, []

  def slow_build(p):
    builds.append(p)
    time.sleep(0.5)  # long enough for every other caller to reach the lock
    return real(p)
  monkeypatch.setattr(tokenization, "gguf_tokenizer", slow_build)
  results = [None] * 3
  threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, tokenization.load_tokenizer(path)))
             for i in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert len(builds) == 1
  assert all(r("Hello world!")["input_ids"] == results[0]("Hello world!")["input_ids"] for r in results)
