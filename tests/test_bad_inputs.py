"""Hostile inputs (issue 19): each gives an error of a stated type whose message names the file, field or
record at fault, or is counted and skipped with the record named -- never a raw traceback, never a silent
default. Data roots, the workdir lock, damaged checkpoints, config and weights validation, LLaVA records,
launcher quoting. All fixtures are tiny and built here, so the file runs in seconds."""
import json
import logging
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

import trainkit
from comploss_jax import encoder_params
from comploss_jax.encoder import EncoderConfig
from launch import tpu_pod
from tga_jax import annotate
from tga_jax.data import llava
from tga_jax.models.image_config import ImageProcessingConfig
from tga_jax.models.llama import LlamaConfig
from tga_jax.safety import eval_inputs
from tga_jax.weights import clip as clip_weights
from tga_jax.weights import llama as llama_weights
from tga_jax.weights import lvlm as lvlm_weights
from tga_jax.weights.llm import load_llm
from tga_jax.weights.safetensors_io import WeightsError, read_safetensors_folder
from trainkit.checkpoint import CheckpointError, Checkpointer
from trainkit.json_fields import ConfigError
from trainkit.paths import OutsideRoot, inside_root
from trainkit.tensor_checks import value_problem
from trainkit.workdir_lock import LOCK_NAME, WorkdirLock, WorkdirLocked, holds_workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------- data roots

@pytest.fixture
def data_root(tmp_path):
  """root/images/ok.png, a secret file beside root, and a symlink inside root pointing at it."""
  root = tmp_path / "root"
  (root / "images").mkdir(parents=True)
  Image.new("RGB", (4, 4), (200, 10, 10)).save(root / "images" / "ok.png")
  outside = tmp_path / "outside"
  outside.mkdir()
  Image.new("RGB", (4, 4)).save(outside / "secret.png")
  os.symlink(outside / "secret.png", root / "images" / "link.png")
  os.symlink(outside, root / "images" / "linkdir")
  return root


@pytest.mark.parametrize("path", ["../outside/secret.png", "images/../../outside/secret.png",
                                  "../../../../etc/passwd", "/etc/passwd", "images/link.png",
                                  "images/linkdir/secret.png"])
def test_paths_from_data_stay_inside_their_root(data_root, path):
  with pytest.raises(OutsideRoot) as error:
    inside_root(str(data_root), path, "image")
  assert repr(path) in str(error.value) and "outside its root" in str(error.value)


@pytest.mark.parametrize("path", [12345, "", None])
def test_a_path_that_is_no_string_is_a_type_error_naming_it(data_root, path):
  with pytest.raises(TypeError, match=f"image path must be a non-empty string, found {path!r}"):
    inside_root(str(data_root), path, "image")


def test_a_path_inside_the_root_resolves(data_root):
  assert inside_root(str(data_root), "images/./ok.png") == os.path.realpath(data_root / "images" / "ok.png")


# -------------------------------------------------------------------------------------------- LLaVA records

