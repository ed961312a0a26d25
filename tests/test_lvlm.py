"""The LLaVA-style LVLM vs transformers' LlavaForConditionalGeneration (tiny random CLIP + Llama).

One batch holds a one-image sample, a two-image sample and a text-only (left-padded) sample; logits and
hidden states must match within 1e-4 in float32 on the real positions. Also: both llava-hf key layouts,
export back to a llava-hf folder that transformers loads, a composition of separate CLIP / LLM folders +
a projector file, stage masks with trainkit, errors naming the sample, and a forward under a mesh.
"""
import dataclasses
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import tga_jax
import trainkit
from tga_jax.weights import lvlm as lvlm_params
from tga_jax.weights.safetensors_io import WeightsError
from tga_jax.models.projector import Projector
from tga_jax.models.siglip import vision_tower

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
IMAGE_ID = 120
VOCAB = 128
SIZE, PATCH = 28, 7  # 16 patch tokens per image


def _vision_config():
  return transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                       num_attention_heads=4, image_size=SIZE, patch_size=PATCH)


def _randomise_norms(model):
  # HF norms start at weight 1 / bias 0: randomise them so a swapped or missing norm cannot pass.
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "norm" in name:
        param.copy_(param + 0.2 * torch.randn_like(param))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  torch.manual_seed(0)
  text = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                  num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                                  max_position_embeddings=128)
  config = transformers.LlavaConfig(vision_config=_vision_config().to_dict(), text_config=text.to_dict(),
                                    image_token_id=IMAGE_ID, vision_feature_layer=-2)
  config._attn_implementation = "eager"
  model = transformers.LlavaForConditionalGeneration(config).eval()
  _randomise_norms(model)
  folder = str(tmp_path_factory.mktemp("llava"))
  model.save_pretrained(folder)
  return model, folder


def _batch(tokens_per_image, seed=0):
  """input_ids with sample 0: one image, sample 1: two images, sample 2: text only (left padded)."""
  n = tokens_per_image
  rng = np.random.RandomState(seed)
  ids = rng.randint(3, IMAGE_ID, (3, 2 * n + 12))
  ids[0, 3:3 + n] = IMAGE_ID
  ids[1, 2:2 + n] = IMAGE_ID
  ids[1, 5 + n:5 + 2 * n] = IMAGE_ID
  mask = np.ones_like(ids)
  mask[2, :6] = 0
  pixels = rng.randn(3, 2, SIZE, SIZE, 3).astype(np.float32)
  pixels[0, 1] = 0
  pixels[2] = 0
  return ids, mask, pixels, np.array([1, 2, 0])


def _torch_forward(model, ids, mask, pixels, counts):
  flat = np.concatenate([pixels[b, :c] for b, c in enumerate(counts)])
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 pixel_values=torch.tensor(flat.transpose(0, 3, 1, 2)), output_hidden_states=True)


def _forward(module, params, ids, mask, pixels, **kwargs):
  fn = jax.jit(lambda p, i, x, m: module.apply({"params": p}, i, x, m, output_hidden_states=True, **kwargs))
  return fn(params, ids, pixels, mask)


def _assert_matches(ref, logits, aux, mask):
  real = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(logits)[real], ref.logits.numpy()[real], atol=TOL, rtol=0)
  assert aux["hidden_states"].shape[0] == len(ref.hidden_states)
  for i, state in enumerate(ref.hidden_states):
    np.testing.assert_allclose(np.asarray(aux["hidden_states"][i])[real], state.numpy()[real], atol=TOL, rtol=0,
                               err_msg=f"hidden state {i}")


