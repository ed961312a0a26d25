"""BERT-family encoders (BERT, RoBERTa, ELECTRA discriminator) in Flax Linen.

    module = Encoder(EncoderConfig.from_hf(config_json))
    last_hidden_state, aux = module.apply({'params': p}, input_ids, attention_mask, token_type_ids)

Post-LayerNorm transformer layers under `nn.scan` (one compiled layer, params stacked on a leading
'layers' axis). Every dropout site is a NestedDropout, so `dropout_power` ablates all of them at once.
Deterministic (no dropout) unless `deterministic=False`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from comploss_jax.ablation import NestedDropout
from trainkit.json_fields import ConfigError, as_object, float_field, int_field, str_field
from trainkit.matmul import contract_last

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}
SUPPORTED_TYPES = ("bert", "roberta", "electra")
# The sizes that fix the weights' shapes: config.json must state them (HF always writes them).
REQUIRED_SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "max_position_embeddings")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """The fields of a HF BERT/RoBERTa/ELECTRA config.json that the forward pass needs."""
  model_type: str = "bert"
  vocab_size: int = 30522
  hidden_size: int = 768
  embedding_size: int | None = None  # ELECTRA: embeddings narrower than hidden, then projected
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  classifier_dropout: float | None = None
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0
  dtype: Any = jnp.float32  # matmul/activation dtype; params stay float32
  remat_policy: str | None = None  # None: no remat; else a jax.checkpoint_policies name

  @classmethod
  def from_hf(cls, hf: dict, where: str = "config.json", **overrides) -> "EncoderConfig":
    """From a parsed config.json (`where` names it in errors); unknown keys are ignored, unsupported
    architectures rejected. The sizes that fix the weights' shapes are required (no silent 768): a missing
    one, a wrong type or a non-positive value raises trainkit's ConfigError naming the file and key."""
    hf = as_object(hf, where)
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_TYPES:
      raise ConfigError(f"{where}: model_type={model_type!r} is not supported; expected one of {SUPPORTED_TYPES}")
    if hf.get("position_embedding_type", "absolute") != "absolute":
      raise ConfigError(f"{where}: 'position_embedding_type' must be 'absolute' (the only one supported), found "
                        f"{hf['position_embedding_type']!r}")
    values = {"model_type": model_type}
    for key in REQUIRED_SIZES:
      values[key] = int_field(hf, key, where, minimum=1)
    for key in ("type_vocab_size", "embedding_size"):
      values[key] = int_field(hf, key, where, default=None, minimum=1)
    values["pad_token_id"] = int_field(hf, "pad_token_id", where, default=None, minimum=0)
    values["hidden_act"] = str_field(hf, "hidden_act", where, default=None, choices=ACTIVATIONS)
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
      values[key] = float_field(hf, key, where, default=None, minimum=0.0)
    values["layer_norm_eps"] = float_field(hf, "layer_norm_eps", where, default=None, positive=True)
    if values["hidden_size"] % values["num_attention_heads"]:
      raise ConfigError(f"{where}: 'hidden_size' ({values['hidden_size']}) must be divisible by "
                        f"'num_attention_heads' ({values['num_attention_heads']})")
    values = {k: v for k, v in values.items() if v is not None}  # absent: the dataclass default
    if values.get("embedding_size") == values["hidden_size"]:
      values["embedding_size"] = None
    return cls(**{**values, **overrides})

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads


class Projection(nn.Module):
  """x float[..., *in] -> float[..., *out]: a dense layer over the last len(in) dims.

  The kernel is created at its full shape [*in, *out] so its logical names always match its rank
  (nn.DenseGeneral initialises a flattened kernel, which breaks logical constraints under a mesh).
  """
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  names: tuple[str | None, ...]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.normal(0.02), self.names),
                        self.in_shape + self.out_shape, jnp.float32)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.names[len(self.in_shape):]),
                      self.out_shape, jnp.float32)
    y = contract_last(x.astype(self.dtype), kernel.astype(self.dtype), len(self.in_shape))
    return y + bias.astype(self.dtype)


def _dense(features, names, cfg: EncoderConfig, name: str, in_shape=None):
  out_shape = features if isinstance(features, tuple) else (features,)
  in_shape = in_shape or (cfg.hidden_size,)
  return Projection(in_shape, out_shape, names, cfg.dtype, name=name)


def _layer_norm(cfg: EncoderConfig, name: str):
  return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=jnp.float32, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))


class Embeddings(nn.Module):
  """Word + position + token-type embeddings, LayerNorm, dropout (-> projection for ELECTRA)."""
  config: EncoderConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, input_ids, token_type_ids, position_ids, power):
    cfg = self.config
    width = cfg.embedding_size or cfg.hidden_size
    embed = lambda n, name, axes: nn.Embed(  # noqa: E731
        n, width, param_dtype=jnp.float32, name=name,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), axes))
    x = (embed(cfg.vocab_size, "word_embeddings", ("vocab", "embed"))(input_ids)
         + embed(cfg.max_position_embeddings, "position_embeddings", (None, "embed"))(position_ids)
         + embed(cfg.type_vocab_size, "token_type_embeddings", (None, "embed"))(token_type_ids))
    x = _layer_norm(cfg, "LayerNorm")(x)
    x = NestedDropout(cfg.hidden_dropout_prob)(x, deterministic=self.deterministic, power=power)
    if cfg.embedding_size:
      x = _dense(cfg.hidden_size, (None, "embed"), cfg, "embeddings_project", in_shape=(width,))(x)
    return x.astype(cfg.dtype)


