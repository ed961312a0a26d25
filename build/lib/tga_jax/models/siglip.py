"""SigLIP's vision tower in Flax Linen (a second vision encoder type for the LVLM).

    pooled, aux = SiglipVisionTransformer(cfg).apply({'params': p}, pixel_values)   # float[B, H, W, 3]

Numerics follow transformers' SiglipVisionModel: a patch embedding with bias and learned position
embeddings (no class token, no pre-LayerNorm), CLIP's pre-LN encoder blocks (gelu_pytorch_tanh), a
post-LayerNorm over every token and an attention-pooling head (a learned probe attends to the tokens).
LLaVA-style features come from hidden state `feature_layer` (transformers' counting: 0 = embeddings),
usually with feature_strategy='full' since there is no class token.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from tga_jax.models.clip import ACTIVATIONS, ClipConfig, ClipVisionTransformer, Encoder, _dense, layer_norm


class AttentionPoolingHead(nn.Module):
  """h float[B, T, D] -> float[B, D]: a probe token attends to h, then a residual MLP."""
  config: ClipConfig

  @nn.compact
  def __call__(self, h):
    cfg = self.config
    d, heads, hd = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    dtype = jnp.dtype(cfg.dtype)
    probe = self.param("probe", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed",)), (d,),
                       jnp.dtype(cfg.param_dtype))
    # torch's MultiheadAttention packs q, k, v in one projection: kept packed, [D, 3, H, hd].
    qkv = _dense(cfg, (d,), (3, heads, hd), ("embed", None, "heads", "head_dim"), "qkv")
    q = qkv(jnp.broadcast_to(probe.astype(dtype), (h.shape[0], 1, d)))[:, :, 0]
    kv = qkv(h)
    k, v = kv[:, :, 1], kv[:, :, 2]
    scores = jnp.einsum("bthd,bshd->bhts", q, k).astype(jnp.float32) * (hd ** -0.5)
    attn = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(scores, axis=-1).astype(dtype), v)
    out = _dense(cfg, (heads, hd), (d,), ("heads", "head_dim", "embed"), "o")(attn)
    x = layer_norm(cfg, "layernorm")(out)
    x = ACTIVATIONS[cfg.hidden_act](_dense(cfg, (d,), (cfg.intermediate_size,), ("embed", "mlp"), "fc1")(x))
    out = out + _dense(cfg, (cfg.intermediate_size,), (d,), ("mlp", "embed"), "fc2")(x)
    return out[:, 0]


class SiglipVisionTransformer(nn.Module):
  """Images -> (pooled float[B, D] (the head's output; None without a head), aux) with aux['features']
  float[B, N, D], aux['last_hidden_state'] float[B, P, D] (post-LayerNorm) and, when asked,
  aux['hidden_states'] float[L+1, B, P, D] (before the post-LayerNorm, as transformers counts them)."""
  config: ClipConfig

  @nn.compact
  def __call__(self, pixel_values, output_hidden_states: bool = False):
    cfg = self.config
    size, p, c = cfg.image_size, cfg.patch_size, cfg.num_channels
    if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (size, size, c):
      raise ValueError(f"pixel_values has shape {tuple(pixel_values.shape)}, expected (batch, {size}, {size}, {c}) "
                       f"(channels last, as tga_jax.data.image_processing returns them)")
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    batch, g = pixel_values.shape[0], cfg.grid
    patches = pixel_values.reshape(batch, g, p, g, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(batch, g * g, p * p * c)
    x = _dense(cfg, (p * p * c,), (cfg.hidden_size,), (None, "embed"), "patch_embedding")(patches)
    positions = self.param("position_embedding",
                           nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
                           (cfg.num_patches, cfg.hidden_size), param_dtype)
    x = nn.with_logical_constraint((x + positions.astype(dtype)).astype(dtype), ("batch", "length", None))
    last, picked, states = Encoder(cfg, output_hidden_states, name="encoder")(x)
    last = layer_norm(cfg, "post_layernorm")(last)
    pooled = AttentionPoolingHead(cfg, name="head")(last) if cfg.use_head else None
    features = picked[:, 1:] if cfg.feature_strategy == "default" else picked
    aux = {"features": features, "last_hidden_state": last}
    if output_hidden_states:
      aux["hidden_states"] = states
    return pooled, aux


def vision_tower(config: ClipConfig, name: str = "vision") -> nn.Module:
  """The vision module for a config: CLIP's or SigLIP's (the same param tree names where they agree)."""
  cls = SiglipVisionTransformer if config.model_type == "siglip" else ClipVisionTransformer
  return cls(config, name=name)