def test_llava_logits_match_transformers_with_one_two_and_no_images(reference):
  model, folder = reference
  module, params = tga_jax.load_lvlm(folder)
  assert module.config.tokens_per_image == 16 and module.config.image_token_id == IMAGE_ID
  ids, mask, pixels, counts = _batch(16)
  ref = _torch_forward(model, ids, mask, pixels, counts)
  logits, aux = _forward(module, params, ids, mask, pixels)
  _assert_matches(ref, logits, aux, mask)
  np.testing.assert_array_equal(np.asarray(aux["image_mask"]), ids == IMAGE_ID)
  # The image-token mean of each layer is what the TGA loss reads; the text-only row has none (zeros).
  image_means = np.asarray(aux["segment_means"]["image"])
  assert image_means.shape == (4, 3, 64)
  expected = (ref.hidden_states[2].numpy()[1] * (ids[1] == IMAGE_ID)[:, None]).sum(0) / 32
  np.testing.assert_allclose(image_means[2, 1], expected, atol=TOL)
  assert np.all(image_means[:, 2] == 0)


def test_both_llava_hf_key_layouts_load_the_same(reference, tmp_path):
  model, folder = reference
  tensors = load_file(os.path.join(folder, "model.safetensors"))
  assert any(k.startswith("language_model.model.") for k in tensors)  # transformers' own save: the hub layout
  renamed = {}
  for name, value in tensors.items():
    for old, new in (("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."),
                     ("vision_tower.", "model.vision_tower."),
                     ("multi_modal_projector.", "model.multi_modal_projector.")):
      if name.startswith(old):
        name = new + name[len(old):]
        break
    renamed[name] = value
  save_file(renamed, str(tmp_path / "model.safetensors"))
  with open(os.path.join(folder, "config.json")) as f, open(tmp_path / "config.json", "w") as g:
    g.write(f.read())
  _, params_a = tga_jax.load_lvlm(folder)
  _, params_b = tga_jax.load_lvlm(str(tmp_path))
  jax.tree.map(np.testing.assert_array_equal, params_a, params_b)


def test_export_to_llava_hf_reloads_in_transformers(reference, tmp_path):
  model, folder = reference
  module, params = tga_jax.load_lvlm(folder)
  tga_jax.save_lvlm_hf(module, params, str(tmp_path))
  keys = load_file(str(tmp_path / "model.safetensors")).keys()
  assert any(k.startswith("vision_tower.vision_model.") for k in keys)
  reloaded, info = transformers.LlavaForConditionalGeneration.from_pretrained(str(tmp_path), output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  ids, mask, pixels, counts = _batch(16, seed=1)
  ours = _torch_forward(model, ids, mask, pixels, counts)
  theirs = _torch_forward(reloaded.eval(), ids, mask, pixels, counts)
  real = mask.astype(bool)
  np.testing.assert_allclose(theirs.logits.numpy()[real], ours.logits.numpy()[real], atol=1e-5)
  _, again = tga_jax.load_lvlm(str(tmp_path))
  jax.tree.map(np.testing.assert_array_equal, params, again)


def test_composition_of_clip_llm_and_projector_equals_the_llava_model(reference, tmp_path):
  model, folder = reference
  module, params = tga_jax.load_lvlm(folder)
  # The parts as a user has them: a CLIPModel folder, an LLM folder, LLaVA's projector file.
  torch.manual_seed(1)
  clip = transformers.CLIPModel(transformers.CLIPConfig(
      vision_config=_vision_config().to_dict(),
      text_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                       vocab_size=50, max_position_embeddings=16), projection_dim=8))
  clip.vision_model.load_state_dict(model.model.vision_tower.state_dict())
  clip.save_pretrained(str(tmp_path / "clip"))
  tga_jax.save_llm_hf(module.config.llm, params["llm"], str(tmp_path / "llm"))
  projector = str(tmp_path / "mm_projector.safetensors")
  tga_jax.save_projector(module, params, projector)
  assert set(load_file(projector)) == {"model.mm_projector.0.weight", "model.mm_projector.0.bias",
                                       "model.mm_projector.2.weight", "model.mm_projector.2.bias"}
  spec = tmp_path / "lvlm.json"
  spec.write_text(json.dumps({"vision": "clip", "llm": "llm", "projector": "mm_projector.safetensors",
                              "image_token_id": IMAGE_ID}))
  composed, composed_params = tga_jax.load_lvlm(str(spec))
  assert composed.config.projector.kind == "mlp2x_gelu"
  jax.tree.map(np.testing.assert_allclose, params, composed_params)
  # Without a projector file: a fresh projector (stage 1), LLaVA's placeholder id -200 by default.
  fresh, fresh_params = tga_jax.compose_lvlm(str(tmp_path / "clip"), str(tmp_path / "llm"), projector_type="linear")
  assert fresh.config.image_token_id == -200
  assert fresh_params["projector"]["linear_1"]["kernel"].shape == (32, 64)
  ids, mask, pixels, _ = _batch(16)
  ids = np.where(ids == IMAGE_ID, -200, ids)
  logits, _ = _forward(fresh, fresh_params, ids, mask, pixels)
  assert np.all(np.isfinite(np.asarray(logits)))