def _record(rid="r", image="images/ok.png", **fields):
  record = {"id": rid, "image": image, "image_caption": "a red square",
            "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "red"}]}
  record.update(fields)
  return {k: v for k, v in record.items() if v is not ...}


@pytest.mark.parametrize("record, kind, names", [
    (_record(image=12345), "bad image field", "12345"),
    (_record(image=[1, 2]), "bad image field", "[1, 2]"),
    (_record(image={"path": "x.png"}), "bad image field", "'path'"),
    (_record(image="../outside/secret.png"), "image outside root", "../outside/secret.png"),
    (_record(image="/etc/passwd"), "image outside root", "/etc/passwd"),
    (_record(image="../../../../etc/passwd"), "image outside root", "etc/passwd"),
    (_record(image="images/link.png"), "image outside root", "images/link.png"),
    (_record(image="images/none.png"), "missing image", "images/none.png"),
    (_record(image="images/broken.png"), "undecodable image", "images/broken.png"),
    (_record(image_caption=5), "bad image_caption", "5"),
    (_record(retrieved_caption={"text": "x"}), "bad retrieved_caption", "'text'"),
    (_record(conversations=[]), "empty conversation", "conversations"),
    (_record(conversations=[{"from": "human", "value": 7}]), "bad turn", "conversations[0]"),
    (_record(conversations=[{"from": "robot", "value": "<image> hi"}]), "bad turn", "'robot'"),
    (_record(image=...), "image count", "1 <image> placeholder(s) but 0 image(s)"),
    (["not", "a", "record"], "not an object", "list"),
])
def test_llava_record_problems_name_their_kind_and_value(data_root, record, kind, names):
  (data_root / "images" / "broken.png").write_bytes(b"garbage")
  problem, images = llava.record_problem(record, str(data_root))
  assert problem.startswith(kind + ":") and names in problem and images == []


def test_llava_record_with_a_null_caption_is_usable_and_captionless(data_root):
  problem, images = llava.record_problem(_record(image_caption=None), str(data_root))
  assert problem == "" and images[0].shape == (4, 4, 3)


def _write_json(path, records):
  with open(path, "w") as f:
    json.dump(records, f)
  return str(path)


def test_llava_dataset_counts_logs_and_skips_bad_records_by_id(data_root, tmp_path, caplog):
  caplog.set_level(logging.WARNING)
  records = [_record("good"), _record("nullcap", image_caption=None), _record("number", image=12345),
             _record("escape", image="../outside/secret.png"), _record("gone", image="images/none.png")]
  path = _write_json(data_root / "data.json", records)
  source = llava.prepared(llava.LlavaJson(json_path=path, data_dir=str(tmp_path / "tfds"), file_format=llava.FILE_FORMAT))["train"]
  by_id = {source[i]["id"].decode(): source[i] for i in range(len(source))}
  assert by_id["nullcap"]["image_caption"] == b"" and by_id["nullcap"]["problem"] == b""  # not "None"
  assert len(by_id["escape"]["images"]) == 0  # the file outside the root was never read
  counter = trainkit.SkipCounter()
  parse = trainkit.data.skipping(llava.make_parse(None, None, llava.ExampleSpec(template="vicuna_v1", stage=2)),
                                 counter)
  skipped = [by_id[rid] for rid in ("number", "escape", "gone")]
  assert [parse(r) for r in skipped] == [None, None, None]
  assert counter.counts == {"bad image field": 1, "image outside root": 1, "missing image": 1}
  for rid in ("number", "escape", "gone"):
    assert f"record {rid}" in caplog.text


@pytest.mark.parametrize("records, message", [
    ([], "the list of records is empty"),
    ([_record("a", image=12345), _record("b", image="/etc/passwd")], "none of its 2 record(s) is usable"),
    ({"id": "x"}, "expected a JSON list of records, got dict"),
])
def test_llava_dataset_without_usable_records_is_an_error_naming_the_file(data_root, tmp_path, records, message):
  path = _write_json(data_root / "bad.json", records)
  with pytest.raises(ValueError) as error:
    llava.prepared(llava.LlavaJson(json_path=path, data_dir=str(tmp_path / "tfds"), file_format=llava.FILE_FORMAT))
  assert path in str(error.value) and message in str(error.value)


class _FakeRetriever:
  """annotate() needs embed_images and index.search_texts; a constant answer serves."""

  class index:  # noqa: N801
    @staticmethod
    def search_texts(queries, k):
      return [["a red square"]] * len(queries)

  @staticmethod
  def embed_images(images):
    return np.ones((len(images), 2), np.float32)


def test_annotate_counts_and_skips_records_whose_image_is_bad_or_outside(data_root, caplog):
  caplog.set_level(logging.WARNING)
  records = [_record("good"), _record("number", image=12345), _record("escape", image="../outside/secret.png"),
             _record("abs", image="/etc/passwd"), _record("nullcap", image_caption=None)]
  report = annotate.annotate(records, _FakeRetriever(), str(data_root))
  assert report["annotated"] == 2 and report["unreadable_images"] == {"bad image field": 1, "image outside root": 2}
  assert "retrieved_caption" not in records[2] and records[4]["retrieved_caption"] == "a red square"
  assert "record escape" in caplog.text and "record number" in caplog.text


def test_eval_pairs_skip_bad_records_and_count_them(data_root, caplog):
  caplog.set_level(logging.WARNING)
  (data_root / "images" / "broken.png").write_bytes(b"garbage")
  records = [_record("good"), _record("number", image=12345), _record("escape", image="../outside/secret.png"),
             _record("broken", image="images/broken.png"), _record("capnum", image_caption=5)]
  path = _write_json(data_root / "pairs.json", records)
  skipped = {}
  pairs = eval_inputs.load_pairs(path, skipped=skipped)
  assert [p.id for p in pairs] == ["good"]
  assert skipped == {"bad image field": 1, "image outside root": 1, "unreadable image": 1, "bad caption": 1}
  assert "record escape skipped" in caplog.text


def test_eval_pairs_with_no_usable_record_name_the_file(data_root):
  path = _write_json(data_root / "pairs.json", [_record("escape", image="/etc/passwd")])
  with pytest.raises(ValueError, match=r"pairs\.json: no usable record with an image.*image outside root"):
    eval_inputs.load_pairs(path)


# ----------------------------------------------------------------------------------- weights: shards, values

def _tiny_llama_config(**fields):
  return LlamaConfig(**{**dict(vocab_size=16, hidden_size=8, intermediate_size=12, num_layers=1, num_heads=2,
                               num_kv_heads=1, head_dim=4, max_position_embeddings=16), **fields})


def _tiny_llama_tensors(config, seed=0):
  rng = np.random.default_rng(seed)
  tensors = {}
  for rule in llama_weights.RULES:
    if rule.when(config):
      names = [rule.hf.format(l=i) for i in range(config.num_layers)] if rule.per_layer else [rule.hf]
      for name in names:
        tensors[name] = rng.standard_normal(rule.hf_shape(config)).astype(np.float32)
  return tensors


def _tiny_llama_folder(folder, tensors=None, config=None):
  config = config or _tiny_llama_config()
  os.makedirs(folder, exist_ok=True)
  save_file(tensors if tensors is not None else _tiny_llama_tensors(config), os.path.join(folder, "model.safetensors"))
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(llama_weights.config_to_hf(config), f)
  return str(folder)


def _index(folder, weight_map):
  with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map} if weight_map is not ... else {"metadata": {}}, f)
  return os.path.join(folder, "model.safetensors.index.json")


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "link.safetensors"])
@pytest.mark.parametrize("reader", ["tga", "comploss"])
def test_a_weights_index_cannot_point_outside_the_model_folder(tmp_path, shard, reader):
  folder = tmp_path / "model"
  folder.mkdir()
  save_file({"w": np.zeros(2, np.float32)}, str(tmp_path / "outside.safetensors"))
  os.symlink(tmp_path / "outside.safetensors", folder / "link.safetensors")
  index = _index(folder, {"w": shard})
  with pytest.raises(OutsideRoot) as error:
    read_safetensors_folder(str(folder)) if reader == "tga" else encoder_params.read_safetensors(str(folder))
  assert index in str(error.value) and repr(shard) in str(error.value)


