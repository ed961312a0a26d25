"""CLIP towers in Flax Linen: the vision transformer (LLaVA's image encoder) and the text transformer.

    pooled, aux = ClipVisionTransformer(cfg).apply({'params': p}, pixel_values)   # float[B, H, W, 3]
    features = aux['features']          # float[B, N, D]: layer `feature_layer`, CLS dropped (LLaVA)
    image_embeds, aux = ClipModel(vcfg, tcfg, proj).apply({'params': p}, pixel_values, method='encode_image')

Numerics follow transformers' CLIPVisionModel / CLIPTextModel: pre-LayerNorm blocks, quick_gelu MLP,
a class token and learned position embeddings; LayerNorm statistics and softmax in float32. Images are
channels-last (float32[B, H, W, 3], as `tga_jax.data.image_processing` returns them), not torch's NCHW.
The layers run under `nn.scan` with params stacked on a leading 'layers' axis.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from trainkit.matmul import contract_last

Array = jax.Array

ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}
FEATURE_STRATEGIES = ("default", "full")  # LLaVA's vision_feature_select_strategy: drop CLS or keep it


@dataclasses.dataclass(frozen=True)
class ClipConfig:
  """One CLIP tower (vision or text).

  Vision fields: image_size, patch_size, num_channels; feature_layer / feature_strategy choose what
  `aux['features']` holds (hidden state `feature_layer` in transformers' counting, where 0 is the
  embeddings after pre-LayerNorm; 'default' drops the CLS token, 'full' keeps it).
  Text fields: vocab_size, max_position_embeddings, eos_token_id (2 = the legacy "argmax of the ids"
  pooling, else the first position holding eos_token_id).
  dtype: matmul dtype; params stay `param_dtype`; LayerNorm and softmax run in float32.
  """
  hidden_size: int = 1024
  intermediate_size: int = 4096
  num_layers: int = 24
  num_heads: int = 16
  layer_norm_eps: float = 1e-5
  hidden_act: str = "quick_gelu"
  image_size: int = 336
  patch_size: int = 14
  num_channels: int = 3
  feature_layer: int = -2
  feature_strategy: str = "default"
  model_type: str = "clip"  # 'clip', or 'siglip' (vision only: no class token, post-LN on all tokens)
  use_head: bool = True  # siglip: the attention-pooling head that gives the pooled output
  vocab_size: int = 49408
  max_position_embeddings: int = 77
  eos_token_id: int = 2
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat_policy: str = "none"

  def __post_init__(self):
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f"hidden_act={self.hidden_act!r}: expected one of {sorted(ACTIVATIONS)}")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size={self.hidden_size} is not a multiple of num_heads={self.num_heads}")
    if self.model_type not in ("clip", "siglip"):
      raise ValueError(f"model_type={self.model_type!r}: expected 'clip' or 'siglip'")
    if self.feature_strategy not in FEATURE_STRATEGIES:
      raise ValueError(f"feature_strategy={self.feature_strategy!r}: expected one of {FEATURE_STRATEGIES}")
    if not -(self.num_layers + 1) <= self.feature_layer <= self.num_layers:
      raise ValueError(f"feature_layer={self.feature_layer} is outside the {self.num_layers + 1} hidden states "
                       f"(-{self.num_layers + 1}..{self.num_layers})")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid ** 2

  @property
  def num_tokens(self) -> int:
    """Tokens per image in the encoder: the patches, and CLIP's class token."""
    return self.num_patches + (self.model_type == "clip")

  @property
  def num_features(self) -> int:
    """Tokens per image in `aux['features']` (576 for ViT-L/14 at 336 px, 'default': the first token,
    CLIP's class token, dropped -- transformers drops it for SigLIP too, where it is a patch)."""
    return self.num_tokens - (self.feature_strategy == "default")

  @property
  def feature_index(self) -> int:
    """`feature_layer` as a non-negative index into the num_layers + 1 hidden states."""
    return self.feature_layer % (self.num_layers + 1)


class Dense(nn.Module):
  """x float[..., *in] -> float[..., *out] with a kernel float[*in, *out] created at full shape.

  Full shape (not flax's flattened DenseGeneral kernel) so the logical names always match the rank,
  which the sharding constraint checks once a mesh is set.
  """
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  names: tuple[str | None, ...]
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.normal(0.02), self.names),
                        self.in_shape + self.out_shape, self.param_dtype)
    y = contract_last(x.astype(self.dtype), kernel.astype(self.dtype), len(self.in_shape))
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.names[len(self.in_shape):]),
                        self.out_shape, self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


def layer_norm(cfg: ClipConfig, name: str) -> nn.LayerNorm:
  # use_fast_variance=False: E[x^2] - E[x]^2 loses digits that transformers' LayerNorm keeps.
  return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=jnp.float32, param_dtype=jnp.dtype(cfg.param_dtype),
                      use_fast_variance=False, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))


def _dense(cfg: ClipConfig, in_shape, out_shape, names, name, use_bias=True) -> Dense:
  return Dense(tuple(in_shape), tuple(out_shape), names, use_bias, jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype),
               name=name)