def test_image_pool_averages_patch_blocks_into_fewer_image_tokens(reference):
  _, folder = reference
  module, params = tga_jax.load_lvlm(folder)
  pooled = tga_jax.LlavaLVLM(dataclasses.replace(module.config, image_pool=2))
  assert pooled.config.tokens_per_image == 4  # a 4x4 patch grid pooled 2x2
  ids, mask, pixels, _ = _batch(4)
  _, aux = _forward(pooled, params, ids, mask, pixels)
  # The projector is applied per token, so pooling before it equals projecting the block means.
  vision = module.config.vision
  _, vision_aux = vision_tower(vision).apply({"params": params["vision"]}, pixels[0, :1])
  grid = np.asarray(vision_aux["features"]).reshape(4, 4, -1)
  blocks = grid.reshape(2, 2, 2, 2, -1).mean(axis=(1, 3)).reshape(4, -1)
  expected, _ = Projector(module.config.projector).apply({"params": params["projector"]}, blocks)
  np.testing.assert_allclose(np.asarray(aux["image_features"])[0, :4], np.asarray(expected), atol=1e-5)
  with pytest.raises(ValueError, match="image_pool=3"):
    dataclasses.replace(module.config, image_pool=3)
  # 'full' keeps the CLS token first and unpooled: 1 + 4 tokens.
  full = dataclasses.replace(module.config, image_pool=2,
                             vision=dataclasses.replace(vision, feature_strategy="full"))
  assert full.tokens_per_image == 5
  ids5, mask5, pixels5, _ = _batch(5)
  _, aux5 = _forward(tga_jax.LlavaLVLM(full), params, ids5, mask5, pixels5)
  _, full_aux = vision_tower(full.vision).apply({"params": params["vision"]}, pixels5[0, :1])
  features = np.asarray(full_aux["features"])[0]  # [1 + 16, D]: CLS, then the 4x4 patch grid
  blocks5 = features[1:].reshape(2, 2, 2, 2, -1).mean(axis=(1, 3)).reshape(4, -1)
  expected5, _ = Projector(module.config.projector).apply({"params": params["projector"]},
                                                         np.concatenate([features[:1], blocks5]))
  np.testing.assert_allclose(np.asarray(aux5["image_features"])[0, :5], np.asarray(expected5), atol=1e-5)
  with pytest.raises(ValueError, match="no patch pooling"):
    lvlm_params.config_to_hf(pooled.config)