@pytest.mark.parametrize("weight_map, message", [
    ([["w", "a.safetensors"]], "'weight_map' must be a JSON object"),
    ({"w": 5}, "'weight_map'"),
    (..., "missing required key 'weight_map'"),
])
@pytest.mark.parametrize("reader", ["tga", "comploss"])
def test_a_malformed_weights_index_names_the_index_and_key(tmp_path, weight_map, message, reader):
  index = _index(tmp_path, weight_map)
  with pytest.raises(ConfigError) as error:
    read_safetensors_folder(str(tmp_path)) if reader == "tga" else encoder_params.read_safetensors(str(tmp_path))
  assert index in str(error.value) and message in str(error.value)


@pytest.mark.parametrize("array, expected", [
    (np.arange(3, dtype=np.int64), "dtype int64"),
    (np.array([True, False]), "dtype bool"),
    (np.array([1.0, np.nan, 2.0], np.float32), "1 NaN and 0 Inf of 3"),
    (np.array([np.inf, -np.inf], np.float16), "0 NaN and 2 Inf of 2"),
    (np.zeros(3, np.float32), None),
])
def test_value_problem_reports_dtype_and_non_finite_values(array, expected):
  problem = value_problem(array)
  assert problem == expected if expected is None else expected in problem


@pytest.mark.parametrize("corrupt, found", [
    (lambda t: t.__setitem__("model.norm.weight", np.full(8, np.nan, np.float32)), "model.norm.weight: non-finite"),
    (lambda t: t.__setitem__("model.embed_tokens.weight", np.ones((16, 8), np.int64)),
     "model.embed_tokens.weight: dtype int64"),
])
def test_llm_weights_with_bad_values_fail_by_default_and_load_when_allowed(tmp_path, corrupt, found, caplog):
  config = _tiny_llama_config()
  tensors = _tiny_llama_tensors(config)
  corrupt(tensors)
  folder = _tiny_llama_folder(tmp_path / "llm", tensors, config)
  with pytest.raises(WeightsError) as error:
    load_llm(folder)
  assert folder in str(error.value) and found in str(error.value) and "allow_bad_values=True" in str(error.value)
  caplog.set_level(logging.WARNING)
  module, params = load_llm(folder, allow_bad_values=True)
  assert module.config.hidden_size == 8 and found.split(":")[0] in caplog.text


