"""CLIP towers vs transformers' CLIPModel / CLIPVisionModel (tiny random models, float32).

Image and text embeddings within 1e-5 (both end-of-text pooling conventions, padded text); every
hidden state of the vision tower, its pooled output and LLaVA's features (layer -2, CLS dropped).
"""
import jax
import numpy as np
import pytest

import tga_jax
from tga_jax.weights.safetensors_io import WeightsError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-5
VOCAB = 99
SIZE, PATCH = 28, 7


def _configs(eos_token_id):
  vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                         num_attention_heads=4, image_size=SIZE, patch_size=PATCH)
  text = transformers.CLIPTextConfig(hidden_size=40, intermediate_size=56, num_hidden_layers=2,
                                     num_attention_heads=4, vocab_size=VOCAB, max_position_embeddings=16,
                                     bos_token_id=VOCAB - 2, eos_token_id=eos_token_id, pad_token_id=0)
  return vision, text


def _randomise_norms(model):
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "norm" in name:
        param.copy_(param + 0.2 * torch.randn_like(param))


@pytest.fixture(scope="module", params=["eos_id", "legacy_eos_2"])
def clip_pair(request, tmp_path_factory):
  torch.manual_seed(0)
  eos = VOCAB - 1 if request.param == "eos_id" else 2
  vision, text = _configs(eos)
  model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                                         projection_dim=24)).eval()
  _randomise_norms(model)
  folder = str(tmp_path_factory.mktemp("clip"))
  model.save_pretrained(folder)
  module, params = tga_jax.load_clip(folder)
  return model, module, params


def _text_batch():
  rng = np.random.RandomState(0)
  ids = rng.randint(3, VOCAB - 2, (3, 12))
  mask = np.ones_like(ids)
  ids[0, 11] = VOCAB - 1       # end-of-text last
  ids[1, 6] = VOCAB - 1        # then padding
  ids[1, 7:] = 0
  mask[1, 7:] = 0
  ids[2, 3] = VOCAB - 1
  ids[2, 4:] = 0
  mask[2, 4:] = 0
  return ids, mask


def test_image_and_text_embeddings_match_transformers(clip_pair):
  model, module, params = clip_pair
  pixels = np.random.RandomState(1).randn(2, SIZE, SIZE, 3).astype(np.float32)
  ids, mask = _text_batch()
  with torch.no_grad():
    image_ref = model.get_image_features(torch.tensor(pixels.transpose(0, 3, 1, 2))).pooler_output.numpy()
    text_ref = model.get_text_features(torch.tensor(ids), attention_mask=torch.tensor(mask)).pooler_output.numpy()
    full = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2)))
  image, _ = jax.jit(lambda p, x: module.apply({"params": p}, x, method="encode_image"))(params, pixels)
  text, _ = jax.jit(lambda p, i, m: module.apply({"params": p}, i, m, method="encode_text"))(params, ids, mask)
  np.testing.assert_allclose(np.asarray(image), image_ref, atol=TOL, rtol=0)
  np.testing.assert_allclose(np.asarray(text), text_ref, atol=TOL, rtol=0)
  logits, aux = jax.jit(lambda p, i, x, m: module.apply({"params": p}, i, x, m))(params, ids, pixels, mask)
  np.testing.assert_allclose(np.asarray(aux["image_embeds"]), full.image_embeds.numpy(), atol=TOL, rtol=0)
  np.testing.assert_allclose(np.asarray(aux["text_embeds"]), full.text_embeds.numpy(), atol=TOL, rtol=0)
  np.testing.assert_allclose(np.asarray(logits), full.logits_per_image.numpy(), atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def vision_pair(tmp_path_factory):
  torch.manual_seed(2)
  vision, _ = _configs(VOCAB - 1)
  model = transformers.CLIPVisionModel(vision).eval()
  _randomise_norms(model)
  folder = str(tmp_path_factory.mktemp("clip_vision"))
  model.save_pretrained(folder)
  return model, folder


def test_vision_hidden_states_and_llava_features_match(vision_pair):
  model, folder = vision_pair
  module, params = tga_jax.load_clip_vision(folder)
  assert module.config.feature_layer == -2 and module.config.num_features == 16
  pixels = np.random.RandomState(3).randn(2, SIZE, SIZE, 3).astype(np.float32)
  with torch.no_grad():
    ref = model(torch.tensor(pixels.transpose(0, 3, 1, 2)), output_hidden_states=True)
  pooled, aux = jax.jit(lambda p, x: module.apply({"params": p}, x, output_hidden_states=True))(params, pixels)
  assert aux["hidden_states"].shape == (4, 2, 17, 32) and len(ref.hidden_states) == 4
  for i, state in enumerate(ref.hidden_states):
    np.testing.assert_allclose(np.asarray(aux["hidden_states"][i]), state.numpy(), atol=TOL, rtol=0,
                               err_msg=f"hidden state {i}")
  np.testing.assert_allclose(np.asarray(pooled), ref.pooler_output.numpy(), atol=TOL, rtol=0)
  np.testing.assert_allclose(np.asarray(aux["features"]), ref.hidden_states[-2].numpy()[:, 1:], atol=TOL, rtol=0)
  # Other selections: the last layer with CLS kept ('full'), and the embeddings (layer 0).
  for layer, strategy, expected in ((-1, "full", ref.hidden_states[-1].numpy()),
                                    (0, "default", ref.hidden_states[0].numpy()[:, 1:])):
    other, other_params = tga_jax.load_clip_vision(folder, feature_layer=layer, feature_strategy=strategy)
    _, other_aux = jax.jit(lambda p, x: other.apply({"params": p}, x))(other_params, pixels)
    np.testing.assert_allclose(np.asarray(other_aux["features"]), expected, atol=TOL, rtol=0)


def test_bad_checkpoint_and_inputs_are_named(vision_pair, tmp_path):
  from safetensors.numpy import load_file, save_file
  model, folder = vision_pair
  tensors = load_file(f"{folder}/model.safetensors")
  tensors["embeddings.position_embedding.weight"] = tensors["embeddings.position_embedding.weight"][:-1]
  del tensors["encoder.layers.2.mlp.fc1.bias"]
  save_file(tensors, str(tmp_path / "model.safetensors"))
  (tmp_path / "config.json").write_text(open(f"{folder}/config.json").read())
  with pytest.raises(WeightsError) as err:
    tga_jax.load_clip_vision(str(tmp_path))
  assert "shape: embeddings.position_embedding.weight is (16, 32), expected (17, 32)" in str(err.value)
  assert "missing: encoder.layers.2.mlp.fc1.bias (48,)" in str(err.value)
  module, params = tga_jax.load_clip_vision(folder)
  with pytest.raises(ValueError, match=r"pixel_values has shape \(1, 3, 28, 28\), expected \(batch, 28, 28, 3\)"):
    module.apply({"params": params}, np.zeros((1, 3, SIZE, SIZE), np.float32))