def test_stage_masks_freeze_the_vision_tower(reference):
  _, folder = reference
  _, params = tga_jax.load_lvlm(folder)
  for stage, trained in ((1, {"projector"}), (2, {"projector", "llm"})):
    mask = tga_jax.trainable_mask(params, stage)
    for group in ("vision", "projector", "llm"):
      leaves = jax.tree.leaves(mask[group])
      assert all(leaves) if group in trained else not any(leaves), (stage, group)
  opt = {"learning_rate": 1e-3, "trainable": tga_jax.trainable_patterns(1), "clip_norm": 1.0}
  import ml_collections
  tx, _, mask = trainkit.make_optimizer(ml_collections.ConfigDict(opt), 10, params)
  state = tx.init(params)
  sizes = sum(x.size for x in jax.tree.leaves(state) if hasattr(x, "size") and x.ndim)
  projector_size = sum(x.size for x in jax.tree.leaves(params["projector"]))
  assert sizes == 2 * projector_size  # Adam moments for the projector only
  with pytest.raises(ValueError, match="stage=3"):
    tga_jax.trainable_patterns(3)


def test_gradients_reach_projector_not_vision(reference):
  _, folder = reference
  module, params = tga_jax.load_lvlm(folder)
  ids, mask, pixels, _ = _batch(16)

  def loss(p):
    logits, _ = module.apply({"params": p}, ids, pixels, mask)
    return (logits ** 2).mean()

  grads = jax.jit(jax.grad(loss))(params)
  assert float(np.abs(np.asarray(grads["projector"]["linear_1"]["kernel"])).max()) > 0
  assert all(float(np.abs(np.asarray(g)).max()) == 0 for g in jax.tree.leaves(grads["vision"]))


def test_bad_inputs_name_the_sample(reference):
  _, folder = reference
  module, params = tga_jax.load_lvlm(folder)
  ids, mask, pixels, counts = _batch(16)
  apply = lambda i, x, **kw: module.apply({"params": params}, i, x, mask, **kw)  # noqa: E731
  with pytest.raises(ValueError, match=r"sample 1: 2 <image> placeholder\(s\) in input_ids but 1 image\(s\) given"):
    apply(ids, pixels, image_counts=np.array([1, 1, 0]))
  with pytest.raises(ValueError, match=r"sample 1: 2 <image> placeholder\(s\) .* 1 image slot"):
    apply(ids, pixels[:, :1])
  broken = ids.copy()
  broken[0, 3] = 5
  with pytest.raises(ValueError, match="sample 0: 15 image tokens"):
    apply(broken, pixels)
  with pytest.raises(ValueError, match=r"pixel_values has shape \(3, 2, 27, 28, 3\)"):
    apply(ids, pixels[:, :, 1:])
  # The data-side batch builder names the sample and image.
  tokens = _tokens_with_images(module, [1, 2, 0])
  good = np.zeros((SIZE, SIZE, 3), np.float32)
  with pytest.raises(ValueError, match=r"sample 2: 0 <image> placeholder\(s\) in the conversation but 1 image"):
    tga_jax.make_lvlm_batch([(tokens[0], [good]), (tokens[1], [good, good]), (tokens[2], [good])], module.config)
  with pytest.raises(trainkit.BadRecord, match=r"sample 1, image 1: preprocessed image has shape \(30, 30, 3\)"):
    tga_jax.make_lvlm_batch([(tokens[0], [good]), (tokens[1], [good, np.zeros((30, 30, 3), np.float32)]),
                             (tokens[2], [])], module.config)


def _tokens_with_images(module, counts, length=48):
  """TokenizedConversations (no tokenizer needed: built by hand) with the given image counts."""
  out = []
  n = module.config.tokens_per_image
  for c in counts:
    ids = np.full(length, 7, np.int32)
    spans = [(1 + k * n, 1 + (k + 1) * n) for k in range(c)]
    for start, end in spans:
      ids[start:end] = IMAGE_ID
    out.append(tga_jax.TokenizedConversation(ids, np.ones(length, np.int32), np.zeros(length, bool),
                                             {"image": spans} if c else {}, c, False, length))
  return out