def test_llm_weights_list_every_bad_tensor_at_once(tmp_path):
  config = _tiny_llama_config()
  tensors = _tiny_llama_tensors(config)
  tensors["model.norm.weight"] = np.full(8, np.inf, np.float32)
  tensors["model.layers.0.input_layernorm.weight"] = np.ones(8, np.int64)
  tensors["model.layers.0.mlp.up_proj.weight"] = np.ones((5, 8), np.float32)
  with pytest.raises(WeightsError) as error:
    load_llm(_tiny_llama_folder(tmp_path / "llm", tensors, config))
  text = str(error.value)
  assert "3 tensor(s)" in text and all(name in text for name in (
      "model.norm.weight", "model.layers.0.input_layernorm.weight", "model.layers.0.mlp.up_proj.weight"))


# ---------------------------------------------------------------------------------------- config validation

GOOD_LLAMA = llama_weights.config_to_hf(_tiny_llama_config())


@pytest.mark.parametrize("change, key, found", [
    ({"hidden_size": "abc"}, "hidden_size", "'abc'"),
    ({"num_attention_heads": 0}, "num_attention_heads", "0"),
    ({"num_hidden_layers": 1.5}, "num_hidden_layers", "1.5"),
    ({"vocab_size": True}, "vocab_size", "True"),
    ({"num_key_value_heads": 3, "num_attention_heads": 2}, "num_key_value_heads", "(3)"),
    ({"head_dim": None, "hidden_size": 9}, "hidden_size", "(9)"),
    ({"rms_norm_eps": "tiny"}, "rms_norm_eps", "'tiny'"),
    ({"tie_word_embeddings": "yes"}, "tie_word_embeddings", "'yes'"),
    ({"rope_scaling": [1, 2]}, "rope_scaling", "[1, 2]"),
    ({"max_position_embeddings": -1}, "max_position_embeddings", "-1"),
])
def test_llm_config_errors_name_file_key_and_value(change, key, found):
  with pytest.raises(ConfigError) as error:
    llama_weights.config_from_hf({**GOOD_LLAMA, **change}, "llm/config.json")
  text = str(error.value)
  assert text.startswith("llm/config.json: ") and key in text and found in text


def test_llm_config_that_is_a_list_or_lacks_hidden_size(tmp_path):
  with pytest.raises(ConfigError, match=r"c\.json: the file must be a JSON object \{\.\.\.\}, found \[1, 2\]"):
    llama_weights.config_from_hf([1, 2], "c.json")
  with pytest.raises(ConfigError, match=r"c\.json: missing fields \['hidden_size'\]"):
    llama_weights.config_from_hf({k: v for k, v in GOOD_LLAMA.items() if k != "hidden_size"}, "c.json")


