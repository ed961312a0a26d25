"""Generation for the LLM and the LVLM with a static-shape KV cache: one jitted prefill, then a jitted lax
decode loop.

    texts = generate(module, params, tokenizer, ["Hello", "Tell me a joke"], max_new_tokens=32)
    texts = generate_lvlm(lvlm, params, tokenizer, [messages_a, messages_b], [[image_a], []],
                          template="vicuna_v1", max_new_tokens=64)

Prompts are left-padded into one batch; the cache has room for the padded prompt plus max_new_tokens,
so every decode step has the same shapes and compiles once. Greedy by default; temperature, top-k and
top-p sampling with a seed. Rows stop at EOS (then emit padding); stop strings are checked on the host
between decode chunks, which is also where tokens are streamed. For the LVLM, images only enter during
the prefill (their features fill the cache), after which decoding is the plain LLM's.

The command line (`python -m tga_jax.chat`) applies the chat template and streams tokens as they come.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tga_jax.data.conversation import tokenize_conversation
from tga_jax.data.lvlm_batch import make_lvlm_example
from tga_jax.data.tokenizer import encode_chat
from tga_jax.models.llama import LlamaConfig, LlamaForCausalLM, init_cache, unstack_layers
from tga_jax.models.lvlm import LlavaLVLM, LvlmConfig, check_lvlm_inputs


def sample_next(logits, rng, sampling):
  """float32[B, V] -> int32[B].

  `sampling` is None for greedy (argmax), else (temperature, top_k, top_p) as scalars (traced, so that
  changing them does not recompile): temperature, then top-k (0 = off), then top-p (1 = off) filtering,
  in transformers' order, then a categorical draw.
  """
  if sampling is None:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  temperature, top_k, top_p = sampling
  logits = logits / temperature
  neg = jnp.finfo(logits.dtype).min
  ordered = jnp.sort(logits, axis=-1)[:, ::-1]
  vocab = logits.shape[-1]
  kth = jnp.take(ordered, jnp.clip(jnp.where(top_k > 0, top_k, vocab) - 1, 0, vocab - 1), axis=-1)
  ordered = jnp.where(ordered < kth[:, None], neg, ordered)
  probs = jax.nn.softmax(ordered, axis=-1)
  # Keep the smallest prefix whose mass reaches top_p (the most likely token always stays).
  keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p
  threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
  logits = jnp.where(logits < jnp.maximum(threshold, kth[:, None]), neg, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "greedy", "eos", "pad"))
def _prefill(params, input_ids, prompt_mask, rng, sampling, *, config: LlamaConfig, max_new_tokens: int,
             greedy: bool, eos: tuple, pad: int):
  """Runs the prompts, samples the first new token and returns the decode state."""
  model = LlamaForCausalLM(config)
  batch, length = input_ids.shape
  total = length + max_new_tokens
  kv_mask = jnp.zeros((batch, total), jnp.int32).at[:, :length].set(prompt_mask)
  # Positions count real tokens only, so a left-padded row starts at position 0 as it would alone.
  positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=-1) - 1, 0)
  logits, aux = model.apply({"params": params}, input_ids, kv_mask, positions,
                            cache=init_cache(config, batch, total), cache_index=0, last_only=True)
  token = sample_next(logits, jax.random.fold_in(rng, 0), None if greedy else sampling)
  tokens = jnp.full((batch, max_new_tokens), pad, jnp.int32).at[:, 0].set(token)
  return {
      "cache": aux["cache"], "kv_mask": kv_mask, "tokens": tokens, "last": token,
      "position": jnp.sum(prompt_mask, axis=-1).astype(jnp.int32),
      "step": jnp.ones((), jnp.int32), "finished": jnp.isin(token, jnp.asarray(eos, jnp.int32)), "rng": rng,
  }


@functools.partial(jax.jit, static_argnames=("config", "greedy", "eos", "pad"), donate_argnums=1)
def _decode(params, state, limit, sampling, *, config: LlamaConfig, greedy: bool, eos: tuple, pad: int):
  """Decodes until `state['step'] == limit` or every row has finished (a lax while loop)."""
  model = LlamaForCausalLM(config)
  prompt_length = state["kv_mask"].shape[1] - state["tokens"].shape[1]
  eos_ids = jnp.asarray(eos, jnp.int32)

  def cond(s):
    return (s["step"] < limit) & ~jnp.all(s["finished"])

  def body(s):
    slot = prompt_length + s["step"] - 1  # the cache slot of the token sampled last
    kv_mask = jax.lax.dynamic_update_slice(s["kv_mask"], jnp.ones((s["last"].shape[0], 1), jnp.int32), (0, slot))
    logits, aux = model.apply({"params": params}, s["last"][:, None], kv_mask, s["position"][:, None],
                              cache=s["cache"], cache_index=slot, last_only=True)
    token = sample_next(logits, jax.random.fold_in(s["rng"], s["step"]), None if greedy else sampling)
    token = jnp.where(s["finished"], pad, token)
    tokens = jax.lax.dynamic_update_slice(s["tokens"], token[:, None], (0, s["step"]))
    return dict(s, cache=aux["cache"], kv_mask=kv_mask, tokens=tokens, last=token, position=s["position"] + 1,
                step=s["step"] + 1, finished=s["finished"] | jnp.isin(token, eos_ids))

  return jax.lax.while_loop(cond, body, state)


def _eos_ids(config: LlamaConfig, tokenizer, eos_token_id) -> tuple[int, ...]:
  ids = set()
  for source in (eos_token_id, config.eos_token_id, getattr(tokenizer, "eos_token_id", None)):
    if source is None:
      continue
    ids.update([source] if isinstance(source, int) else source)
  return tuple(sorted(int(i) for i in ids))


def left_pad(sequences: Sequence[Sequence[int]], pad: int, multiple: int = 16) -> tuple[np.ndarray, np.ndarray]:
  """Token id lists -> (int32[B, T], int32[B, T] mask), left-padded; T rounded up to `multiple` so that
  prompts of similar length share one compiled program."""
  if not sequences or any(len(s) == 0 for s in sequences):
    raise ValueError("every prompt needs at least one token")
  length = -(-max(len(s) for s in sequences) // multiple) * multiple
  ids = np.full((len(sequences), length), pad, np.int32)
  mask = np.zeros((len(sequences), length), np.int32)
  for row, seq in enumerate(sequences):
    ids[row, length - len(seq):] = seq
    mask[row, length - len(seq):] = 1
  return ids, mask


def generate_tokens(module: LlamaForCausalLM, params, input_ids, attention_mask, max_new_tokens: int, *,
                    temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                    eos_token_id=None, pad_token_id: int | None = None, chunk_size: int | None = None,
                    on_chunk: Callable[[np.ndarray, np.ndarray], bool | None] | None = None) -> np.ndarray:
  """Left-padded int[B, T] prompts (mask int[B, T]) -> int32[B, max_new_tokens] new tokens.

  After a row's EOS come `pad_token_id`s (default: the first EOS id), as in transformers.
  Args:
    chunk_size: decode steps per jitted call (default: all); `on_chunk(tokens int32[B, n],
      finished bool[B])` runs after each chunk and may return a bool[B] of rows to stop (stop strings).
  """
  config = module.config
  if config.scan_layers:
    # Decoding reads every weight once per token; separate per-layer buffers avoid XLA CPU's copy of each
    # layer's slice out of the stacked weights (4x faster at batch 1). Prefill runs this way too.
    config = dataclasses.replace(config, scan_layers=False)
    params = unstack_layers(params)
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens}: expected >= 1")
  input_ids = np.asarray(input_ids, np.int32)
  attention_mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask, np.int32)
  if attention_mask.shape != input_ids.shape:
    raise ValueError(f"attention_mask shape {attention_mask.shape} != input_ids shape {input_ids.shape}")
  if np.any(attention_mask[:, -1] == 0):
    raise ValueError("prompts must be left-padded (the last column of attention_mask must be all 1)")
  eos = _eos_ids(config, None, eos_token_id)
  pad = int(pad_token_id if pad_token_id is not None else (eos[0] if eos else 0))
  if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
    raise ValueError(f"temperature={temperature}, top_k={top_k}, top_p={top_p}: expected temperature >= 0, "
                     f"top_k >= 0, 0 < top_p <= 1")
  sampling = (jnp.float32(temperature if temperature > 0 else 1.0), jnp.int32(top_k), jnp.float32(top_p))
  static = dict(config=config, greedy=temperature == 0, eos=eos, pad=pad)
  state = _prefill(params, input_ids, attention_mask, jax.random.PRNGKey(seed), sampling,
                   max_new_tokens=max_new_tokens, **static)
  chunk = max_new_tokens if chunk_size is None else max(int(chunk_size), 1)
  step = 1
  while True:
    if on_chunk is not None:
      stop = on_chunk(np.asarray(state["tokens"][:, :step]), np.asarray(state["finished"]))
      if stop is not None and np.any(stop):
        state["finished"] = state["finished"] | jnp.asarray(stop)
    if step >= max_new_tokens or bool(jnp.all(state["finished"])):
      break
    step = min(step + chunk, max_new_tokens)
    state = _decode(params, state, jnp.asarray(step, jnp.int32), sampling, **static)
    step = int(state["step"])
  return np.asarray(state["tokens"])


def _cut(tokens: np.ndarray, eos: tuple) -> list[int]:
  out = []
  for t in tokens.tolist():
    if t in eos:
      break
    out.append(t)
  return out


def generate(module: LlamaForCausalLM, params, tokenizer, prompts: str | Sequence[str], max_new_tokens: int = 64,
             *, chat: bool = False, system: str | None = None, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, seed: int = 0, stop: Sequence[str] = (), eos_token_id=None,
             stream: Callable[[int, str], None] | None = None, chunk_size: int | None = None) -> list[str]:
  """Continuations of `prompts` (a string or a list of strings, or lists of token ids) -> list of strings.

  Args:
    chat: wrap each prompt as a user turn with the tokenizer's chat template (and `system` if given).
    temperature: 0 = greedy; else sampling with `top_k` (0 = off), `top_p` (1 = off) and `seed`.
    stop: strings that end a row; the returned text stops before the first one.
    stream: called as `stream(row, new_text)` as tokens arrive (decodes in chunks of `chunk_size`,
      default 1 token when streaming, 16 with stop strings).
  Returns:
    The new text of each prompt (special tokens skipped, cut at EOS and at the first stop string).
  """
  if isinstance(prompts, str):
    prompts = [prompts]
  encoded = []
  for prompt in prompts:
    if not isinstance(prompt, str):
      encoded.append([int(t) for t in prompt])
    elif chat:
      encoded.append(encode_chat(tokenizer, prompt, system))
    else:
      encoded.append(tokenizer(prompt)["input_ids"])
  eos = _eos_ids(module.config, tokenizer, eos_token_id)
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
  ids, mask = left_pad(encoded, pad)
  stop = tuple(stop)
  shown = [""] * len(encoded)

  def text_of(row_tokens):
    return tokenizer.decode(_cut(row_tokens, eos), skip_special_tokens=True)

  def on_chunk(tokens, finished):
    stopped = np.zeros(len(tokens), bool)
    for row in range(len(tokens)):
      text = text_of(tokens[row])
      cut = min((text.find(s) for s in stop if s in text), default=-1)
      if cut >= 0:
        text, stopped[row] = text[:cut], True
      elif not finished[row]:
        # Hold back a stop string's possible beginning and an incomplete multi-byte character.
        hold = max((k for s in stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        text = text[:len(text) - hold] if hold else text
        text = text.rstrip("\ufffd")
      if stream is not None and len(text) > len(shown[row]) and text.startswith(shown[row]):
        stream(row, text[len(shown[row]):])
      shown[row] = text if text.startswith(shown[row]) else shown[row]
    return stopped

  if chunk_size is None and (stream is not None or stop):
    chunk_size = 1 if stream is not None else 16
  tokens = generate_tokens(module, params, ids, mask, max_new_tokens, temperature=temperature, top_k=top_k,
                           top_p=top_p, seed=seed, eos_token_id=eos, pad_token_id=pad, chunk_size=chunk_size,
                           on_chunk=on_chunk if (stream is not None or stop) else None)
  results = []
  for row in range(len(encoded)):
    text = text_of(tokens[row])
    for s in stop:
      if s in text:
        text = text[:text.find(s)]
    if stream is not None and len(text) > len(shown[row]) and text.startswith(shown[row]):
      stream(row, text[len(shown[row]):])
    results.append(text)
  return results


# ---------------------------------------------------------------- the LVLM: images in the prefill


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "greedy", "eos", "pad"))
def _generate_lvlm(params, input_ids, prompt_mask, pixel_values, rng, sampling, prefix_ids=None, *,
                   config: LvlmConfig, max_new_tokens: int, greedy: bool, eos: tuple, pad: int):
  module, llm = LlavaLVLM(config), config.llm
  decoder = LlamaForCausalLM(llm)
  batch, length = input_ids.shape
  shared = 0 if prefix_ids is None else prefix_ids.shape[0]
  total = shared + length + max_new_tokens
  cache = init_cache(llm, batch, total)
  kv_mask = jnp.zeros((batch, total), jnp.int32).at[:, shared:shared + length].set(prompt_mask)
  if shared:
    # The tokens every row starts with, computed once and copied to each row: slots [0, shared), then
    # each row's left-padded rest. Positions count real tokens only, so every row sees the positions
    # (and the attention) it would see with the whole prompt left-padded.
    one = init_cache(llm, 1, total)
    filled = jnp.zeros((1, total), jnp.int32).at[:, :shared].set(1)
    _, prefix_aux = decoder.apply({"params": params["llm"]}, prefix_ids[None], filled,
                                  jnp.arange(shared, dtype=jnp.int32)[None], cache=one, cache_index=0,
                                  last_only=True)
    cache = jax.tree.map(lambda x: jnp.repeat(x, batch, axis=1), prefix_aux["cache"])
    kv_mask = kv_mask.at[:, :shared].set(1)
  positions = shared + jnp.maximum(jnp.cumsum(prompt_mask, axis=-1) - 1, 0)
  logits, aux = module.apply({"params": params}, input_ids, pixel_values, kv_mask, position_ids=positions,
                             cache=cache, cache_index=shared, last_only=True)
  eos_ids = jnp.asarray(eos, jnp.int32)
  token = sample_next(logits, jax.random.fold_in(rng, 0), None if greedy else sampling)
  state = dict(cache=aux["cache"], kv_mask=kv_mask, last=token,
               position=shared + jnp.sum(prompt_mask, -1).astype(jnp.int32),
               tokens=jnp.full((batch, max_new_tokens), pad, jnp.int32).at[:, 0].set(token),
               finished=jnp.isin(token, eos_ids))

  def step(i, s):
    slot = shared + length + i - 1  # the cache slot of the token sampled last
    kv_mask = s["kv_mask"].at[:, slot].set(1)
    logits, aux = decoder.apply({"params": params["llm"]}, s["last"][:, None], kv_mask, s["position"][:, None],
                                cache=s["cache"], cache_index=slot, last_only=True)
    token = sample_next(logits, jax.random.fold_in(rng, i), None if greedy else sampling)
    token = jnp.where(s["finished"], pad, token)
    return dict(s, cache=aux["cache"], kv_mask=kv_mask, last=token, position=s["position"] + 1,
                tokens=s["tokens"].at[:, i].set(token), finished=s["finished"] | jnp.isin(token, eos_ids))

  # Stops once every row has ended (its later tokens are pad either way): short replies decode few steps.
  def running(carry):
    i, s = carry
    return (i < max_new_tokens) & ~jnp.all(s["finished"])

  return jax.lax.while_loop(running, lambda carry: (carry[0] + 1, step(*carry)), (jnp.int32(1), state))[1]["tokens"]


def generate_lvlm_tokens(module: LlavaLVLM, params, input_ids, attention_mask, pixel_values, max_new_tokens: int,
                         *, eos_token_id=None, pad_token_id: int | None = None, temperature: float = 0.0,
                         top_k: int = 0, top_p: float = 1.0, seed: int = 0, image_counts=None,
                         prefix_ids=None) -> np.ndarray:
  """Left-padded int[B, T] prompts with their pixel_values float[B, M, S, S, 3] (or None)
  -> int32[B, max_new_tokens] new tokens (after a row's EOS: `pad_token_id`, default the first EOS).

  prefix_ids: optional int[P] text tokens (no image) that every prompt starts with, left out of input_ids
  (each row is then prefix_ids + its real tokens): their keys and values are computed once for the batch.
  """
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
  if prefix_ids is not None:
    prefix_ids = np.asarray(prefix_ids, np.int32)
    if prefix_ids.ndim != 1 or not prefix_ids.size or np.any(prefix_ids == module.config.image_token_id):
      raise ValueError(f"prefix_ids: expected a non-empty int[P] of text tokens, got shape {prefix_ids.shape}"
                       " (or with image tokens)")
  sampling = (jnp.float32(temperature if temperature > 0 else 1.0), jnp.int32(top_k), jnp.float32(top_p))
  tokens = _generate_lvlm(params, input_ids, attention_mask, pixel_values, jax.random.PRNGKey(seed), sampling,
                          prefix_ids, config=module.config, max_new_tokens=max_new_tokens,
                          greedy=temperature == 0, eos=eos, pad=pad)
  return np.asarray(tokens)


def generate_lvlm(module: LlavaLVLM, params, tokenizer, conversations, images, template: str,
                  max_new_tokens: int = 64, *, system: str | None = None, max_images: int | None = None,
                  **sampling) -> list[str]:
  """Conversations (tga_jax.data.conversation messages ending with the user's turn) and their images (raw
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