def test_batch_from_raw_images_runs_under_a_mesh(reference):
  model, folder = reference
  module, params = tga_jax.load_lvlm(folder)
  tokens = _tokens_with_images(module, [1, 2, 0, 1])
  rng = np.random.RandomState(0)
  raw = [rng.randint(0, 256, (20 + 7 * i, 40, 3)).astype(np.uint8) for i in range(4)]
  batch = tga_jax.make_lvlm_batch([(tokens[0], raw[:1]), (tokens[1], raw[1:3]), (tokens[2], []),
                                   (tokens[3], raw[3:])], module.config, max_images=2)
  assert batch["pixel_values"].shape == (4, 2, SIZE, SIZE, 3)
  np.testing.assert_array_equal(batch["image_counts"], [1, 2, 0, 1])
  np.testing.assert_allclose(batch["pixel_values"][1, 1],
                             tga_jax.preprocess_image(raw[2], module.config.image_processing))
  args = (batch["input_ids"], batch["pixel_values"], batch["attention_mask"])
  expected, _ = _forward(module, params, args[0], args[2], args[1])

  mesh = trainkit.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  abstract = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args))
  shardings = trainkit.logical_to_shardings(abstract["params"], mesh, trainkit.DEFAULT_RULES)
  placed = jax.device_put(params, shardings)

  sharded = jax.jit(lambda p, i, x, m: module.apply({"params": p}, i, x, m)[0])
  with jax.set_mesh(mesh), nn.logical_axis_rules(trainkit.DEFAULT_RULES):
    logits = sharded(placed, *args)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), atol=1e-5)
  # A fresh init traces under the mesh too (full-shape kernels keep the logical names valid).
  with jax.set_mesh(mesh), nn.logical_axis_rules(trainkit.DEFAULT_RULES):
    fresh = jax.eval_shape(jax.jit(lambda: module.init(jax.random.PRNGKey(0), *args)))
  assert jax.tree.structure(nn.meta.unbox(fresh["params"])) == jax.tree.structure(params)


def test_conversations_to_batch_to_model(reference):
  from tests.test_conversation import word_tokenizer
  _, folder = reference
  module, params = tga_jax.load_lvlm(folder)
  tok = word_tokenizer()
  records = [
      ({"id": "a", "conversations": [{"from": "human", "value": "<image>\nWhat is this?"},
                                     {"from": "gpt", "value": "A red cat."}]}, "a dog on grass", 1),
      ({"id": "b", "conversations": [{"from": "human", "value": "<image><image>\nCompare them."},
                                     {"from": "gpt", "value": "Both dogs."}]}, "a dog", 2),
      ({"id": "tox", "conversations": [{"from": "human", "value": "What is this?"},
                                       {"from": "gpt", "value": "A red cat."}]}, None, 0),
  ]
  rng = np.random.RandomState(0)
  samples = []
  for record, retrieved, images in records:
    messages = tga_jax.llava_record_to_messages(record, retrieved=retrieved)
    tokens = tga_jax.tokenize_conversation(messages, tok, "llava_llama_2", image_token_id=IMAGE_ID,
                                           tokens_per_image=module.config.tokens_per_image, max_length=112)
    samples.append((tokens, [rng.randint(0, 256, (30, 40, 3)).astype(np.uint8) for _ in range(images)]))
  batch = tga_jax.make_lvlm_batch(samples, module.config, max_images=2)
  fn = jax.jit(lambda p, b: module.apply({"params": p}, b["input_ids"], b["pixel_values"], b["attention_mask"],
                                         output_hidden_states=True, image_counts=b["image_counts"],
                                         segment_masks=b["segments"]))
  logits, aux = fn(params, batch)
  states = np.asarray(aux["hidden_states"])
  for name in ("retrieved", "question", "image"):
    mask = batch["segments"][name]
    for b in range(3):
      if mask[b].any():
        np.testing.assert_allclose(np.asarray(aux["segment_means"][name])[:, b], states[:, b][:, mask[b]].mean(1),
                                   atol=1e-5)
  assert batch["segments"]["retrieved"][2].sum() == 0 and batch["segments"]["question"][2].sum() == 4
  np.testing.assert_array_equal(np.asarray(aux["image_mask"]), batch["segments"]["image"])
  # The text-only sample gives the same logits without any pixel_values.
  alone, _ = jax.jit(lambda p, i, m: module.apply({"params": p}, i, None, m))(
      params, batch["input_ids"][2:], batch["attention_mask"][2:])
  real = batch["attention_mask"][2].astype(bool)
  np.testing.assert_allclose(np.asarray(alone)[0][real], np.asarray(logits)[2][real], atol=1e-5)
  # The LM loss reads logits at t - 1 for every assistant token t.
  targets = batch["input_ids"][:, 1:]
  logp = jax.nn.log_softmax(logits[:, :-1])
  nll = -np.take_along_axis(np.asarray(logp), targets[..., None], -1)[..., 0]
  weights = batch["loss_mask"][:, 1:]
  assert weights.sum() == 5 + 4 + 5 and np.isfinite((nll * weights).sum() / weights.sum())


