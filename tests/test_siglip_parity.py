"""SigLIP's vision tower vs transformers' SiglipVisionModel, and a LLaVA built on it (tiny random, float32)."""
import jax
import numpy as np
import pytest

import tga_jax

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-5
SIZE, PATCH = 28, 7


def _config():
  return transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                         num_attention_heads=4, image_size=SIZE, patch_size=PATCH)


def _randomise_norms(model):
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "norm" in name:
        param.copy_(param + 0.2 * torch.randn_like(param))


def test_siglip_vision_hidden_states_pooled_and_features(tmp_path):
  torch.manual_seed(0)
  model = transformers.SiglipVisionModel(_config()).eval()
  _randomise_norms(model)
  model.save_pretrained(str(tmp_path))
  module, params = tga_jax.load_clip_vision(str(tmp_path), feature_layer=-1, feature_strategy="full")
  assert module.config.model_type == "siglip" and module.config.num_features == 16
  pixels = np.random.RandomState(0).randn(2, SIZE, SIZE, 3).astype(np.float32)
  with torch.no_grad():
    ref = model(torch.tensor(pixels.transpose(0, 3, 1, 2)), output_hidden_states=True)
  pooled, aux = jax.jit(lambda p, x: module.apply({"params": p}, x, output_hidden_states=True))(params, pixels)
  for i, state in enumerate(ref.hidden_states):
    np.testing.assert_allclose(np.asarray(aux["hidden_states"][i]), state.numpy(), atol=TOL, rtol=0,
                               err_msg=f"hidden state {i}")
  np.testing.assert_allclose(np.asarray(aux["last_hidden_state"]), ref.last_hidden_state.numpy(), atol=TOL, rtol=0)
  np.testing.assert_allclose(np.asarray(pooled), ref.pooler_output.numpy(), atol=TOL, rtol=0)
  np.testing.assert_allclose(np.asarray(aux["features"]), ref.hidden_states[-1].numpy(), atol=TOL, rtol=0)


def test_llava_with_a_siglip_tower_matches_and_exports(tmp_path):
  torch.manual_seed(1)
  text = transformers.LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5)
  config = transformers.LlavaConfig(vision_config=_config().to_dict(), text_config=text.to_dict(), image_token_id=60,
                                    vision_feature_layer=-1, vision_feature_select_strategy="full")
  model = transformers.LlavaForConditionalGeneration(config).eval()
  _randomise_norms(model)
  model.save_pretrained(str(tmp_path / "llava"))
  module, params = tga_jax.load_lvlm(str(tmp_path / "llava"))
  assert module.config.vision.model_type == "siglip" and module.config.tokens_per_image == 16
  rng = np.random.RandomState(0)
  ids = rng.randint(3, 60, (2, 24))
  ids[0, 2:18] = 60
  pixels = rng.randn(2, 1, SIZE, SIZE, 3).astype(np.float32)
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels[:1, 0].transpose(0, 3, 1, 2)))
  logits, _ = jax.jit(lambda p: module.apply({"params": p}, ids, pixels))(params)
  np.testing.assert_allclose(np.asarray(logits), ref.logits.numpy(), atol=1e-4, rtol=0)
  tga_jax.save_lvlm_hf(module, params, str(tmp_path / "export"))
  reloaded, info = transformers.LlavaForConditionalGeneration.from_pretrained(str(tmp_path / "export"),
                                                                              output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
