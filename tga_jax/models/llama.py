"""LLaMA-family decoder (LLaMA 1/2/3, Vicuna, Mistral, SmolLM2) in Flax Linen.

    logits, aux = LlamaForCausalLM(config).apply({'params': params}, input_ids, attention_mask,
                                                 output_hidden_states=True)

Numerics follow transformers' `LlamaForCausalLM` / `MistralForCausalLM`: RMSNorm in float32, rotary
embeddings in the HF "rotate half" layout, grouped-query attention with a float32 softmax, SwiGLU MLP.
The layers run under `nn.scan` (one compiled layer, params stacked on a leading 'layers' axis) wrapped
in `nn.remat` with the policy named in the config.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from trainkit.matmul import contract_last

Array = jax.Array

REMAT_POLICIES = ("none", "nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable",
                  "everything_saveable")
ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Architecture and run-time numerics of a LLaMA-family decoder.

  rope_scaling: None or a tuple of (key, value) pairs as in HF's `rope_parameters` (`rope_type`
    'linear' with `factor`, or 'llama3' with `factor`, `low_freq_factor`, `high_freq_factor`,
    `original_max_position_embeddings`); a tuple so that the config stays hashable.
  sliding_window: None for full causal attention; else a query attends to the last `sliding_window`
    positions only (itself included), as Mistral does.
  dtype: matmul / activation dtype ('float32' on CPU, 'bfloat16' on TPU/GPU); params stay `param_dtype`.
  remat_policy: one of REMAT_POLICIES ('none' = no rematerialisation).
  scan_unroll: layers per scan iteration (1 = smallest program; num_layers = fully unrolled).
  scan_layers: True: one scanned layer, params stacked under 'layers' (fast compiles, the layout
    checkpoints use). False: a Python loop over 'layers_0'...'layers_{L-1}' (see `unstack_layers`);
    on CPU, XLA copies each layer's slice out of stacked weights, which dominates batch-1 decoding,
    so generation runs this way.
  """
  vocab_size: int = 32000
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_layers: int = 32
  num_heads: int = 32
  num_kv_heads: int = 32
  head_dim: int = 128
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_scaling: tuple | None = None
  max_position_embeddings: int = 4096
  tie_word_embeddings: bool = False
  attention_bias: bool = False
  mlp_bias: bool = False
  sliding_window: int | None = None
  model_type: str = "llama"
  bos_token_id: int | None = 1
  eos_token_id: int | tuple | None = 2
  pad_token_id: int | None = None
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat_policy: str = "dots_with_no_batch_dims_saveable"
  scan_unroll: int = 1
  scan_layers: bool = True

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy={self.remat_policy!r}: expected one of {REMAT_POLICIES}")
    rope_type = self.rope_dict().get("rope_type", "default")
    if rope_type not in ROPE_TYPES:
      raise ValueError(f"rope_type={rope_type!r} is not supported: expected one of {ROPE_TYPES}")

  def rope_dict(self) -> dict:
    return dict(self.rope_scaling or ())


def rope_inverse_frequencies(config: LlamaConfig) -> np.ndarray:
  """float32[head_dim // 2]: the rotary frequencies, with linear or llama3 scaling applied.

  Computed in float32 numpy exactly as transformers does in torch, so that positions far from 0
  rotate to the same angles (a float64 table would differ by an ulp and drift at long positions).
  """
  dim = config.head_dim
  exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
  inv_freq = (np.float32(1.0) / (np.float32(config.rope_theta) ** exponents)).astype(np.float32)
  rope = config.rope_dict()
  kind = rope.get("rope_type", "default")
  if kind == "linear":
    inv_freq = inv_freq / np.float32(rope["factor"])
  elif kind == "llama3":
    factor, low, high = (np.float32(rope[k]) for k in ("factor", "low_freq_factor", "high_freq_factor"))
    old_context = np.float32(rope["original_max_position_embeddings"])
    wavelen = np.float32(2 * math.pi) / inv_freq
    low_wavelen, high_wavelen = old_context / low, old_context / high
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    inv_freq = np.where(medium, smoothed, scaled)
  return inv_freq.astype(np.float32)