def test_bfloat16_forward_runs_close_to_float32(reference):
  _, folder = reference
  module, params = tga_jax.load_lvlm(folder)
  half, half_params = tga_jax.load_lvlm(folder, dtype="bfloat16")
  ids, mask, pixels, _ = _batch(16)
  full, _ = jax.jit(lambda p: module.apply({"params": p}, ids, pixels, mask))(params)
  low, _ = jax.jit(lambda p: half.apply({"params": p}, ids, pixels, mask))(half_params)
  real = mask.astype(bool)
  assert np.abs(np.asarray(low)[real] - np.asarray(full)[real]).max() < 0.1


def test_hub_config_with_omitted_defaults():
  # llava-hf/llava-1.5-7b-hf's config.json leaves out every field equal to transformers' defaults.
  hub = {"architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100, "image_token_index": 32000,
         "model_type": "llava", "pad_token_id": 32001, "projector_hidden_act": "gelu",
         "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"],
                         "max_position_embeddings": 4096, "model_type": "llama", "rms_norm_eps": 1e-05,
                         "torch_dtype": "float16", "vocab_size": 32064},
         "tie_word_embeddings": False, "torch_dtype": "float16", "vision_config": {
             "hidden_size": 1024, "image_size": 336, "intermediate_size": 4096, "model_type": "clip_vision_model",
             "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768,
             "vocab_size": 32000},
         "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064}
  config = lvlm_params.config_from_hf(hub, "hub config.json")
  assert config.tokens_per_image == 576 and config.image_token_id == 32000
  assert (config.llm.hidden_size, config.llm.num_layers, config.llm.vocab_size) == (4096, 32, 32064)
  assert config.projector.kind == "mlp2x_gelu" and (config.projector.in_dim, config.projector.out_dim) == (1024, 4096)
  assert config.image_processing.crop_size == 336 and config.image_processing.aspect == "pad"
  with pytest.raises(ValueError, match="vision_feature_layer=\\[-2, -1\\]"):
    lvlm_params.config_from_hf(dict(hub, vision_feature_layer=[-2, -1]), "hub config.json")


def test_bad_llava_checkpoint_lists_every_problem(reference, tmp_path):
  _, folder = reference
  tensors = load_file(os.path.join(folder, "model.safetensors"))
  del tensors["vision_tower.encoder.layers.1.mlp.fc2.bias"]
  tensors["multi_modal_projector.linear_2.weight"] = tensors["multi_modal_projector.linear_2.weight"][:, :5]
  del tensors["language_model.model.layers.2.mlp.up_proj.weight"]
  tensors["extra.weight"] = np.zeros(3, np.float32)
  save_file(tensors, str(tmp_path / "model.safetensors"))
  (tmp_path / "config.json").write_text(open(os.path.join(folder, "config.json")).read())
  with pytest.raises(WeightsError) as err:
    tga_jax.load_lvlm(str(tmp_path))
  message = str(err.value)
  assert "4 tensor(s) do not fit the LLaVA model" in message
  for line in ("missing: vision_tower.encoder.layers.1.mlp.fc2.bias (32,)",
               "shape: multi_modal_projector.linear_2.weight is (64, 5), expected (64, 64)",
               "missing: model.layers.2.mlp.up_proj.weight (96, 64)", "unexpected: extra.weight (3,)"):
    assert line in message, message


