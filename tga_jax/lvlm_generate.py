"""Generation from the LVLM: a jitted prefill with the images, then a jitted decode loop on the LLM alone.

    texts = generate_lvlm(module, params, tokenizer, [messages_a, messages_b], [[image_a], []],
                          template="vicuna_v1", max_new_tokens=64)

Prompts are left-padded into one batch and the KV cache has room for prompt + max_new_tokens, so every
step has one shape. Images only enter during the prefill (their features fill the cache), after which
decoding is the plain LLM's. Greedy by default; temperature / top-k / top-p sampling with a seed.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tga_jax.conversation import tokenize_conversation
from tga_jax.generate import sample_next
from tga_jax.llama import LlamaForCausalLM, init_cache
from tga_jax.lvlm import LlavaLVLM, LvlmConfig, check_lvlm_inputs
from tga_jax.lvlm_batch import make_lvlm_example


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "greedy", "eos", "pad"))
def _generate(params, input_ids, prompt_mask, pixel_values, rng, sampling, *, config: LvlmConfig,
              max_new_tokens: int, greedy: bool, eos: tuple, pad: int):
  module, llm = LlavaLVLM(config), config.llm
  batch, length = input_ids.shape
  total = length + max_new_tokens
  kv_mask = jnp.zeros((batch, total), jnp.int32).at[:, :length].set(prompt_mask)
  positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=-1) - 1, 0)
  logits, aux = module.apply({"params": params}, input_ids, pixel_values, kv_mask, position_ids=positions,
                             cache=init_cache(llm, batch, total), cache_index=0, last_only=True)
  eos_ids = jnp.asarray(eos, jnp.int32)
  token = sample_next(logits, jax.random.fold_in(rng, 0), None if greedy else sampling)
  state = dict(cache=aux["cache"], kv_mask=kv_mask, last=token, position=jnp.sum(prompt_mask, -1).astype(jnp.int32),
               tokens=jnp.full((batch, max_new_tokens), pad, jnp.int32).at[:, 0].set(token),
               finished=jnp.isin(token, eos_ids))
  decoder = LlamaForCausalLM(llm)

  def step(i, s):
    slot = length + i - 1  # the cache slot of the token sampled last
    kv_mask = s["kv_mask"].at[:, slot].set(1)
    logits, aux = decoder.apply({"params": params["llm"]}, s["last"][:, None], kv_mask, s["position"][:, None],
                                cache=s["cache"], cache_index=slot, last_only=True)
    token = sample_next(logits, jax.random.fold_in(rng, i), None if greedy else sampling)
    token = jnp.where(s["finished"], pad, token)
    return dict(s, cache=aux["cache"], kv_mask=kv_mask, last=token, position=s["position"] + 1,
                tokens=s["tokens"].at[:, i].set(token), finished=s["finished"] | jnp.isin(token, eos_ids))

  return jax.lax.fori_loop(1, max_new_tokens, step, state)["tokens"]


def generate_lvlm_tokens(module: LlavaLVLM, params, input_ids, attention_mask, pixel_values, max_new_tokens: int,
                         *, eos_token_id=None, pad_token_id: int | None = None, temperature: float = 0.0,
                         top_k: int = 0, top_p: float = 1.0, seed: int = 0, image_counts=None) -> np.ndarray:
  """Left-padded int[B, T] prompts with their pixel_values float[B, M, S, S, 3] (or None)
  -> int32[B, max_new_tokens] new tokens (after a row's EOS: `pad_token_id`, default the first EOS)."""
  if module.config.llm.scan_layers is False:
    raise ValueError("generate_lvlm_tokens expects the stacked (scan_layers=True) LLM layout load_lvlm gives")
  input_ids = np.asarray(input_ids, np.int32)
  attention_mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask, np.int32)
  if attention_mask.shape != input_ids.shape or np.any(attention_mask[:, -1] == 0):
    raise ValueError("prompts must be left-padded, with attention_mask of input_ids' shape whose last column is 1")
  if pixel_values is not None:
    pixel_values = np.asarray(pixel_values, np.float32)
    pixel_values = pixel_values[:, None] if pixel_values.ndim == 4 else pixel_values
  check_lvlm_inputs(module.config, input_ids, pixel_values, image_counts)
  eos = eos_token_id if eos_token_id is not None else module.config.llm.eos_token_id
  eos = tuple(sorted({int(e) for e in ([] if eos is None else [eos] if isinstance(eos, int) else eos)}))
  pad = int(pad_token_id if pad_token_id is not None else (eos[0] if eos else 0))
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens}: expected >= 1")
  sampling = (jnp.float32(temperature if temperature > 0 else 1.0), jnp.int32(top_k), jnp.float32(top_p))
  tokens = _generate(params, input_ids, attention_mask, pixel_values, jax.random.PRNGKey(seed), sampling,
                     config=module.config, max_new_tokens=max_new_tokens, greedy=temperature == 0, eos=eos, pad=pad)
  return np.asarray(tokens)


def generate_lvlm(module: LlavaLVLM, params, tokenizer, conversations, images, template: str,
                  max_new_tokens: int = 64, *, system: str | None = None, max_images: int | None = None,
                  **sampling) -> list[str]:
  """Conversations (tga_jax.conversation messages ending with the user's turn) and their images (raw
  uint8 or preprocessed, one list per conversation) -> the generated replies, decoded, cut at EOS."""
  if len(conversations) != len(images):
    raise ValueError(f"{len(conversations)} conversations but {len(images)} image lists")
  cfg = module.config
  tokenized = [tokenize_conversation(messages, tokenizer, template, image_token_id=cfg.image_token_id,
                                     tokens_per_image=cfg.tokens_per_image, pad=False, system=system,
                                     add_generation_prompt=True) for messages in conversations]
  slots = max_images or max([1] + [t.num_images for t in tokenized])
  examples = [make_lvlm_example(t, imgs, cfg, slots, where=f"conversation {b}")
              for b, (t, imgs) in enumerate(zip(tokenized, images))]
  length = max(t.length for t in tokenized)
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  ids = np.full((len(tokenized), length), pad, np.int32)
  mask = np.zeros((len(tokenized), length), np.int32)
  for row, t in enumerate(tokenized):
    ids[row, length - t.length:] = t.input_ids[:t.length]
    mask[row, length - t.length:] = 1
  pixels = np.stack([e["pixel_values"] for e in examples])
  counts = np.asarray([e["image_count"] for e in examples])
  eos = sampling.pop("eos_token_id", None)
  eos = eos if eos is not None else tokenizer.eos_token_id
  tokens = generate_lvlm_tokens(module, params, ids, mask, pixels, max_new_tokens, eos_token_id=eos,
                                image_counts=counts, **sampling)
  eos_set = {eos} if isinstance(eos, int) else set(eos or ())
  texts = []
  for row in tokens.tolist():
    cut = next((i for i, t in enumerate(row) if t in eos_set), len(row))
    texts.append(tokenizer.decode(row[:cut], skip_special_tokens=True))
  return texts