def rotary_tables(config: LlamaConfig, positions: Array) -> tuple[Array, Array]:
  """int[B, T] positions -> (cos, sin) float32[B, T, head_dim] in HF's concatenated-halves layout."""
  inv_freq = jnp.asarray(rope_inverse_frequencies(config))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: Array, cos: Array, sin: Array) -> Array:
  """x float[B, T, N, head_dim] rotated by cos/sin float32[B, T, head_dim] (HF 'rotate_half' layout)."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
  return x * cos + rotated * sin


class RMSNorm(nn.Module):
  """x float[..., D] -> float[..., D]; the statistics in float32 whatever the activation dtype."""
  eps: float
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return scale.astype(x.dtype) * normed.astype(x.dtype)


class DenseGeneral(nn.Module):
  """x float[..., *in] -> float[..., *features]: contracts the last `len(in)` axes of x with a kernel
  float[*in, *features] whose axes carry the logical `names` (bias: the names of `features`).

  Not flax's DenseGeneral: that one initialises a flat 2-D kernel and reshapes it, which trips the
  rank check of the logical sharding constraint once a mesh is active.
  """
  features: tuple[int, ...]
  names: tuple[str, ...]
  use_bias: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    n_in = len(self.names) - len(self.features)
    kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.normal(0.02), self.names),
                        x.shape[x.ndim - n_in:] + tuple(self.features), self.param_dtype)
    y = contract_last(x.astype(self.dtype), kernel.astype(self.dtype), n_in)  # 2-D: see trainkit/matmul.py
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.names[n_in:]),
                        tuple(self.features), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


def _dense(features, names, *, config: LlamaConfig, use_bias: bool, name: str):
  """A DenseGeneral with matmuls in `config.dtype` and params in `config.param_dtype`."""
  features = (features,) if isinstance(features, int) else tuple(features)
  return DenseGeneral(features, names, use_bias, jnp.dtype(config.dtype), jnp.dtype(config.param_dtype), name=name)


class Attention(nn.Module):
  """Grouped-query self-attention with an optional static-shape KV cache."""
  config: LlamaConfig
  output_last_attention: bool = False

  @nn.compact
  def __call__(self, x, cos, sin, allowed, last_index, cache_index, layer_cache):
    """
    Args:
      x: float[B, T, D] (normed input).
      cos, sin: float32[B, T, head_dim].
      allowed: bool[B, 1, 1, T, K]: which key slots each query may attend to.
      last_index: int32[B]: the query whose attention weights are returned (when asked).
      cache_index: int32[] slot of the first query in the cache (ignored without a cache).
      layer_cache: None, or (k, v) float[B, S, KV, head_dim]: this layer's cache (K = S).
    Returns:
      (float[B, T, D], this call's (k, v) float[B, T, KV, head_dim] or None, float32[B, H, K] attention of
      `last_index` or None).
    """
    cfg = self.config
    kv, hd = cfg.num_kv_heads, cfg.head_dim
    groups = cfg.num_heads // kv
    q = _dense((cfg.num_heads, hd), ("embed", "heads", "head_dim"), config=cfg, use_bias=cfg.attention_bias,
               name="q")(x)
    k = _dense((kv, hd), ("embed", "kv_heads", "head_dim"), config=cfg, use_bias=cfg.attention_bias, name="k")(x)
    v = _dense((kv, hd), ("embed", "kv_heads", "head_dim"), config=cfg, use_bias=cfg.attention_bias, name="v")(x)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

    new_cache = None
    if layer_cache is not None:
      cache_k, cache_v = layer_cache
      # Only this call's rows go back out (the caller writes them into the stacked cache): returning
      # the whole updated cache would copy all of it every decode step.
      new_cache = (k.astype(cache_k.dtype), v.astype(cache_v.dtype))
      start = (0, cache_index, 0, 0)
      k = jax.lax.dynamic_update_slice(cache_k, new_cache[0], start)
      v = jax.lax.dynamic_update_slice(cache_v, new_cache[1], start)

    batch, length = q.shape[:2]
    # Query head h reads kv head h // groups (HF's repeat_kv order), so split heads as (kv, groups).
    # Head-major [B, KV, groups * T, hd] first, so that both attention matmuls are batched over (B, KV) in
    # canonical order and neither the scores nor the output need a transposed copy (the CPU backward).
    keys = k.shape[1]
    q = q.reshape(batch, length, kv, groups, hd).transpose(0, 2, 3, 1, 4).reshape(batch, kv, groups * length, hd)
    k, v = (x.astype(q.dtype).transpose(0, 2, 1, 3) for x in (k, v))
    scores = jnp.einsum("bkqd,bksd->bkqs", q, k) * jnp.asarray(hd ** -0.5, q.dtype)
    scores = scores.reshape(batch, kv, groups, length, keys)
    # A where (not an additive -inf bias) keeps fully masked rows -- left padding -- finite.
    scores = jnp.where(allowed, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bkqs,bksd->bkqd", probs.astype(q.dtype).reshape(batch, kv, groups * length, keys), v)
    out = out.reshape(batch, kv, groups, length, hd).transpose(0, 3, 1, 2, 4).reshape(batch, length, cfg.num_heads, hd)
    out = _dense(cfg.hidden_size, ("heads", "head_dim", "embed"), config=cfg, use_bias=cfg.attention_bias,
                 name="o")(out)

    last_attention = None
    if self.output_last_attention:
      probs = probs.reshape(batch, cfg.num_heads, length, probs.shape[-1])
      last_attention = probs[jnp.arange(batch), :, last_index]
    return out, new_cache, last_attention


class MLP(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""
  config: LlamaConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    dense = lambda f, names, name: _dense(f, names, config=cfg, use_bias=cfg.mlp_bias, name=name)  # noqa: E731
    gate = dense(cfg.intermediate_size, ("embed", "mlp"), "gate")(x)
    up = dense(cfg.intermediate_size, ("embed", "mlp"), "up")(x)
    hidden = nn.with_logical_constraint(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))
    return dense(cfg.hidden_size, ("mlp", "embed"), "down")(hidden)


class DecoderLayer(nn.Module):
  """Pre-norm block; the scan body: carry = residual stream, per-layer outputs = taps and cache."""
  config: LlamaConfig
  output_hidden_states: bool = False
  output_last_attention: bool = False

  @nn.compact
  def __call__(self, h, cos, sin, allowed, last_index, cache_index, layer_cache):
    cfg = self.config
    norm = lambda name: RMSNorm(cfg.rms_norm_eps, jnp.dtype(cfg.param_dtype), name=name)  # noqa: E731
    attn_out, new_cache, last_attention = Attention(cfg, self.output_last_attention, name="attn")(
        norm("input_norm")(h), cos, sin, allowed, last_index, cache_index, layer_cache)
    h = h + attn_out.astype(h.dtype)
    h = h + MLP(cfg, name="mlp")(norm("post_attn_norm")(h)).astype(h.dtype)
    h = nn.with_logical_constraint(h, ("batch", "length", None))
    taps = {"hidden": h if self.output_hidden_states else None, "last_attention": last_attention}
    return h, (taps, new_cache)


class LlamaForCausalLM(nn.Module):
  """Token ids -> next-token logits, with per-layer taps in aux.

  `module.apply({'params': params}, input_ids, attention_mask=None, output_hidden_states=False)`
  -> (logits float32[B, T, V], aux).
  """
  config: LlamaConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, position_ids=None, *, output_hidden_states: bool = False,
               output_last_attention: bool = False, cache=None, cache_index=None, last_only: bool = False,
               logits_at=None, embed_hook=None):
    """
    Args:
      input_ids: int[B, T].
      attention_mask: int/bool[B, K], 1 for real tokens (left or right padding both work); K = T, or
        the cache length S when `cache` is given (1 for every slot filled so far, this call's included).
        None = all real.
      position_ids: int[B, T]; default arange(T) (+ cache_index), as transformers' forward does. RoPE only
        sees position differences, so padding does not need shifted positions for the real tokens.
      output_hidden_states: aux['hidden_states'] float[L+1, B, T, D], counted as transformers does:
        index 0 is the embeddings, index i the output of layer i, and the last entry is the final
        (normed) output.
      output_last_attention: aux['last_attention'] float32[L, B, H, K]: each layer's attention weights
        (over heads) of the last real position of each row.
      cache: None or {'k', 'v'}: float[L, B, S, KV, head_dim]; this call's keys/values are written at
        slots [cache_index, cache_index + T) and aux['cache'] holds the updated cache.
      cache_index: int32[] (with `cache`).
      last_only: logits of the last position only: float32[B, V] (what a prefill needs).
      logits_at: None, or int[B, K]: logits of these positions only, float32[B, K, V] (what a loss over a
        few target tokens needs: the vocabulary projection and its softmax then run on K positions, not T).
      embed_hook: None, or a function float[B, T, D] -> float[B, T, D] applied to the token embeddings
        before the first layer (the LVLM scatters projected image features in here); hidden state 0 is
        its output.
    Returns:
      (logits float[B, T, V] (or [B, V] with last_only, [B, K, V] with logits_at), aux dict).
    """
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    batch, length = input_ids.shape
    if cache is not None and cache_index is None:
      raise ValueError("cache_index is required with a cache")
    start = jnp.asarray(0 if cache is None else cache_index, jnp.int32)
    key_length = length if cache is None else cache["k"].shape[2]
    if attention_mask is None:
      if cache is not None:
        raise ValueError("attention_mask over the cache slots is required with a cache")
      attention_mask = jnp.ones((batch, key_length), jnp.int32)
    if attention_mask.shape != (batch, key_length):
      raise ValueError(f"attention_mask has shape {attention_mask.shape}, expected {(batch, key_length)}")
    key_mask = attention_mask.astype(bool)
    if position_ids is None:
      position_ids = jnp.broadcast_to(start + jnp.arange(length, dtype=jnp.int32), (batch, length))

    embedding = self.param("embedding", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
                           (cfg.vocab_size, cfg.hidden_size), jnp.dtype(cfg.param_dtype))
    h = jnp.take(embedding, input_ids, axis=0).astype(dtype)
    if embed_hook is not None:
      h = embed_hook(h).astype(dtype)
    h = nn.with_logical_constraint(h, ("batch", "length", None))
    embedded = h

    query_slot = start + jnp.arange(length, dtype=jnp.int32)
    key_slot = jnp.arange(key_length, dtype=jnp.int32)
    allowed = key_slot[None, :] <= query_slot[:, None]
    if cfg.sliding_window is not None:
      allowed &= key_slot[None, :] > query_slot[:, None] - cfg.sliding_window
    allowed = (allowed[None] & key_mask[:, None, :])[:, None, None]  # [B, 1, 1, T, K]
    # The last real token of each row: T-1 with left padding, sum(mask)-1 with right padding.
    row_mask = key_mask[:, -length:] if cache is None else jnp.ones((batch, length), bool)
    last_index = (length - 1 - jnp.argmax(row_mask[:, ::-1], axis=-1)).astype(jnp.int32)
    cos, sin = rotary_tables(cfg, position_ids)

    layer = DecoderLayer
    if cfg.remat_policy != "none":
      layer = nn.remat(layer, prevent_cse=False, policy=getattr(jax.checkpoint_policies, cfg.remat_policy))
    if cfg.scan_layers:
      layers = nn.scan(
          layer, variable_axes={"params": 0}, split_rngs={"params": True},
          in_axes=(nn.broadcast,) * 5 + (0,), length=cfg.num_layers, unroll=cfg.scan_unroll,
          metadata_params={nn.PARTITION_NAME: "layers"},
      )(cfg, output_hidden_states, output_last_attention, name="layers")
      layer_cache = None if cache is None else (cache["k"], cache["v"])
      h, (taps, new_rows) = layers(h, cos, sin, allowed, last_index, start, layer_cache)
    else:
      outputs = []
      for i in range(cfg.num_layers):
        layer_cache = None if cache is None else (cache["k"][i], cache["v"][i])
        h, out = layer(cfg, output_hidden_states, output_last_attention, name=f"layers_{i}")(
            h, cos, sin, allowed, last_index, start, layer_cache)
        outputs.append(out)
      taps, new_rows = jax.tree.map(lambda *xs: jnp.stack(xs), *outputs)

    final = RMSNorm(cfg.rms_norm_eps, jnp.dtype(cfg.param_dtype), name="final_norm")(h)
    aux = {"last_hidden_state": final}
    if output_hidden_states:
      # transformers counts the embeddings as state 0 and the final norm's output as state L.
      aux["hidden_states"] = jnp.concatenate([embedded[None], taps["hidden"][:-1], final[None]], axis=0)
    if output_last_attention:
      aux["last_attention"] = taps["last_attention"]
    if cache is not None:
      at = (0, 0, start, 0, 0)
      aux["cache"] = {"k": jax.lax.dynamic_update_slice(cache["k"], new_rows[0], at),
                      "v": jax.lax.dynamic_update_slice(cache["v"], new_rows[1], at)}

    if last_only and logits_at is not None:
      raise ValueError("last_only and logits_at are exclusive: pass logits_at=last position instead")
    if last_only:
      final = final[jnp.arange(batch), last_index]
    elif logits_at is not None:
      final = jnp.take_along_axis(final, jnp.asarray(logits_at, jnp.int32)[..., None], axis=1)
    if cfg.tie_word_embeddings:
      # As a 2-D matmul (trainkit/matmul.py): the embedding's gradient then needs no transposed copy of
      # dlogits float32[B*T, V], the step's largest array.
      logits = contract_last(final.astype(dtype), embedding.astype(dtype).T, 1)
    else:
      logits = _dense(cfg.vocab_size, ("embed", "vocab"), config=cfg, use_bias=False, name="lm_head")(final)
    return logits.astype(jnp.float32), aux


def init_cache(config: LlamaConfig, batch: int, length: int, dtype=None) -> dict:
  """Zeroed KV cache {'k', 'v'}: float[L, B, S, KV, head_dim] (dtype defaults to config.dtype)."""
  shape = (config.num_layers, batch, length, config.num_kv_heads, config.head_dim)
  dtype = jnp.dtype(dtype or config.dtype)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def unstack_layers(params: dict) -> dict:
  """Stacked params (`layers/...` float[L, ...]) -> the scan_layers=False layout (`layers_i/...`)."""
  if "layers" not in params:
    return params
  stacked = params["layers"]
  count = jax.tree.leaves(stacked)[0].shape[0]
  out = {k: v for k, v in params.items() if k != "layers"}
  for i in range(count):
    out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return out


def stack_layers(params: dict) -> dict:
  """The inverse of `unstack_layers`."""
  names = sorted((k for k in params if k.startswith("layers_")), key=lambda k: int(k.split("_")[1]))
  if not names:
    return params
  out = {k: v for k, v in params.items() if not k.startswith("layers_")}
  out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[k] for k in names])
  return out