def test_greedy_generation_matches_transformers(reference):
  from tga_jax.generate import generate_lvlm, generate_lvlm_tokens
  from tests.test_conversation import word_tokenizer
  model, folder = reference
  module, params = tga_jax.load_lvlm(folder)
  rng = np.random.RandomState(0)
  with_image = list(rng.randint(3, IMAGE_ID, 5)) + [IMAGE_ID] * 16 + list(rng.randint(3, IMAGE_ID, 4))
  text_only = list(rng.randint(3, IMAGE_ID, 9))
  length = len(with_image)
  ids = np.zeros((2, length), np.int32)
  mask = np.zeros((2, length), np.int32)
  ids[0], mask[0] = with_image, 1
  ids[1, length - 9:], mask[1, length - 9:] = text_only, 1   # left padding
  pixels = np.zeros((2, 1, SIZE, SIZE, 3), np.float32)
  pixels[0, 0] = rng.randn(SIZE, SIZE, 3)
  ours = generate_lvlm_tokens(module, params, ids, mask, pixels, 8, eos_token_id=[], image_counts=[1, 0])
  with torch.no_grad():
    first = model.generate(input_ids=torch.tensor([with_image]), max_new_tokens=8, do_sample=False,
                           pixel_values=torch.tensor(pixels[0].transpose(0, 3, 1, 2)), eos_token_id=None,
                           pad_token_id=0)
    second = model.generate(input_ids=torch.tensor([text_only]), max_new_tokens=8, do_sample=False,
                            eos_token_id=None, pad_token_id=0)
  np.testing.assert_array_equal(ours[0], first[0, length:].numpy())
  np.testing.assert_array_equal(ours[1], second[0, 9:].numpy())
  # A prefix both rows start with, computed once (prefix_ids), gives the tokens of the whole prompts.
  prefix = list(rng.randint(3, IMAGE_ID, 6))
  whole_ids = np.zeros((2, length + 6), np.int32)
  whole_mask = np.zeros((2, length + 6), np.int32)
  whole_ids[0], whole_mask[0] = prefix + with_image, 1
  whole_ids[1, -15:], whole_mask[1, -15:] = prefix + text_only, 1   # left padding
  whole = generate_lvlm_tokens(module, params, whole_ids, whole_mask, pixels, 8, eos_token_id=[], image_counts=[1, 0])
  shared = generate_lvlm_tokens(module, params, ids, mask, pixels, 8, eos_token_id=[], image_counts=[1, 0],
                                prefix_ids=prefix)
  np.testing.assert_array_equal(shared, whole)
  assert not np.array_equal(shared, ours)  # the prefix is seen
  with pytest.raises(ValueError, match="prefix_ids"):
    generate_lvlm_tokens(module, params, ids, mask, pixels, 2, image_counts=[1, 0], prefix_ids=[IMAGE_ID])
  # The string API: conversations + raw images in, replies out (cut at EOS); sampling is seeded.
  tok = word_tokenizer()
  chats = [[{"role": "user", "content": "<image>\nWhat is this?"}], [{"role": "user", "content": "And its eyes?"}]]
  images = [[rng.randint(0, 256, (30, 20, 3)).astype(np.uint8)], []]
  sampled = [generate_lvlm(module, params, tok, chats, images, "vicuna_v1", max_new_tokens=4, temperature=1.0,
                           seed=3) for _ in range(2)]
  assert len(sampled[0]) == 2 and all(isinstance(t, str) for t in sampled[0]) and sampled[0] == sampled[1]
  with pytest.raises(ValueError, match="conversation 1: 0 <image> placeholder"):
    generate_lvlm(module, params, tok, chats, [images[0], images[0]], "vicuna_v1", max_new_tokens=2)


