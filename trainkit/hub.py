"""The one place that talks to the Hugging Face Hub: a repo id -> a local model folder (or GGUF file), and uploads.

Callers: tga_jax's `resolve_model_path` (load_llm, load_tokenizer) and `load_lvlm`, comploss_jax's
`resolve_model_dir` (load_encoder), and `save_lvlm_hf(..., push_to_hub=...)`. `huggingface_hub` is
imported only when a repo id is actually used, so local loads never pay for it.

When is a string a repo id? (`looks_like_repo_id`) A path that exists is always a path, and the
packaged model names are checked before this. Otherwise the string is read as a repo id only if it is
`ORG/NAME` or `ORG/NAME@REVISION` where
  - ORG and NAME are hub names: letters, digits, '-', '_', '.', starting and ending with a letter or
    digit, no '--' or '..', at most 96 characters; exactly one '/' before the optional '@';
  - NAME does not end in a file extension of a local artefact (.json, .gguf, .safetensors, .bin, .pt,
    .pth, .ckpt, .npz, .msgpack, .txt, .yaml, .yml, .py);
  - ORG is not an existing local folder or file (so 'runs/x', with a 'runs/' folder here, is a missing
    local path, never a repo id).
Absolute paths, './x', '../x', '~/x' and 'a/b/c' are never repo ids. REVISION is a branch, tag, commit
hash or 'refs/pr/N'.

What is downloaded (`choose_files`): only top-level files; config/tokenizer files (*.json, *.txt,
*.model, *.jinja, *.tiktoken) and the weights as safetensors (`model.safetensors`, or its shards
`model-00001-of-00002.safetensors`-style names with `model.safetensors.index.json`; any top-level *.safetensors when
those names are absent). A repo without safetensors may be loaded from its GGUF file where the caller
takes one (tga_jax) and the repo holds exactly one. `.bin`/`.pt` pickles are never downloaded.

HF_HUB_OFFLINE=1 (read by huggingface_hub at import) is honoured: nothing is requested and the hub
cache (HF_HUB_CACHE, default ~/.cache/huggingface/hub) is used; a repo not in it raises
`HubUnavailableError` naming the repo and how to fix it. An unreachable hub falls back to the cache
in the same way.
"""
from __future__ import annotations

import glob
import os
import re

# A hub name (user, organisation or repo): see the module docstring.
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"(?P<repo>{_NAME}/{_NAME})(?:@(?P<revision>[A-Za-z0-9._/-]+))?")
LOCAL_SUFFIXES = (".json", ".gguf", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".npz", ".msgpack", ".txt",
                  ".yaml", ".yml", ".py")
METADATA_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".tiktoken")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_TRANSFORMERS_WEIGHTS = re.compile(r"model(?:-\d+-of-\d+)?\.safetensors")
OFFLINE = "the hub is offline (HF_HUB_OFFLINE=1)"


class HubUnavailableError(OSError):
  """A repo id was given but the hub is offline (HF_HUB_OFFLINE) or unreachable, and the cache lacks it."""


def parse_repo_id(text: str) -> tuple[str, str | None]:
  """'org/name' or 'org/name@revision' -> (repo_id, revision or None); ValueError for anything else."""
  match = _REPO_ID.fullmatch(text) if isinstance(text, str) else None
  if match is None or "--" in match["repo"] or ".." in match["repo"] or (match["revision"] or "").startswith("/"):
    raise ValueError(f"{text!r} is not a Hugging Face repo id: expected 'org/name' or 'org/name@revision' "
                     f"(letters, digits, '-', '_', '.')")
  return match["repo"], match["revision"]


def push_target(spec: str) -> str:
  """The repo id of `push_to_hub=spec` ('org/name'; pushes go to the main branch); ValueError otherwise."""
  repo_id, revision = parse_repo_id(spec)
  if revision:
    raise ValueError(f"push_to_hub={spec!r}: pushes go to the repo's main branch; pass 'org/name' without '@'")
  return repo_id


def looks_like_repo_id(path: str) -> bool:
  """True when `path` is not an existing path and reads as a repo id under the module docstring's rule."""
  if not isinstance(path, str) or os.path.exists(path):
    return False
  try:
    repo_id, _ = parse_repo_id(path)
  except ValueError:
    return False
  org, name = repo_id.split("/")
  return not name.lower().endswith(LOCAL_SUFFIXES) and not os.path.exists(org)


