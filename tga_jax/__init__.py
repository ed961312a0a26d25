"""TGA in JAX: LLaMA-family decoders (this file's exports), later the LLaVA-style models and TGA.

    module, params = tga_jax.load_llm("smollm2-135m-instruct")   # HF folder, .gguf, or a known name
    tokenizer = tga_jax.load_tokenizer("smollm2-135m-instruct")
    logits, aux = module.apply({"params": params}, input_ids, attention_mask, output_hidden_states=True)
    texts = tga_jax.generate(module, params, tokenizer, ["Hello"], max_new_tokens=32)
"""
from tga_jax.generate import generate, generate_tokens
from tga_jax.llama import LlamaConfig, LlamaForCausalLM, init_cache, stack_layers, unstack_layers
from tga_jax.llama_params import WeightsError
from tga_jax.llm_loading import load_llm, save_llm_hf
from tga_jax.models import KNOWN_MODELS
from tga_jax.tokenizer import encode_chat, load_tokenizer
# Vision-language (LLaVA-style) models: CLIP towers, preprocessing, projector, conversations, loading.
from tga_jax.clip import ClipConfig, ClipModel, ClipTextTransformer, ClipVisionTransformer
from tga_jax.clip_params import load_clip, load_clip_vision
from tga_jax.conversation import (TEMPLATES, TokenizedConversation, caption_messages, llava_record_to_messages,
                                  tokenize_conversation)
from tga_jax.image_processing import ImageProcessingConfig, preprocess_image, preprocess_images
from tga_jax.lvlm import LlavaLVLM, LvlmConfig
from tga_jax.lvlm_batch import make_lvlm_batch, make_lvlm_example
from tga_jax.lvlm_generate import generate_lvlm, generate_lvlm_tokens
from tga_jax.lvlm_params import (add_image_token, compose_lvlm, load_lvlm, save_lvlm_hf, save_projector,
                                 trainable_mask, trainable_patterns)
from tga_jax.projector import Projector, ProjectorConfig
from tga_jax.siglip import SiglipVisionTransformer
# Safety analysis (logit lens, Algorithm 1) and evaluation (judges, DSR, general-ability metrics).
from tga_jax.analysis import DEFAULT_REFUSAL_PHRASES, lens_logits, refusal_token_ids, safety_layers
from tga_jax.eval_metrics import extract_choice, mc_accuracy, pope_metrics, vqa_accuracy
from tga_jax.judge import LlmJudge, RefusalPhraseJudge, defense_success_rate, dsr_table

__all__ = [
    "KNOWN_MODELS", "LlamaConfig", "LlamaForCausalLM", "WeightsError", "encode_chat", "generate",
    "generate_tokens", "init_cache", "load_llm", "load_tokenizer", "save_llm_hf", "stack_layers",
    "unstack_layers",
    "ClipConfig", "ClipModel", "ClipTextTransformer", "ClipVisionTransformer", "ImageProcessingConfig",
    "LlavaLVLM", "LvlmConfig", "Projector", "ProjectorConfig", "TEMPLATES", "TokenizedConversation",
    "caption_messages", "compose_lvlm", "llava_record_to_messages", "load_clip", "load_clip_vision", "load_lvlm",
    "make_lvlm_batch", "make_lvlm_example", "preprocess_image", "preprocess_images", "save_lvlm_hf",
    "save_projector",
    "tokenize_conversation", "trainable_mask", "trainable_patterns", "SiglipVisionTransformer", "generate_lvlm",
    "generate_lvlm_tokens", "add_image_token",
    "DEFAULT_REFUSAL_PHRASES", "lens_logits", "refusal_token_ids", "safety_layers", "extract_choice", "mc_accuracy",
    "pope_metrics", "vqa_accuracy", "LlmJudge", "RefusalPhraseJudge", "defense_success_rate", "dsr_table",
]