def test_stage_one_trainkit_step_updates_only_the_projector(reference):
  import ml_collections
  _, folder = reference
  module, params = tga_jax.load_lvlm(folder)
  tokens = _tokens_with_images(module, [1, 2, 0, 1], length=40)
  for t in tokens:
    t.loss_mask[20:30] = True
  rng = np.random.RandomState(0)
  images = [[rng.randint(0, 256, (30, 24, 3)).astype(np.uint8) for _ in range(t.num_images)] for t in tokens]
  batch = tga_jax.make_lvlm_batch(list(zip(tokens, images)), module.config, max_images=2)

  def loss_fn(p, b, _rng):
    logits, _ = module.apply({"params": p}, b["input_ids"], b["pixel_values"], b["attention_mask"])
    logp = jax.nn.log_softmax(logits[:, :-1])
    nll = -jax.numpy.take_along_axis(logp, b["input_ids"][:, 1:, None], -1)[..., 0]
    weights = b["loss_mask"][:, 1:]
    return (nll * weights).sum() / weights.sum(), {}

  mesh = trainkit.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  example = (batch["input_ids"], batch["pixel_values"], batch["attention_mask"])
  init = lambda r: module.init(r, *example)["params"]  # noqa: E731
  opt = ml_collections.ConfigDict({"learning_rate": 1e-2, "trainable": tga_jax.trainable_patterns(1)})
  tx, schedule, trainable = trainkit.make_optimizer(opt, 10, params)
  state, shardings = trainkit.create_train_state(init, tx, mesh, trainkit.DEFAULT_RULES, 0, params=params)
  step = trainkit.make_train_step(loss_fn, tx, shardings, trainkit.batch_sharding(mesh), mesh=mesh,
                                  rules=trainkit.DEFAULT_RULES, schedule=schedule, trainable=trainable)
  new_state, metrics = step(state, batch)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), params,
                         jax.tree.map(np.asarray, new_state.params))
  assert all(jax.tree.leaves(changed["projector"]))
  assert not any(jax.tree.leaves(changed["vision"])) and not any(jax.tree.leaves(changed["llm"]))


def test_add_image_token_then_export_a_composition(reference, tmp_path):
  model, folder = reference
  module, params = tga_jax.load_lvlm(folder)
  tga_jax.save_llm_hf(module.config.llm, params["llm"], str(tmp_path / "llm"))
  model.model.vision_tower.save_pretrained(str(tmp_path / "clip"))
  composed, composed_params = tga_jax.compose_lvlm(str(tmp_path / "clip"), str(tmp_path / "llm"))
  with pytest.raises(ValueError, match="image_token_id=-200 is outside the vocabulary"):
    tga_jax.save_lvlm_hf(composed, composed_params, str(tmp_path / "export"))
  grown, grown_params = lvlm_params.add_image_token(composed, composed_params)
  assert grown.config.image_token_id == VOCAB and grown.config.llm.vocab_size == 192
  ids, mask, pixels, counts = _batch(16)
  old_ids = np.where(ids == IMAGE_ID, -200, ids)
  new_ids = np.where(ids == IMAGE_ID, VOCAB, ids)
  before, _ = _forward(composed, composed_params, old_ids, mask, pixels)
  after, _ = _forward(grown, grown_params, new_ids, mask, pixels)
  np.testing.assert_allclose(np.asarray(after)[..., :VOCAB], np.asarray(before), atol=1e-5)
  tga_jax.save_lvlm_hf(grown, grown_params, str(tmp_path / "export"))
  reloaded = transformers.LlavaForConditionalGeneration.from_pretrained(str(tmp_path / "export")).eval()
  ref = _torch_forward(reloaded, new_ids, mask, pixels, counts)
  real = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(after)[real], ref.logits.numpy()[real], atol=TOL)
