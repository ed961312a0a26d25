"""Hub interop (trainkit/hub.py) with the hub mocked at the HTTP layer: no network, no torch.

huggingface_hub sends every request through one shared httpx2 client made by a factory that
`huggingface_hub.set_client_factory` replaces: here the client's transport is an `httpx2.MockTransport`
serving `FakeHub`, an in-memory hub with the endpoints huggingface_hub calls (repo info, tree listing,
file resolve, repo creation, preupload, commit). The offline switch is `huggingface_hub.constants.
HF_HUB_OFFLINE` (read from the environment once, at import; conftest.py sets HF_HUB_OFFLINE=1 for the
suite), patched per test, as is the cache folder `constants.HF_HUB_CACHE`.
"""
import base64
import hashlib
import json
import os
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

import comploss_jax
import tga_jax
from tga_jax.models.llama import LlamaConfig, LlamaForCausalLM
from tga_jax.weights import lvlm as lvlm_weights
from tga_jax.weights.known_models import resolve_model_path
from tga_jax.weights.llm import save_llm_hf
from trainkit import hub

huggingface_hub = pytest.importorskip("huggingface_hub")
httpx2 = pytest.importorskip("httpx2")  # the HTTP client of huggingface_hub >= 2
from huggingface_hub import constants  # noqa: E402
from huggingface_hub.utils._http import default_client_factory, hf_request_event_hook  # noqa: E402