GOOD_BERT = {"model_type": "bert", "vocab_size": 40, "hidden_size": 8, "num_hidden_layers": 1,
             "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 24, "type_vocab_size": 2}


@pytest.mark.parametrize("change, message", [
    ({"hidden_size": "abc"}, "'hidden_size' must be an integer >= 1, found 'abc' (str)"),
    ({"num_attention_heads": 0}, "'num_attention_heads' must be an integer >= 1, found 0"),
    ({"hidden_size": None}, "required key is null: 'hidden_size'"),
    ({"hidden_size": 10, "num_attention_heads": 4}, "'hidden_size' (10) must be divisible by 'num_attention_heads' (4)"),
    ({"hidden_act": "swish2"}, "'hidden_act' must be one of"),
    ({"layer_norm_eps": 0}, "'layer_norm_eps' must be a number > 0, found 0"),
    ({"model_type": "gpt2"}, "model_type='gpt2' is not supported"),
    ({"hidden_dropout_prob": "0.1"}, "'hidden_dropout_prob' must be a number >= 0.0, found '0.1' (str)"),
])
def test_encoder_config_errors_name_file_key_and_value(change, message):
  with pytest.raises(ConfigError) as error:
    EncoderConfig.from_hf({**GOOD_BERT, **change}, "bert/config.json")
  assert str(error.value).startswith("bert/config.json: ") and message in str(error.value)


@pytest.mark.parametrize("key", ["hidden_size", "num_attention_heads", "vocab_size", "max_position_embeddings"])
def test_encoder_config_never_defaults_a_missing_size(key):
  with pytest.raises(ConfigError, match=f"bert/config.json: missing required key '{key}'"):
    EncoderConfig.from_hf({k: v for k, v in GOOD_BERT.items() if k != key}, "bert/config.json")


def test_encoder_config_that_is_a_list_names_the_file():
  with pytest.raises(ConfigError, match=r"bert/config\.json: the file must be a JSON object"):
    EncoderConfig.from_hf([GOOD_BERT], "bert/config.json")


@pytest.mark.parametrize("section, change, key", [
    ("vision", {"image_size": "big"}, "image_size"),
    ("vision", {"patch_size": 0}, "patch_size"),
    ("vision", {"num_attention_heads": 3}, "num_attention_heads"),
    ("text", {"eos_token_id": -1}, "eos_token_id"),
    ("text", {"hidden_size": [16]}, "hidden_size"),
])
def test_clip_config_errors_name_key_and_value(section, change, key):
  base = {"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2}
  read = clip_weights.vision_config_from_hf if section == "vision" else clip_weights.text_config_from_hf
  with pytest.raises(ConfigError) as error:
    read({**base, **change}, "clip/config.json")
  assert str(error.value).startswith("clip/config.json: ") and f"'{key}'" in str(error.value)


@pytest.mark.parametrize("change, message", [
    ({"text_config": [1]}, "'text_config' must be a JSON object"),
    ({"vision_config": "clip"}, "'vision_config' must be a JSON object"),
    ({"image_token_index": "63"}, "'image_token_index' must be an integer, found '63'"),
])
def test_lvlm_config_errors_name_the_section(change, message):
  hf = {"model_type": "llava", "image_token_index": 63, "text_config": dict(GOOD_LLAMA),
        "vision_config": {"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
                          "num_attention_heads": 2, "image_size": 14, "patch_size": 7}}
  with pytest.raises(ConfigError) as error:
    lvlm_weights.config_from_hf({**hf, **change}, "llava/config.json")
  assert "llava/config.json" in str(error.value) and message in str(error.value)


@pytest.mark.parametrize("change, message", [
    ({"image_mean": [0.5, 0.5]}, "'image_mean' must be 3 numbers"),
    ({"image_std": [0.5, 0.0, 0.5]}, "'image_std' must be > 0"),
    ({"size": "large"}, "'size' must be an integer >= 1, found 'large'"),
])
def test_preprocessor_config_errors_name_the_file(tmp_path, change, message):
  with open(tmp_path / "preprocessor_config.json", "w") as f:
    json.dump({"size": {"shortest_edge": 14}, "crop_size": {"height": 14}, **change}, f)
  with pytest.raises(ConfigError) as error:
    ImageProcessingConfig.from_folder(str(tmp_path))
  assert str(tmp_path / "preprocessor_config.json") in str(error.value) and message in str(error.value)


# ------------------------------------------------------------------------------------------ encoder weights

def _bert_tensors(d=8, inner=16, vocab=40, positions=24, layers=1, seed=1):
  shapes = {"embeddings.word_embeddings.weight": (vocab, d), "embeddings.position_embeddings.weight": (positions, d),
            "embeddings.token_type_embeddings.weight": (2, d), "embeddings.LayerNorm.weight": (d,),
            "embeddings.LayerNorm.bias": (d,)}
  for i in range(layers):
    layer = f"encoder.layer.{i}."
    for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
      shapes[layer + name + ".weight"], shapes[layer + name + ".bias"] = (d, d), (d,)
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
      shapes[layer + name + ".weight"], shapes[layer + name + ".bias"] = (d,), (d,)
    shapes.update({layer + "intermediate.dense.weight": (inner, d), layer + "intermediate.dense.bias": (inner,),
                   layer + "output.dense.weight": (d, inner), layer + "output.dense.bias": (d,)})
  rng = np.random.default_rng(seed)
  return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


@pytest.fixture(scope="module")
def bert_expected():
  """The tiny 2-layer BERT's config and abstract param shapes (traced once for the module)."""
  import flax.linen as nn

  from comploss_jax.encoder import Encoder
  cfg = EncoderConfig.from_hf({**GOOD_BERT, "num_hidden_layers": 2})
  module = Encoder(cfg, add_pooler=False)
  abstract = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32))["params"])
  return cfg, jax.tree.map(lambda x: x.shape, nn.meta.unbox(abstract))