class EncoderLayer(nn.Module):
  """Pre-LN block h -> h + attn(LN1(h)) -> . + mlp(LN2(.)); the scan body (carry = residual stream)."""
  config: ClipConfig
  output_hidden_states: bool = False

  @nn.compact
  def __call__(self, carry, allowed, layer_id):
    """
    Args:
      carry: (h float[B, T, D], picked float[B, T, D]): the residual stream and the hidden state of layer
        `config.feature_index` once it has been computed (LLaVA's features, kept without storing every layer).
      allowed: None (full attention) or bool[B, 1, T, T].
      layer_id: int32[]: this layer's index (a scanned input).
    """
    cfg = self.config
    h, picked = carry
    d, heads, hd = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    x = layer_norm(cfg, "layer_norm1")(h)
    q = _dense(cfg, (d,), (heads, hd), ("embed", "heads", "head_dim"), "q")(x)
    k = _dense(cfg, (d,), (heads, hd), ("embed", "heads", "head_dim"), "k")(x)
    v = _dense(cfg, (d,), (heads, hd), ("embed", "heads", "head_dim"), "v")(x)
    scores = jnp.einsum("bthd,bshd->bhts", q, k).astype(jnp.float32) * (hd ** -0.5)
    if allowed is not None:
      scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    attn = jnp.einsum("bhts,bshd->bthd", probs, v)
    h = h + _dense(cfg, (heads, hd), (d,), ("heads", "head_dim", "embed"), "o")(attn).astype(h.dtype)
    x = layer_norm(cfg, "layer_norm2")(h)
    x = _dense(cfg, (d,), (cfg.intermediate_size,), ("embed", "mlp"), "fc1")(x)
    x = nn.with_logical_constraint(ACTIVATIONS[cfg.hidden_act](x), ("batch", "length", "mlp"))
    h = h + _dense(cfg, (cfg.intermediate_size,), (d,), ("mlp", "embed"), "fc2")(x).astype(h.dtype)
    h = nn.with_logical_constraint(h, ("batch", "length", None))
    # Hidden state i + 1 is this layer's output (state 0 is the encoder's input).
    picked = jnp.where(layer_id + 1 == cfg.feature_index, h, picked)
    return (h, picked), (h if self.output_hidden_states else None)


class Encoder(nn.Module):
  """The stacked layers under nn.scan (+ nn.remat with `config.remat_policy`)."""
  config: ClipConfig
  output_hidden_states: bool = False

  @nn.compact
  def __call__(self, h: Array, allowed=None):
    """h float[B, T, D] -> (last float[B, T, D], picked float[B, T, D], hidden_states float[L+1, B, T, D] | None)."""
    cfg = self.config
    layer = EncoderLayer
    if cfg.remat_policy != "none":
      layer = nn.remat(layer, prevent_cse=False, policy=getattr(jax.checkpoint_policies, cfg.remat_policy))
    layers = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True},
                     in_axes=(nn.broadcast, 0), length=cfg.num_layers,
                     metadata_params={nn.PARTITION_NAME: "layers"})(cfg, self.output_hidden_states, name="layers")
    (last, picked), taps = layers((h, h), allowed, jnp.arange(cfg.num_layers, dtype=jnp.int32))
    states = jnp.concatenate([h[None], taps], axis=0) if self.output_hidden_states else None
    return last, picked, states


class ClipVisionTransformer(nn.Module):
  """Images -> pooled CLS state and LLaVA's patch features.

  `apply({'params': p}, pixel_values float[B, H, W, 3], output_hidden_states=False)`
  -> (pooled float[B, D] (post-LayerNorm CLS), aux) with aux['features'] float[B, N, D] (hidden state
  `feature_layer`, CLS dropped under 'default'), aux['last_hidden_state'] float[B, 1 + P, D] and, when
  asked, aux['hidden_states'] float[L+1, B, 1 + P, D] (transformers' counting).
  """
  config: ClipConfig

  @nn.compact
  def __call__(self, pixel_values: Array, output_hidden_states: bool = False):
    cfg = self.config
    size, p, c = cfg.image_size, cfg.patch_size, cfg.num_channels
    if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (size, size, c):
      raise ValueError(f"pixel_values has shape {tuple(pixel_values.shape)}, expected (batch, {size}, {size}, {c}) "
                       f"(channels last, as tga_jax.data.image_processing returns them)")
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    batch, g = pixel_values.shape[0], cfg.grid
    # A stride-p conv with a p x p kernel is a matmul over non-overlapping patches, row-major like torch's.
    patches = pixel_values.reshape(batch, g, p, g, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(batch, g * g, p, p, c)
    kernel = self.param("patch_embedding", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                        (None, None, None, "embed")),
                        (p, p, c, cfg.hidden_size), param_dtype)
    x = jnp.einsum("bnijc,ijcd->bnd", patches.astype(dtype), kernel.astype(dtype))
    cls = self.param("class_embedding", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed",)),
                     (cfg.hidden_size,), param_dtype)
    positions = self.param("position_embedding",
                           nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
                           (cfg.num_patches + 1, cfg.hidden_size), param_dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (batch, 1, cfg.hidden_size)), x], axis=1)
    x = x + positions.astype(dtype)
    x = layer_norm(cfg, "pre_layrnorm")(x).astype(dtype)
    x = nn.with_logical_constraint(x, ("batch", "length", None))
    last, picked, states = Encoder(cfg, output_hidden_states, name="encoder")(x)
    pooled = layer_norm(cfg, "post_layernorm")(last[:, 0])
    features = picked[:, 1:] if cfg.feature_strategy == "default" else picked
    aux = {"features": features, "last_hidden_state": last}
    if output_hidden_states:
      aux["hidden_states"] = states
    return pooled, aux