class FakeHub:
  """Model repos in memory: {repo_id: {"refs": {name: sha}, "files": {path: bytes}}}; records every request."""

  def __init__(self):
    self.repos: dict[str, dict] = {}
    self.requests: list[tuple[str, str]] = []
    self.commits: list[list[dict]] = []
    self.down = False  # True: every request fails to connect

  def add(self, repo_id: str, files: dict[str, bytes], tags=()):
    sha = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
    self.repos[repo_id] = {"refs": {"main": sha, **{t: sha for t in tags}}, "files": dict(files)}

  def add_folder(self, repo_id: str, folder: str, extra: dict[str, bytes] | None = None, tags=()):
    files = {}
    for name in os.listdir(folder):
      with open(os.path.join(folder, name), "rb") as f:
        files[name] = f.read()
    self.add(repo_id, {**files, **(extra or {})}, tags)

  def paths(self, method: str | None = None) -> list[str]:
    return [path for m, path in self.requests if method in (None, m)]

  @staticmethod
  def _error(status: int, code: str):
    return httpx2.Response(status, headers={"X-Error-Code": code}, json={"error": code})

  def handle(self, request):
    path = request.url.path
    self.requests.append((request.method, path))
    if self.down:
      raise httpx2.ConnectError("connection refused", request=request)
    if path == "/api/repos/create" and request.method == "POST":
      body = json.loads(request.content)
      repo_id = f"{body['organization']}/{body['name']}"
      if repo_id not in self.repos:
        self.add(repo_id, {})
      return httpx2.Response(200, json={"url": f"https://huggingface.co/{repo_id}", "name": repo_id})
    parts = path.strip("/").split("/")
    api = parts[:2] == ["api", "models"]
    repo_id = "/".join(parts[2:4] if api else parts[0:2])
    if len(parts) < (6 if api else 5) or repo_id not in self.repos:
      return self._error(404, "RepoNotFound")
    repo = self.repos[repo_id]
    action, revision, rest = (parts[4], parts[5], parts[6:]) if api else (parts[2], parts[3], parts[4:])
    sha = repo["refs"].get(revision, revision if revision in repo["refs"].values() else None)
    if sha is None:
      return self._error(404, "RevisionNotFound")
    if action == "revision":
      return httpx2.Response(200, json={"id": repo_id, "sha": sha,
                                        "siblings": [{"rfilename": f} for f in sorted(repo["files"])]})
    if action == "tree":
      return httpx2.Response(200, json=[{"type": "file", "path": name, "size": len(data),
                                         "oid": hashlib.sha1(data).hexdigest()}
                                        for name, data in sorted(repo["files"].items())])
    if action == "resolve":
      name = "/".join(rest)
      if name not in repo["files"]:
        return self._error(404, "EntryNotFound")
      data = repo["files"][name]
      headers = {"ETag": f'"{hashlib.sha1(data).hexdigest()}"', "X-Repo-Commit": sha, "Content-Length": str(len(data))}
      return httpx2.Response(200, headers=headers, content=b"" if request.method == "HEAD" else data)
    if action == "preupload":
      files = json.loads(request.content)["files"]
      return httpx2.Response(200, json={"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                  for f in files]})
    if action == "commit":
      lines = [json.loads(line) for line in request.content.decode().splitlines() if line.strip()]
      self.commits.append(lines)
      for line in lines:
        if line["key"] == "file":
          repo["files"][line["value"]["path"]] = base64.b64decode(line["value"]["content"])
      new_sha = hashlib.sha1(repr(sorted(repo["files"].items())).encode()).hexdigest()
      repo["refs"][revision] = new_sha
      return httpx2.Response(200, json={"commitUrl": f"https://huggingface.co/{repo_id}/commit/{new_sha}",
                                        "commitOid": new_sha})
    return self._error(404, "EntryNotFound")


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
  """The hub online, served by a FakeHub; an empty cache; the working directory has no 'org' folder."""
  fake = FakeHub()
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
  monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
  monkeypatch.setenv("HF_TOKEN", "hf_test_token")
  monkeypatch.chdir(tmp_path)
  huggingface_hub.set_client_factory(lambda: httpx2.Client(
      transport=httpx2.MockTransport(fake.handle), event_hooks={"request": [hf_request_event_hook]},
      follow_redirects=True))
  yield fake
  huggingface_hub.set_client_factory(default_client_factory)


def _random_params(module, *inputs, seed=0):
  """Random params with the module's shapes, filled on the host (tracing init costs no compile)."""
  abstract = jax.eval_shape(module.init, jax.random.PRNGKey(0), *inputs)["params"]
  abstract = jax.tree.map(lambda x: getattr(x, "value", x), abstract,
                          is_leaf=lambda x: hasattr(x, "value") and hasattr(x, "names"))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda leaf: (0.02 * rng.standard_normal(leaf.shape)).astype(leaf.dtype), abstract)


def _assert_same_params(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def tiny_llm_folder(tmp_path_factory):
  """A random 2-layer LLaMA with a word-level tokenizer, saved as an HF folder."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast

  words = ["<unk>", "<s>", "</s>", "hello", "hub", "world"]
  backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  backend.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
  config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=8, max_position_embeddings=64)
  module = LlamaForCausalLM(config)
  params = _random_params(module, np.zeros((1, 4), np.int32))
  folder = str(tmp_path_factory.mktemp("tiny-llm"))
  save_llm_hf(module, params, folder, tokenizer=tokenizer)
  return folder


def test_repo_id_rule(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "runs").mkdir()
  (tmp_path / "model.gguf").write_bytes(b"GGUF")
  for text in ("org/tiny", "HuggingFaceTB/SmolLM2-135M-Instruct", "org/tiny@v1", "org/tiny@refs/pr/3",
               "org/tiny@" + "a" * 40, "llava-hf/llava-1.5-7b-hf"):
    assert hub.looks_like_repo_id(text), text
  for text in ("runs/x",  # 'runs/' is a local folder: a missing local path, not a repo id
               "model.gguf", "tiny", "/abs/org/tiny", "./org/tiny", "../org/tiny", "~/org/tiny", "org/tiny/extra",
               "org/tiny.json", "org/tiny.gguf", "org/model.safetensors", "org--x/tiny", "org/ti..ny", "-org/tiny",
               "org/tiny-", "org/tiny@", "org/tiny@/x", "org /tiny", ""):
    assert not hub.looks_like_repo_id(text), text
  assert hub.parse_repo_id("org/tiny@v1.0") == ("org/tiny", "v1.0")
  with pytest.raises(ValueError, match="without '@'"):
    hub.push_target("org/tiny@dev")


def test_local_paths_are_never_sent_to_the_hub(fake_hub, tmp_path):
  (tmp_path / "runs").mkdir()
  with pytest.raises(FileNotFoundError, match=r"'runs/x' is neither an existing path nor a known model name"):
    resolve_model_path("runs/x")
  with pytest.raises(FileNotFoundError, match="not a directory, and not one of the packaged models"):
    comploss_jax.load_encoder("runs/encoder")
  with pytest.raises(FileNotFoundError, match="expected a llava-hf folder"):
    tga_jax.load_lvlm("runs/lvlm.json")
  assert fake_hub.requests == []


def test_choose_files():
  meta = ["config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "chat_template.jinja"]
  assert hub.choose_files("o/n", meta + ["model.safetensors", "pytorch_model.bin", "model.gguf", "onnx/model.onnx",
                                         "1_Pooling/config.json", "README.md"], gguf=True) == \
      sorted(meta) + ["model.safetensors"]
  shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"]
  assert hub.choose_files("o/n", ["config.json", "consolidated.safetensors", "pytorch_model.bin.index.json"] + shards,
                          gguf=False) == ["config.json", "model.safetensors.index.json"] + shards[:2]
  assert hub.choose_files("o/n", ["config.json", "weights.safetensors"], gguf=False) == \
      ["config.json", "weights.safetensors"]
  assert hub.choose_files("o/n", ["README.md", "q4/m-Q4_K_M.gguf"], gguf=True) == ["q4/m-Q4_K_M.gguf"]
  with pytest.raises(ValueError, match=r"o/n at revision 'v2': no safetensors weights and 2 GGUF files "
                                       r".*--revision v2"):
    hub.choose_files("o/n", ["a-Q4_0.gguf", "a-Q8_0.gguf"], gguf=True, revision="v2")
  with pytest.raises(FileNotFoundError, match=r"o/n: no top-level safetensors weights in the repo .*pytorch_model.bin "
                                              r"is a pickle .*never downloaded"):
    hub.choose_files("o/n", ["config.json", "pytorch_model.bin", "a.gguf"], gguf=False)


def test_load_llm_and_tokenizer_from_a_repo_id(fake_hub, tiny_llm_folder, monkeypatch):
  fake_hub.add_folder("org/tiny", tiny_llm_folder, extra={"pytorch_model.bin": b"pickle", "model.gguf": b"GGUF"},
                      tags=("v1",))
  module, params = tga_jax.load_llm(tiny_llm_folder)
  hub_module, hub_params = tga_jax.load_llm("org/tiny")
  assert hub_module.config == module.config
  _assert_same_params(hub_params, params)
  got = [path.rsplit("/", 1)[-1] for path in fake_hub.paths("GET") if "/resolve/" in path]
  assert "model.safetensors" in got and "config.json" in got and "tokenizer.json" in got
  assert "pytorch_model.bin" not in got and "model.gguf" not in got

  tokenizer = tga_jax.load_tokenizer("org/tiny@v1")
  assert any("/tree/v1" in path for path in fake_hub.paths())
  assert tokenizer("hello hub world")["input_ids"] == tga_jax.load_tokenizer(tiny_llm_folder)("hello hub world")[
      "input_ids"] == [3, 4, 5]

  # Offline afterwards: served from the cache, nothing sent.
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
  sent = len(fake_hub.requests)
  _assert_same_params(tga_jax.load_llm("org/tiny")[1], params)
  # A cache filled file by file (as transformers does) has no tree listing: the snapshot folder serves.
  shutil.rmtree(os.path.join(constants.HF_HUB_CACHE, "models--org--tiny", "trees"))
  _assert_same_params(tga_jax.load_llm("org/tiny")[1], params)
  assert len(fake_hub.requests) == sent


def _tiny_encoder_folder(folder):
  """A random 1-layer BERT as an HF folder (config.json + model.safetensors in HF names)."""
  d, inner, vocab, positions = 16, 32, 40, 24
  config = {"model_type": "bert", "hidden_size": d, "num_attention_heads": 2, "num_hidden_layers": 1,
            "intermediate_size": inner, "vocab_size": vocab, "max_position_embeddings": positions,
            "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu"}
  shapes = {"embeddings.word_embeddings.weight": (vocab, d), "embeddings.position_embeddings.weight": (positions, d),
            "embeddings.token_type_embeddings.weight": (2, d), "embeddings.LayerNorm.weight": (d,),
            "embeddings.LayerNorm.bias": (d,)}
  layer = "encoder.layer.0."
  for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
    shapes[layer + name + ".weight"], shapes[layer + name + ".bias"] = (d, d), (d,)
  for name in ("attention.output.LayerNorm", "output.LayerNorm"):
    shapes[layer + name + ".weight"], shapes[layer + name + ".bias"] = (d,), (d,)
  shapes.update({layer + "intermediate.dense.weight": (inner, d), layer + "intermediate.dense.bias": (inner,),
                 layer + "output.dense.weight": (d, inner), layer + "output.dense.bias": (d,)})
  rng = np.random.default_rng(1)
  os.makedirs(folder)
  save_file({k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()},
            os.path.join(folder, "model.safetensors"))
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(config, f)
  return folder


def test_load_encoder_from_a_repo_id(fake_hub, tmp_path):
  folder = _tiny_encoder_folder(str(tmp_path / "bert"))
  fake_hub.add_folder("org/tiny-bert", folder)
  module, params = comploss_jax.load_encoder(folder)
  hub_module, hub_params = comploss_jax.load_encoder("org/tiny-bert")
  assert hub_module.config == module.config
  _assert_same_params(hub_params, params)


def _tiny_lvlm():
  hf = {"model_type": "llava", "image_token_index": 63, "vision_feature_layer": -2,
        "text_config": {"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
                        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                        "max_position_embeddings": 64},
        "vision_config": {"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
                          "num_attention_heads": 2, "image_size": 14, "patch_size": 7}}
  module = lvlm_weights.LlavaLVLM(lvlm_weights.config_from_hf(hf, "tiny llava config"))
  pixels = np.zeros((1, 1, 14, 14, 3), np.float32)
  return module, _random_params(module, np.zeros((1, 8), np.int32), pixels, seed=2)


def test_save_lvlm_hf_pushes_the_folder_and_loads_back(fake_hub, tmp_path):
  module, params = _tiny_lvlm()
  folder = str(tmp_path / "export")
  tga_jax.save_lvlm_hf(module, params, folder, push_to_hub="org/tiny-lvlm")
  posts = fake_hub.paths("POST")
  assert posts == ["/api/repos/create", "/api/models/org/tiny-lvlm/preupload/main",
                   "/api/models/org/tiny-lvlm/commit/main"], posts
  sent = {line["value"]["path"]: base64.b64decode(line["value"]["content"])
          for line in fake_hub.commits[-1] if line["key"] == "file"}
  assert sorted(sent) == sorted(os.listdir(folder)) == ["config.json", "model.safetensors", "preprocessor_config.json"]
  for name, data in sent.items():
    with open(os.path.join(folder, name), "rb") as f:
      assert f.read() == data, name

  local_module, local_params = tga_jax.load_lvlm(folder)
  hub_module, hub_params = tga_jax.load_lvlm("org/tiny-lvlm")
  assert hub_module.config == local_module.config
  _assert_same_params(hub_params, local_params)


def test_push_offline_or_unreachable_says_so_and_keeps_the_folder(fake_hub, tmp_path, monkeypatch):
  module, params = _tiny_lvlm()
  with pytest.raises(ValueError, match="without '@'"):
    tga_jax.save_lvlm_hf(module, params, str(tmp_path / "never"), push_to_hub="org/x@dev")
  assert not (tmp_path / "never").exists()
  fake_hub.down = True
  with pytest.raises(hub.HubUnavailableError, match=r"cannot push to org/up: the hub .* cannot be reached "
                                                    r"\(ConnectError.*hf upload org/up"):
    tga_jax.save_lvlm_hf(module, params, str(tmp_path / "a"), push_to_hub="org/up")
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
  sent = len(fake_hub.requests)
  with pytest.raises(hub.HubUnavailableError, match=r"cannot push to org/up: the hub is offline \(HF_HUB_OFFLINE=1\)"):
    tga_jax.save_lvlm_hf(module, params, str(tmp_path / "b"), push_to_hub="org/up")
  assert len(fake_hub.requests) == sent
  assert os.path.exists(tmp_path / "b" / "model.safetensors")


@pytest.mark.parametrize("load", [tga_jax.load_llm, tga_jax.load_lvlm, tga_jax.load_tokenizer,
                                  comploss_jax.load_encoder])
def test_offline_error_names_the_repo_and_the_fix(fake_hub, monkeypatch, load):
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
  with pytest.raises(hub.HubUnavailableError) as error:
    load("org/tiny@v2")
  message = str(error.value)
  for part in ("'org/tiny@v2' is not a local path", "Hugging Face repo id", "the hub is offline (HF_HUB_OFFLINE=1)",
               "org/tiny is not in the local hub cache", "hf download org/tiny --revision v2 --local-dir DIR",
               "pass DIR instead of the repo id"):
    assert part in message, message
  assert fake_hub.requests == []


def test_unreachable_missing_repo_and_gguf_repo(fake_hub, tiny_llm_folder, monkeypatch):
  # huggingface_hub retries a failed connection 5 times with backoff (1+2+4+8+8 s): no waiting here.
  monkeypatch.setattr("huggingface_hub.utils._http.time.sleep", lambda seconds: None)
  fake_hub.down = True
  with pytest.raises(hub.HubUnavailableError, match=r"'org/tiny' is not a local path.* cannot be reached "
                                                    r"\(ConnectError"):
    tga_jax.load_llm("org/tiny")
  fake_hub.down = False
  with pytest.raises(FileNotFoundError, match=r"'org/missing' is neither an existing local path nor a model repo"):
    tga_jax.load_llm("org/missing")
  fake_hub.add_folder("org/tiny", tiny_llm_folder)
  with pytest.raises(FileNotFoundError, match=r"'org/tiny@nope': the hub has org/tiny but no revision 'nope'"):
    tga_jax.load_llm("org/tiny@nope")
  fake_hub.add("org/tiny-gguf", {"README.md": b"hi", "tiny-Q8_0.gguf": b"GGUF-bytes", "model.bin": b"pickle"})
  path = hub.download_model("org/tiny-gguf", gguf=True)
  assert path.endswith("tiny-Q8_0.gguf") and open(path, "rb").read() == b"GGUF-bytes"
  assert not any(p.endswith(("model.bin", "README.md")) for p in fake_hub.paths() if "/resolve/" in p)
  with pytest.raises(FileNotFoundError, match="model.bin is a pickle"):
    comploss_jax.load_encoder("org/tiny-gguf")