def choose_files(repo_id: str, files: list[str], gguf: bool, revision: str | None = None) -> list[str]:
  """The repo files to download (see the module docstring); raises when the repo has no usable weights."""
  where = repo_id + (f" at revision {revision!r}" if revision else "")
  at = f" --revision {revision}" if revision else ""
  top = sorted(f for f in files if "/" not in f)
  metadata = [f for f in top if f.endswith(METADATA_SUFFIXES) and ".bin." not in f]
  weights = [f for f in top if _TRANSFORMERS_WEIGHTS.fullmatch(f)] or [f for f in top if f.endswith(".safetensors")]
  if weights:
    return metadata + weights
  ggufs = sorted(f for f in files if f.lower().endswith(".gguf"))
  if gguf and len(ggufs) == 1:
    return ggufs
  if gguf and ggufs:
    shown = ", ".join(ggufs[:12]) + (f", ... ({len(ggufs) - 12} more)" if len(ggufs) > 12 else "")
    raise ValueError(f"{where}: no safetensors weights and {len(ggufs)} GGUF files ({shown}); a repo id loads "
                     f"a repo's only GGUF file. Download the one you want (`hf download {repo_id} FILE{at} "
                     f"--local-dir DIR`) and pass DIR/FILE")
  pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
  kinds = "safetensors weights" + (" or GGUF file" if gguf else "")
  hint = (f"; {', '.join(pickles[:4])} {'is a pickle' if len(pickles) == 1 else 'are pickles'} (able to run code "
          f"when loaded), never downloaded: pick a revision with model.safetensors, e.g. the hub's conversion "
          f"branch '{repo_id}@refs/pr/N'") if pickles else ""
  raise FileNotFoundError(f"{where}: no top-level {kinds} in the repo (files: {sorted(files)[:20]}){hint}")


def _transport_errors() -> tuple[type[BaseException], ...]:
  """Exception types meaning 'the hub cannot be reached' for the HTTP client huggingface_hub uses."""
  from huggingface_hub.errors import OfflineModeIsEnabled
  try:
    import httpx2 as http  # huggingface_hub >= 2
  except ImportError:
    import httpx as http  # huggingface_hub 1.x
  return (http.TransportError, OfflineModeIsEnabled)


def _cache_dir() -> str:
  from huggingface_hub import constants
  return constants.HF_HUB_CACHE


def _cached_files(repo_id: str, revision: str | None) -> list[str] | None:
  """The repo's file list as the local hub cache knows it (no network), or None when it is not cached."""
  from huggingface_hub import get_cached_repo_tree
  from huggingface_hub.errors import CachedRepoTreeNotFoundError

  try:
    return [f.path for f in get_cached_repo_tree(repo_id, revision=revision)]
  except CachedRepoTreeNotFoundError:
    pass
  # Cached by per-file downloads (e.g. transformers): no tree listing, but the snapshot folder has the files.
  storage = os.path.join(_cache_dir(), "models--" + repo_id.replace("/", "--"))
  commit = revision
  if not (revision and re.fullmatch(r"[0-9a-f]{40}", revision)):
    ref = os.path.join(storage, "refs", revision or "main")
    if not os.path.isfile(ref):
      return None
    with open(ref) as f:
      commit = f.read().strip()
  snapshot = os.path.join(storage, "snapshots", commit)
  if not os.path.isdir(snapshot):
    return None
  found = []
  for root, _, names in os.walk(snapshot):
    found += [os.path.relpath(os.path.join(root, n), snapshot).replace(os.sep, "/") for n in names]
  return found or None


def _unavailable(spec: str, repo_id: str, revision: str | None, why: str) -> HubUnavailableError:
  at = f" --revision {revision}" if revision else ""
  return HubUnavailableError(
      f"{spec!r} is not a local path, so it was read as a Hugging Face repo id, but {why}, and {repo_id} is not "
      f"in the local hub cache ({_cache_dir()}). To fix: on a machine with network access, download the model "
      f"folder (config, tokenizer and *.safetensors files, e.g. `hf download {repo_id}{at} --local-dir DIR`) and "
      f"pass DIR instead of the repo id; or, where the hub is reachable, unset HF_HUB_OFFLINE and retry")


