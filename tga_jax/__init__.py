"""TGA in JAX: LLaMA-family decoders (this file's exports), later the LLaVA-style models and TGA.

    module, params = tga_jax.load_llm("smollm2-135m-instruct")   # HF folder, .gguf, or a known name
    tokenizer = tga_jax.load_tokenizer("smollm2-135m-instruct")
    logits, aux = module.apply({"params": params}, input_ids, attention_mask, output_hidden_states=True)
    texts = tga_jax.generate(module, params, tokenizer, ["Hello"], max_new_tokens=32)
"""
from tga_jax.generate import generate, generate_tokens
from tga_jax.llama import LlamaConfig, LlamaForCausalLM, init_cache
from tga_jax.llama_params import WeightsError
from tga_jax.llm_loading import load_llm, save_llm_hf
from tga_jax.models import KNOWN_MODELS
from tga_jax.tokenizer import encode_chat, load_tokenizer

__all__ = [
    "KNOWN_MODELS", "LlamaConfig", "LlamaForCausalLM", "WeightsError", "encode_chat", "generate",
    "generate_tokens", "init_cache", "load_llm", "load_tokenizer", "save_llm_hf",
]