class EncoderLayer(nn.Module):
  """Post-LN block: h -> LN(h + drop(attn(h))) -> LN(. + drop(ffn(.))). h float[B, T, D]."""
  config: EncoderConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, h, mask_bias, power):
    cfg = self.config
    drop = lambda rate: NestedDropout(rate)  # noqa: E731
    heads = (cfg.num_attention_heads, cfg.head_dim)
    q = _dense(heads, ("embed", "heads", "head_dim"), cfg, "query")(h)
    k = _dense(heads, ("embed", "heads", "head_dim"), cfg, "key")(h)
    v = _dense(heads, ("embed", "heads", "head_dim"), cfg, "value")(h)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / jnp.sqrt(
        jnp.float32(cfg.head_dim))
    probs = jax.nn.softmax(scores + mask_bias[:, None, None, :], axis=-1)
    probs = drop(cfg.attention_probs_dropout_prob)(probs, deterministic=self.deterministic, power=power)
    context = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(cfg.dtype), v)
    attn = _dense(cfg.hidden_size, ("heads", "head_dim", "embed"), cfg, "attention_output", in_shape=heads)(context)
    attn = drop(cfg.hidden_dropout_prob)(attn, deterministic=self.deterministic, power=power)
    h = _layer_norm(cfg, "attention_LayerNorm")(attn + h).astype(cfg.dtype)
    h = nn.with_logical_constraint(h, ("batch", "length", "embed"))

    y = _dense(cfg.intermediate_size, ("embed", "mlp"), cfg, "intermediate")(h)
    y = nn.with_logical_constraint(ACTIVATIONS[cfg.hidden_act](y), ("batch", "length", "mlp"))
    y = _dense(cfg.hidden_size, ("mlp", "embed"), cfg, "output", in_shape=(cfg.intermediate_size,))(y)
    y = drop(cfg.hidden_dropout_prob)(y, deterministic=self.deterministic, power=power)
    h = _layer_norm(cfg, "output_LayerNorm")(y + h).astype(cfg.dtype)
    return h, h


class Encoder(nn.Module):
  """input_ids int[B, T], attention_mask int[B, T] (1 = token), token_type_ids int[B, T] or None.

  Returns (last_hidden_state float[B, T, D], aux) with aux['pooled'] float[B, D] (BERT/RoBERTa
  pooler: tanh(dense(h[:, 0]))) and, if output_hidden_states, aux['hidden_states']
  float[L+1, B, T, D] (index 0 = embeddings, as transformers counts).
  dropout_power: 1 = ordinary dropout, k = the k-th nested submodel; ignored when deterministic.
  """
  config: EncoderConfig
  add_pooler: bool = True

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, deterministic: bool = True,
               dropout_power=1, output_hidden_states: bool = False):
    cfg = self.config
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    if cfg.model_type == "roberta":
      # RoBERTa numbers real tokens from pad_token_id + 1 and gives padding the pad position.
      is_token = (input_ids != cfg.pad_token_id).astype(jnp.int32)
      position_ids = jnp.cumsum(is_token, axis=1) * is_token + cfg.pad_token_id
    else:
      position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)

    h = Embeddings(cfg, deterministic, name="embeddings")(input_ids, token_type_ids, position_ids, dropout_power)
    h = nn.with_logical_constraint(h, ("batch", "length", "embed"))
    mask_bias = jnp.where(attention_mask > 0, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)

    layer = EncoderLayer
    if cfg.remat_policy:
      layer = nn.remat(layer, prevent_cse=False, policy=getattr(jax.checkpoint_policies, cfg.remat_policy))
    layers = nn.scan(layer, variable_axes={"params": 0, "intermediates": 0}, split_rngs={"params": True, "dropout": True},
                     in_axes=(nn.broadcast, nn.broadcast), length=cfg.num_hidden_layers,
                     metadata_params={nn.PARTITION_NAME: "layers"})
    last, per_layer = layers(cfg, deterministic, name="layers")(h, mask_bias, jnp.asarray(dropout_power))

    aux = {}
    if output_hidden_states:
      aux["hidden_states"] = jnp.concatenate([h[None], per_layer], axis=0)
    if self.add_pooler:
      aux["pooled"] = jnp.tanh(_dense(cfg.hidden_size, ("embed", "embed_out"), cfg, "pooler")(last[:, 0]))
    return last, aux


def mean_pool(hidden, attention_mask):
  """Masked mean over tokens (sentence-transformers' pooling): float[B, T, D], int[B, T] -> float[B, D]."""
  mask = attention_mask[..., None].astype(hidden.dtype)
  return (hidden * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1e-9)
