"""The architectures of the paper's named models, as their Hugging Face config.json files state them.

No weights here, only shapes: the planner (`python -m trainkit.plan`) builds the paper's 7B models from
these when a config names weights that are not on this machine (`config.model.architecture`).

    vision = vision_config("clip-vit-large-patch14-336", dtype="bfloat16")   # -> ClipConfig
    llm = llm_config("vicuna-7b-v1.5", dtype="bfloat16", remat_policy="nothing_saveable")   # -> LlamaConfig
"""
from __future__ import annotations

from tga_jax.models.clip import ClipConfig
from tga_jax.models.llama import LlamaConfig
from tga_jax.weights.clip import vision_config_from_hf
from tga_jax.weights.llama import config_from_hf

# The `vision_config` section of openai/clip-vit-large-patch14-336 (LLaVA-1.5's vision tower).
VISION = {
    "clip-vit-large-patch14-336": dict(
        model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
        num_attention_heads=16, image_size=336, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5),
}

# config.json of lmsys/vicuna-7b-v1.5 (a LLaMA-2-7B) and mistralai/Mistral-7B-Instruct-v0.2 (grouped-query
# attention with 8 KV heads, a wider MLP, rope_theta 1e6, no sliding window in v0.2).
LLM = {
    "vicuna-7b-v1.5": dict(
        architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=32000, hidden_size=4096,
        intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
        max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, hidden_act="silu"),
    "mistral-7b-instruct-v0.2": dict(
        architectures=["MistralForCausalLM"], model_type="mistral", vocab_size=32000, hidden_size=4096,
        intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=1000000.0, sliding_window=None,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, hidden_act="silu"),
}


def _lookup(table: dict, name: str, what: str) -> dict:
  key = name.lower()
  if key not in table:
    raise KeyError(f"no {what} architecture named {name!r}; known: {sorted(table)}")
  return table[key]


def vision_config(name: str, **overrides) -> ClipConfig:
  """The ClipConfig of a named vision tower; overrides: feature_layer, feature_strategy, dtype, param_dtype."""
  return vision_config_from_hf(_lookup(VISION, name, "vision"), f"architecture {name!r}", **overrides)


def llm_config(name: str, **overrides) -> LlamaConfig:
  """The LlamaConfig of a named LLM; overrides: dtype, param_dtype, remat_policy, scan_unroll."""
  return config_from_hf(_lookup(LLM, name, "LLM"), f"architecture {name!r}", **overrides)