def test_encoder_lists_every_tensor_of_the_wrong_shape(bert_expected):
  cfg, expected = bert_expected
  tensors = _bert_tensors(layers=2)
  tensors["encoder.layer.0.attention.self.query.weight"] = np.zeros((8, 6), np.float32)
  tensors["encoder.layer.1.output.dense.weight"] = np.zeros((8, 15), np.float32)
  tensors["embeddings.word_embeddings.weight"] = np.zeros((41, 8), np.float32)
  with pytest.raises(WeightsError) as error:
    encoder_params.convert_hf_tensors(tensors, cfg, expected, source="bert")
  text = str(error.value)
  assert "3 problem(s)" in text and "missing" not in text
  for name in ("encoder.layer.0.attention.self.query.weight is (8, 6)", "encoder.layer.1.output.dense.weight is (8, 15)",
               "embeddings.word_embeddings.weight is (41, 8)"):
    assert name in text


@pytest.mark.parametrize("name, value, found", [
    ("embeddings.LayerNorm.weight", np.full(8, np.nan, np.float32), "non-finite values: 8 NaN"),
    ("encoder.layer.1.output.dense.bias", np.ones(8, np.int64), "dtype int64"),
])
def test_encoder_weights_with_bad_values_fail_unless_allowed(bert_expected, name, value, found, caplog):
  cfg, expected = bert_expected
  tensors = _bert_tensors(layers=2)
  tensors[name] = value
  tensors["embeddings.position_ids"] = np.arange(24, dtype=np.int64)[None]  # an int buffer HF keeps: ignored
  with pytest.raises(WeightsError) as error:
    encoder_params.convert_hf_tensors(tensors, cfg, expected, source="bert")
  assert f"value: {name}: {found}" in str(error.value) and "allow_bad_values=True" in str(error.value)
  caplog.set_level(logging.WARNING)
  params = encoder_params.convert_hf_tensors(tensors, cfg, expected, allow_bad_values=True, source="bert")
  assert params["embeddings"]["word_embeddings"]["embedding"].shape == (40, 8) and name in caplog.text


@pytest.mark.parametrize("config, message", [
    ([GOOD_BERT], "the file must be a JSON object"),
    ({k: v for k, v in GOOD_BERT.items() if k != "hidden_size"}, "missing required key 'hidden_size'"),
    ("{not json", "not valid JSON"),
])
def test_load_encoder_names_the_config_file(tmp_path, config, message):
  save_file(_bert_tensors(), str(tmp_path / "model.safetensors"))
  with open(tmp_path / "config.json", "w") as f:
    f.write(config if isinstance(config, str) else json.dumps(config))
  with pytest.raises(ConfigError) as error:
    encoder_params.load_encoder(str(tmp_path))
  assert str(tmp_path / "config.json") in str(error.value) and message in str(error.value)


# ----------------------------------------------------------------------------------------------- workdir lock

def _write_lock(workdir, **holder):
  os.makedirs(workdir, exist_ok=True)
  info = {"pid": os.getpid(), "host": socket.gethostname(), "started": "2025-01-01T00:00:00+00:00",
          "argv": ["python", "-m", "x.train"], "token": "t", **holder}
  with open(os.path.join(workdir, LOCK_NAME), "w") as f:
    json.dump(info, f)


def _dead_pid():
  process = subprocess.Popen([sys.executable, "-c", "pass"])
  process.wait()
  return process.pid


def test_a_second_run_on_a_held_workdir_stops_naming_the_holder(tmp_path):
  with WorkdirLock(str(tmp_path)):
    # The module alone (not the trainkit package, which imports JAX): the other run starts in a blink.
    code = ("import importlib.util, sys\n"
            "spec = importlib.util.spec_from_file_location('workdir_lock', sys.argv[2])\n"
            "lock = importlib.util.module_from_spec(spec); spec.loader.exec_module(lock)\n"
            "try:\n  lock.WorkdirLock(sys.argv[1]).acquire()\nexcept lock.WorkdirLocked as e:\n  print(e); sys.exit(3)\n")
    module = os.path.join(ROOT, "trainkit", "workdir_lock.py")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path), module], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 3, result.stderr
    assert f"pid {os.getpid()} on host {socket.gethostname()!r}" in result.stdout
    assert str(tmp_path / LOCK_NAME) in result.stdout
    with pytest.raises(WorkdirLocked, match="this process already runs in this workdir"):
      WorkdirLock(str(tmp_path)).acquire()
  assert not os.path.exists(tmp_path / LOCK_NAME)  # released


