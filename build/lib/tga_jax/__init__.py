"""TGA in JAX: LLaVA-style vision-language models, where an LLM's safety acts, and Text-Guided Alignment.

    module, params = tga_jax.load_llm("smollm2-135m-instruct")   # HF folder, .gguf, or a known name
    tokenizer = tga_jax.load_tokenizer("smollm2-135m-instruct")
    logits, aux = module.apply({"params": params}, input_ids, attention_mask, output_hidden_states=True)
    texts = tga_jax.generate(module, params, tokenizer, ["Hello"], max_new_tokens=32)

The package in rooms, each importing only the rooms below it:
  miniature/  the offline safety-transfer experiment (on top of everything)
  safety/     where safety acts (logit lens, Algorithm 1, probes), DSR evaluation, judges, metrics; CLIs
  train, guidance, retrieval, annotate, generate, chat   the method, generation and their CLIs
  data/       tokenisers, conversation templates and spans, image processing, LVLM batches, LLaVA data
  weights/    the safetensors reader, GGUF, per-family key tables, load/save, packaged model names
  models/     pure Linen modules: LLaMA-family decoder, CLIP/SigLIP towers, projector, the LVLM
"""
# models/
from tga_jax.models.clip import ClipConfig, ClipModel, ClipTextTransformer, ClipVisionTransformer
from tga_jax.models.image_config import ImageProcessingConfig
from tga_jax.models.llama import LlamaConfig, LlamaForCausalLM, init_cache, stack_layers, unstack_layers
from tga_jax.models.lvlm import LlavaLVLM, LvlmConfig
from tga_jax.models.projector import Projector, ProjectorConfig
from tga_jax.models.siglip import SiglipVisionTransformer
# weights/
from tga_jax.weights.clip import load_clip, load_clip_vision
from tga_jax.weights.known_models import KNOWN_MODELS
from tga_jax.weights.llm import load_llm, save_llm_hf
from tga_jax.weights.lvlm import (add_image_token, compose_lvlm, load_lvlm, save_lvlm_hf, save_projector,
                                  trainable_mask, trainable_patterns)
from tga_jax.weights.safetensors_io import WeightsError
# data/
from tga_jax.data.conversation import (TEMPLATES, TokenizedConversation, caption_messages, llava_record_to_messages,
                                       tokenize_conversation)
from tga_jax.data.image_processing import preprocess_image, preprocess_images
from tga_jax.data.lvlm_batch import make_lvlm_batch, make_lvlm_example
from tga_jax.data.tokenizer import encode_chat, load_tokenizer
# generation (LLM and LVLM)
from tga_jax.generate import generate, generate_lvlm, generate_lvlm_tokens, generate_tokens
# safety/: analysis (logit lens, Algorithm 1) and evaluation (judges, DSR, general-ability metrics)
from tga_jax.safety.analysis import DEFAULT_REFUSAL_PHRASES, lens_logits, refusal_token_ids, safety_layers
from tga_jax.safety.eval_metrics import extract_choice, mc_accuracy, pope_metrics, vqa_accuracy
from tga_jax.safety.judge import LlmJudge, RefusalPhraseJudge, defense_success_rate, dsr_table


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