def download_model(spec: str, *, gguf: bool = True) -> str:
  """A repo id ('org/name[@revision]') -> the local snapshot folder, or the GGUF file for a GGUF-only repo.

  Args:
    gguf: whether the caller loads a GGUF file (tga_jax's LLM loader and tokenizer do; encoders don't).
  Raises:
    HubUnavailableError: offline or unreachable, and not cached.
    FileNotFoundError: no such repo or revision, or no safetensors/GGUF weights in it.
    PermissionError: a gated or private repo without a token that may read it.
  """
  from huggingface_hub import HfApi, constants, snapshot_download
  from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                      RepositoryNotFoundError, RevisionNotFoundError)

  repo_id, revision = parse_repo_id(spec)
  unreachable = _transport_errors()
  files, why = None, None
  if constants.is_offline_mode():
    why = OFFLINE
  else:
    try:
      files = HfApi().list_repo_files(repo_id, revision=revision)
    except unreachable as e:
      why = f"the hub ({constants.ENDPOINT}) cannot be reached ({type(e).__name__}: {e})"
    except GatedRepoError as e:
      raise PermissionError(f"{repo_id} is a gated repo: accept its terms on the hub, then log in (`hf auth login`) "
                            f"or set HF_TOKEN") from e
    except RevisionNotFoundError as e:
      raise FileNotFoundError(f"{spec!r}: the hub has {repo_id} but no revision {revision!r}") from e
    except RepositoryNotFoundError as e:
      raise FileNotFoundError(f"{spec!r} is neither an existing local path nor a model repo on the hub "
                              f"({constants.ENDPOINT}/{repo_id} not found; a private repo needs `hf auth login` "
                              f"or HF_TOKEN)") from e
    except HfHubHTTPError as e:
      status = _http_status(e)
      if status in (401, 403):
        raise PermissionError(f"{repo_id}: the hub refused access (HTTP {status}); log in (`hf auth login`) or set "
                              f"HF_TOKEN") from e
      why = f"the hub answered HTTP {status} ({e})"
  from_cache = files is None
  if from_cache:
    files = _cached_files(repo_id, revision)
    if files is None:
      raise _unavailable(spec, repo_id, revision, why)
  chosen = choose_files(repo_id, files, gguf, revision)
  try:
    folder = snapshot_download(repo_id, revision=revision, allow_patterns=[glob.escape(f) for f in chosen],
                               local_files_only=from_cache)
  except LocalEntryNotFoundError as e:  # cached in part only, or the connection dropped mid-way
    raise _unavailable(spec, repo_id, revision, why or f"the download failed ({e})") from e
  except unreachable as e:
    why = f"the hub ({constants.ENDPOINT}) cannot be reached ({type(e).__name__}: {e})"
    raise _unavailable(spec, repo_id, revision, why) from e
  if len(chosen) == 1 and chosen[0].lower().endswith(".gguf"):
    return os.path.join(folder, chosen[0])
  return folder


def upload_folder(folder: str, spec: str, *, commit_message: str | None = None, private: bool | None = None) -> str:
  """Uploads every file of `folder` to the model repo `spec` ('org/name'), creating the repo if needed.

  Returns the commit's URL. Raises HubUnavailableError offline/unreachable (the folder stays as it is),
  PermissionError without a token that may write to the repo.
  """
  from huggingface_hub import HfApi, constants
  from huggingface_hub.errors import HfHubHTTPError

  repo_id = push_target(spec)
  later = f"the folder {folder} is written; upload it later with `hf upload {repo_id} {folder}`"
  if constants.is_offline_mode():
    raise HubUnavailableError(f"cannot push to {repo_id}: {OFFLINE}; {later}, or unset HF_HUB_OFFLINE "
                              f"and save again")
  api = HfApi()
  try:
    api.create_repo(repo_id, exist_ok=True, private=private)
    info = api.upload_folder(repo_id=repo_id, folder_path=folder,
                             commit_message=commit_message or f"Upload {os.path.basename(os.path.abspath(folder))}")
  except _transport_errors() as e:
    raise HubUnavailableError(f"cannot push to {repo_id}: the hub ({constants.ENDPOINT}) cannot be reached "
                              f"({type(e).__name__}: {e}); {later}") from e
  except HfHubHTTPError as e:
    status = _http_status(e)
    if status in (401, 403):
      raise PermissionError(f"cannot push to {repo_id}: the hub refused (HTTP {status}); log in with a write "
                            f"token (`hf auth login`) or set HF_TOKEN; {later}") from e
    raise
  return str(getattr(info, "commit_url", None) or f"{constants.ENDPOINT}/{repo_id}")


def _http_status(error) -> int | None:
  """The HTTP status of a huggingface_hub HTTP error (None when it carries no response)."""
  return error.response.status_code if error.response is not None else None
