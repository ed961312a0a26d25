"""Task models on an Encoder: sequence classification / regression and span extraction.

Params: {'encoder': <Encoder params>, <head>: ...}. Every head dropout is a NestedDropout driven by
the same `dropout_power` as the encoder's sites, so comparative ablation covers the head too.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import optax

from comploss_jax.ablation import NestedDropout
from comploss_jax.encoder import ACTIVATIONS, Encoder, EncoderConfig


def _dense(features, names, name):
  return nn.Dense(features, name=name, param_dtype=jnp.float32,
                  kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), names),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[1:]))


class SequenceClassifier(nn.Module):
  """-> (logits float[B, num_labels], aux). num_labels = 1 is regression.

  BERT/RoBERTa: dropout + linear on the pooler output (as the paper's code does for both).
  ELECTRA: its own head on the first token: dropout, dense, gelu, dropout, out_proj.
  """
  config: EncoderConfig
  num_labels: int

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, deterministic: bool = True,
               dropout_power=1):
    cfg = self.config
    electra = cfg.model_type == "electra"
    hidden, aux = Encoder(cfg, add_pooler=not electra, name="encoder")(
        input_ids, attention_mask, token_type_ids, deterministic=deterministic, dropout_power=dropout_power)
    rate = cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout_prob
    drop = lambda x: NestedDropout(rate)(x, deterministic=deterministic, power=dropout_power)  # noqa: E731
    if electra:
      x = drop(hidden[:, 0].astype(jnp.float32))
      x = ACTIVATIONS["gelu"](_dense(cfg.hidden_size, ("embed", "embed_out"), "dense")(x))
      logits = _dense(self.num_labels, ("embed", "classes"), "out_proj")(drop(x))
    else:
      logits = _dense(self.num_labels, ("embed", "classes"), "classifier")(drop(aux["pooled"].astype(jnp.float32)))
    return logits, aux


class SpanExtractor(nn.Module):
  """-> ((start_logits, end_logits) float[B, T] each, aux); padding positions get -1e9."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, deterministic: bool = True,
               dropout_power=1):
    hidden, aux = Encoder(self.config, add_pooler=False, name="encoder")(
        input_ids, attention_mask, token_type_ids, deterministic=deterministic, dropout_power=dropout_power)
    logits = _dense(2, ("embed", None), "qa_outputs")(hidden.astype(jnp.float32))
    if attention_mask is not None:
      logits = jnp.where(attention_mask[..., None] > 0, logits, -1e9)
    return (logits[..., 0], logits[..., 1]), aux


def classification_losses(logits, labels):
  """Per-example task loss, float[B]: cross-entropy, or squared error when num_labels == 1."""
  if logits.shape[-1] == 1:
    return jnp.square(logits[:, 0] - labels.astype(logits.dtype))
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


IGNORE_INDEX = -100  # a span target that is not in the input (e.g. the answer fell outside the window)


def span_losses(start_logits, end_logits, start_positions, end_positions):
  """Per-example start and end cross-entropies, float[B, 2] (compared separately by CmpLoss).

  start_logits/end_logits float[B, T]; positions int[B]. A negative position (IGNORE_INDEX) is no
  target: that entry's loss is 0 and passes no gradient; `span_targets_valid` says which ones are
  real, for the chain to leave the others out of the ranking.
  """
  def one(logits, positions):
    has = positions >= 0
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(has, positions, 0))
    return jnp.where(has, ce, 0.0)
  return jnp.stack([one(start_logits, start_positions), one(end_logits, end_positions)], axis=1)


def span_targets_valid(start_positions, end_positions):
  """bool[B]: the example's answer span is inside its input (both positions >= 0)."""
  return (start_positions >= 0) & (end_positions >= 0)


def with_encoder_params(params, encoder_params):
  """Task params whose 'encoder' subtree is replaced by pretrained encoder params (head stays as is).

  A pretrained encoder without a pooler keeps the fresh one; a pretrained pooler that the head does
  not use (span extraction) is left out.
  """
  used = {k: v for k, v in encoder_params.items() if k in params["encoder"]}
  return {**params, "encoder": {**params["encoder"], **used}}
