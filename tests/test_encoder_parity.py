"""Encoders vs transformers' torch models: tiny random BERT/RoBERTa/ELECTRA and the real MiniLM-L6."""
import json

import jax
import numpy as np
import pytest

import comploss_jax
from comploss_jax.encoder import mean_pool

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-5  # float32, absolute


def tiny(model_type):
  common = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                max_position_embeddings=64)
  if model_type == "bert":
    return transformers.BertModel(transformers.BertConfig(**common))
  if model_type == "roberta":
    return transformers.RobertaModel(transformers.RobertaConfig(pad_token_id=1, **common))
  return transformers.ElectraModel(transformers.ElectraConfig(embedding_size=16, **common))


@pytest.fixture(scope="module")
def batch():
  rng = np.random.RandomState(0)
  ids = rng.randint(3, 99, (3, 11))
  mask = np.ones_like(ids)
  mask[1, 7:] = 0
  mask[2, 4:] = 0
  token_types = np.zeros_like(ids)
  token_types[:, 5:] = 1
  return ids, mask, token_types


@pytest.mark.parametrize("model_type", ["bert", "roberta", "electra"])
def test_tiny_random_models_every_hidden_state(tmp_path, batch, model_type):
  torch.manual_seed(0)
  reference = tiny(model_type).eval()
  reference.save_pretrained(tmp_path)
  ids, mask, token_types = batch
  if model_type == "roberta":
    ids = np.where(mask == 1, ids, 1)  # RoBERTa positions count non-pad tokens
    token_types = np.zeros_like(ids)
  module, params = comploss_jax.load_encoder(str(tmp_path))
  with torch.no_grad():
    want = reference(torch.tensor(ids), torch.tensor(mask), torch.tensor(token_types), output_hidden_states=True)
  last, aux = jax.jit(lambda p: module.apply({"params": p}, ids, mask, token_types, output_hidden_states=True))(params)
  assert aux["hidden_states"].shape[0] == len(want.hidden_states) == 3
  for layer, expected in enumerate(want.hidden_states):
    np.testing.assert_allclose(aux["hidden_states"][layer], expected.numpy(), atol=TOL, err_msg=f"layer {layer}")
  np.testing.assert_allclose(last, want.last_hidden_state.numpy(), atol=TOL)
  if model_type == "electra":
    assert "pooled" not in aux
  else:
    np.testing.assert_allclose(aux["pooled"], want.pooler_output.numpy(), atol=TOL)


def test_real_minilm_sentence_embeddings():
  module, params = comploss_jax.load_encoder("all-minilm-l6-v2")
  model_dir = comploss_jax.encoder_params.resolve_model_dir("all-minilm-l6-v2")
  tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
  reference = transformers.AutoModel.from_pretrained(model_dir).eval()
  sentences = ["A man is playing a guitar on stage.", "The quarterly earnings beat expectations.",
               "Rain is expected tomorrow."]
  enc = tokenizer(sentences, padding=True, return_tensors="np")
  with torch.no_grad():
    out = reference(**{k: torch.tensor(v) for k, v in enc.items()}).last_hidden_state
  mask = enc["attention_mask"][..., None]
  want = (out.numpy() * mask).sum(1) / mask.sum(1)
  want = want / np.linalg.norm(want, axis=1, keepdims=True)  # the model's Normalize module
  hidden, _ = jax.jit(module.apply)({"params": params}, enc["input_ids"], enc["attention_mask"],
                                    enc["token_type_ids"])
  ours = np.asarray(mean_pool(hidden, enc["attention_mask"]))
  ours = ours / np.linalg.norm(ours, axis=1, keepdims=True)
  np.testing.assert_allclose(ours, want, atol=TOL)
  assert ours[0] @ ours[1] < 0.5  # unrelated sentences are not near-duplicates


def test_bad_folders_say_what_is_wrong(tmp_path):
  with pytest.raises(FileNotFoundError, match="no config.json"):
    comploss_jax.load_encoder(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="not a directory, and not one of the packaged models"):
    comploss_jax.load_encoder(str(tmp_path / "nope"))
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
  with pytest.raises(ValueError, match="model_type='gpt2'"):
    comploss_jax.load_encoder(str(tmp_path))


def test_truncated_and_mismatched_weights_are_reported(tmp_path):
  torch.manual_seed(0)
  tiny("bert").save_pretrained(tmp_path)
  weights = tmp_path / "model.safetensors"
  data = weights.read_bytes()
  weights.write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match="cannot read safetensors"):
    comploss_jax.load_encoder(str(tmp_path))
  weights.write_bytes(data)
  config = json.loads((tmp_path / "config.json").read_text())
  config.update(intermediate_size=40, num_hidden_layers=3)
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError) as err:
    comploss_jax.load_encoder(str(tmp_path))
  message = str(err.value)
  assert "layers/intermediate/kernel for layers [2]" in message  # every problem, in one error
  assert "layers/output_LayerNorm/scale for layers [2]" in message