@pytest.mark.parametrize("holder, reason", [
    (lambda: {"pid": _dead_pid()}, "is no longer running"),
    (lambda: {"pid": os.getppid(), "process_start": "1"}, "now belongs to a different process"),
    (lambda: {"pid": "many"}, "names no valid pid"),
    (lambda: {"host": None}, "names no host"),
    (lambda: {"pid": os.getpid()}, "this process took it earlier and did not release it"),
])
def test_a_stale_lock_on_this_host_is_taken_over_with_a_log_line(tmp_path, holder, reason, caplog):
  caplog.set_level(logging.WARNING)
  _write_lock(str(tmp_path), **holder())
  lock = WorkdirLock(str(tmp_path)).acquire()
  try:
    assert "taking over a stale workdir lock" in caplog.text and reason in caplog.text
    assert json.load(open(tmp_path / LOCK_NAME))["token"] == lock.info["token"]
  finally:
    lock.release()


def test_a_lock_from_another_host_is_respected_and_says_what_to_remove(tmp_path):
  _write_lock(str(tmp_path), host="node-17", pid=4242)
  with pytest.raises(WorkdirLocked) as error:
    WorkdirLock(str(tmp_path)).acquire()
  text = str(error.value)
  assert "pid 4242 on host 'node-17'" in text and f"remove {tmp_path / LOCK_NAME}" in text


def test_an_unreadable_lock_is_stale_only_once_old(tmp_path):
  path = tmp_path / LOCK_NAME
  path.write_text("")
  with pytest.raises(WorkdirLocked, match="creating the workdir lock"):
    WorkdirLock(str(tmp_path)).acquire()
  old = time.time() - 60
  os.utime(path, (old, old))
  WorkdirLock(str(tmp_path)).acquire().release()


def test_the_decorated_loop_releases_the_lock_when_it_raises(tmp_path):
  @holds_workdir_lock
  def run(config, workdir):
    assert os.path.exists(os.path.join(workdir, LOCK_NAME))
    raise FloatingPointError("boom")

  with pytest.raises(FloatingPointError):
    run(None, workdir=str(tmp_path))
  assert not os.path.exists(tmp_path / LOCK_NAME)


# -------------------------------------------------------------------------------------- damaged checkpoints

def _state():
  return {"w": jnp.arange(1000.0), "b": jnp.ones((3,))}


@pytest.fixture(scope="module")
def saved_checkpoints(tmp_path_factory):
  """Steps 1 and 2 of a tiny state (w = step * arange), each with its iterator JSON; copied per test."""
  directory = str(tmp_path_factory.mktemp("ckpt") / "checkpoints")
  checkpointer = Checkpointer(directory, every=1, keep=3, use_async=False)
  for step in (1, 2):
    checkpointer.save(step, jax.tree.map(lambda x: x * step, _state()), {"position": step})
  checkpointer.close()
  return directory


def _damaged_copy(saved, tmp_path, damage):
  directory = str(tmp_path / "checkpoints")
  shutil.copytree(saved, directory)
  damage(directory)
  return directory


def _truncate_largest(directory, step):
  folder = os.path.join(directory, str(step), "state")
  files = [os.path.join(r, n) for r, _, names in os.walk(folder) for n in names if "/d/" in os.path.join(r, n)]
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(100)
  return largest


def _garbage_json(directory, step, text="garbage{"):
  with open(os.path.join(directory, str(step), "data", "process_0-of-1.json"), "w") as f:
    f.write(text)


DAMAGE = {
    "truncated array file": (lambda d: _truncate_largest(d, 2), "OUT_OF_RANGE"),
    "garbage iterator JSON": (lambda d: _garbage_json(d, 2), "process_0-of-1.json: the data-iterator state is not valid JSON"),
    "iterator JSON not an object": (lambda d: _garbage_json(d, 2, "[1, 2]"), "must be a JSON object, found list"),
    "array file deleted": (lambda d: os.remove(_truncate_largest(d, 2)), "Error reading"),
}