class ClipTextTransformer(nn.Module):
  """Token ids -> pooled (end-of-text) state.

  `apply({'params': p}, input_ids int[B, T], attention_mask=None, output_hidden_states=False)`
  -> (pooled float[B, D], aux) with aux['last_hidden_state'] float[B, T, D] (after the final LayerNorm)
  and, when asked, aux['hidden_states'] float[L+1, B, T, D].
  """
  config: ClipConfig

  @nn.compact
  def __call__(self, input_ids: Array, attention_mask=None, output_hidden_states: bool = False):
    cfg = self.config
    batch, length = input_ids.shape
    if length > cfg.max_position_embeddings:
      raise ValueError(f"input_ids has length {length}; the text tower takes at most "
                       f"max_position_embeddings={cfg.max_position_embeddings}")
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    tokens = self.param("token_embedding", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                        ("vocab", "embed")),
                        (cfg.vocab_size, cfg.hidden_size), param_dtype)
    positions = self.param("position_embedding",
                           nn.with_logical_partitioning(nn.initializers.normal(0.01), (None, "embed")),
                           (cfg.max_position_embeddings, cfg.hidden_size), param_dtype)
    x = (jnp.take(tokens, input_ids, axis=0) + positions[:length]).astype(dtype)
    x = nn.with_logical_constraint(x, ("batch", "length", None))
    causal = jnp.tril(jnp.ones((length, length), bool))
    keys = jnp.ones((batch, length), bool) if attention_mask is None else attention_mask.astype(bool)
    allowed = causal[None, None] & keys[:, None, None, :]
    last, _, states = Encoder(cfg, output_hidden_states, name="encoder")(x, allowed)
    last = layer_norm(cfg, "final_layer_norm")(last)
    if cfg.eos_token_id == 2:
      # Checkpoints from before transformers PR #24773 pool at the highest id (the end-of-text token).
      eos_index = jnp.argmax(input_ids, axis=-1)
    else:
      eos_index = jnp.argmax(input_ids == cfg.eos_token_id, axis=-1)
    pooled = last[jnp.arange(batch), eos_index]
    aux = {"last_hidden_state": last}
    if output_hidden_states:
      aux["hidden_states"] = states
    return pooled, aux


class ClipModel(nn.Module):
  """Both towers and their projections into the shared embedding space (retrieval).

  Methods (pass `method=` to apply):
    encode_image(pixel_values float[B, H, W, 3]) -> (image_embeds float[B, P], aux)
    encode_text(input_ids int[B, T], attention_mask=None) -> (text_embeds float[B, P], aux)
    __call__(input_ids, pixel_values, attention_mask=None) -> (logits_per_image float[B_img, B_txt], aux
      with the L2-normalised 'image_embeds' and 'text_embeds').
  The embeds of the encode_* methods are not normalised (transformers' get_*_features).
  """
  vision_config: ClipConfig
  text_config: ClipConfig
  projection_dim: int = 768

  def setup(self):
    vcfg, tcfg = self.vision_config, self.text_config
    self.vision_model = ClipVisionTransformer(vcfg)
    self.text_model = ClipTextTransformer(tcfg)
    self.visual_projection = _dense(vcfg, (vcfg.hidden_size,), (self.projection_dim,), ("embed", None),
                                    "visual_projection", use_bias=False)
    self.text_projection = _dense(tcfg, (tcfg.hidden_size,), (self.projection_dim,), ("embed", None),
                                  "text_projection", use_bias=False)
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(2.6592), (), jnp.float32)

  def encode_image(self, pixel_values, output_hidden_states: bool = False):
    pooled, aux = self.vision_model(pixel_values, output_hidden_states)
    return self.visual_projection(pooled).astype(jnp.float32), aux

  def encode_text(self, input_ids, attention_mask=None, output_hidden_states: bool = False):
    pooled, aux = self.text_model(input_ids, attention_mask, output_hidden_states)
    return self.text_projection(pooled).astype(jnp.float32), aux

  def __call__(self, input_ids, pixel_values, attention_mask=None):
    image, _ = self.encode_image(pixel_values)
    text, _ = self.encode_text(input_ids, attention_mask)
    image = image / jnp.linalg.norm(image, axis=-1, keepdims=True)
    text = text / jnp.linalg.norm(text, axis=-1, keepdims=True)
    logits = jnp.exp(self.logit_scale) * image @ text.T
    return logits, {"image_embeds": image, "text_embeds": text}