# Orbax leaves the reads of the other arrays un-awaited when one fails: a warning at garbage collection.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_latest_step_falls_back_to_the_newest_good_one(saved_checkpoints, tmp_path, kind, caplog):
  damage, cause = DAMAGE[kind]
  caplog.set_level(logging.WARNING)
  directory = _damaged_copy(saved_checkpoints, tmp_path, damage)
  checkpointer = Checkpointer(directory, every=1, use_async=False)
  state = _state()
  shardings = jax.tree.map(lambda x: x.sharding, state)
  with pytest.raises(CheckpointError) as error:  # restore() of that step alone: names the step and the cause
    checkpointer.restore(2, state, shardings)
  assert f"checkpoint step 2 ({directory}/2) cannot be restored" in str(error.value) and cause in str(error.value)
  step, restored, data_state = checkpointer.restore_latest(state, shardings)
  assert step == 1 and data_state == {"position": 1} and float(restored["w"][3]) == 3.0
  assert "resuming from checkpoint step 1, the newest that restores" in caplog.text and cause in caplog.text
  assert os.path.isdir(directory + ".damaged/2") and checkpointer.latest_step() == 1
  checkpointer.save(2, state, {"position": 2})  # the step is reached again: its folder was moved aside
  checkpointer.close()


def test_a_truncated_array_file_is_named(saved_checkpoints, tmp_path):
  truncated = []
  directory = _damaged_copy(saved_checkpoints, tmp_path, lambda d: truncated.append(_truncate_largest(d, 2)))
  checkpointer = Checkpointer(directory, every=1, use_async=False)
  state = _state()
  with pytest.raises(CheckpointError) as error:
    checkpointer.restore(2, state, jax.tree.map(lambda x: x.sharding, state))
  assert "truncated file: " in str(error.value) and truncated[0] in str(error.value)
  checkpointer.close()


def test_a_missing_metadata_file_still_restores_the_step(saved_checkpoints, tmp_path):
  directory = _damaged_copy(saved_checkpoints, tmp_path, lambda d: os.remove(os.path.join(d, "2", "state", "_METADATA")))
  checkpointer = Checkpointer(directory, every=1, use_async=False)
  state = _state()
  step, restored, _ = checkpointer.restore_latest(state, jax.tree.map(lambda x: x.sharding, state))
  assert step == 2 and float(restored["w"][3]) == 6.0  # the structure comes from the run, not from _METADATA
  checkpointer.close()


def test_no_step_that_restores_says_which_folder_to_remove(saved_checkpoints, tmp_path):
  directory = _damaged_copy(saved_checkpoints, tmp_path, lambda d: (_garbage_json(d, 1), _garbage_json(d, 2)))
  checkpointer = Checkpointer(directory, every=1, use_async=False)
  state = _state()
  with pytest.raises(CheckpointError) as error:
    checkpointer.restore_latest(state, jax.tree.map(lambda x: x.sharding, state))
  text = str(error.value)
  assert f"no checkpoint in {directory} restores" in text and f"To start over, remove {directory}" in text
  assert "checkpoint step 2" in text and "checkpoint step 1" in text
  assert sorted(os.listdir(directory)) == ["1", "2"]  # nothing was moved: no step restored
  checkpointer.close()


# --------------------------------------------------------------------------------------------------- launch

@pytest.mark.parametrize("argv, message", [
    (["--bucket=gs://bkt;rm -rf ~"], "'bkt;rm -rf ~' is not a Cloud Storage bucket name"),
    (["--bucket=gs://a b"], "is not a Cloud Storage bucket name"),
    (["--bucket=gs://$(reboot)"], "is not a Cloud Storage bucket name"),
    (["--bucket=gs://bkt", "--name=pod:evil"], "--name='pod:evil'"),
])
def test_tpu_pod_rejects_bucket_and_name_that_a_shell_would_read(argv, message):
  with pytest.raises(SystemExit) as error:
    tpu_pod.main(["setup", "--zone=z", "--dry-run", *(["--name=pod"] if not any("--name" in a for a in argv) else []),
                  *argv])
  assert message in str(error.value)


def test_tpu_pod_quotes_every_value_in_the_remote_scripts():
  args = tpu_pod.parser().parse_args(["run", "--name=pod", "--zone=z", "--bucket=gs://my.bucket_1",
                                      "--run_dir=runs/$(touch pwned) two words"])
  script = tpu_pod.run_command(args, ["tga_jax.train", "--config=configs/tga/tiny.py:stage=1;ls"])[-1]
  words = shlex.split(script.removeprefix("--command="))
  assert "--workdir=/mnt/gcs/my.bucket_1/runs/$(touch pwned) two words" in words
  assert "--config=configs/tga/tiny.py:stage=1;ls" in words
  setup = tpu_pod.setup_commands(args)[-1][-1].removeprefix("--command=")
  assert "gcsfuse --implicit-dirs my.bucket_1 /mnt/gcs/my.bucket_1" in setup
