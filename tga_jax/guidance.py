"""The TGA guidance loss (spec §5): pull image hidden states toward their caption's at chosen layers.

Per example and guided layer j (indices into hidden_states, 0 = embeddings):
  I_j  mean hidden state over the image tokens of the training pass,
  C_j  mean over the caption tokens of a separate text-only caption pass (no gradient),
  R_j  mean over the retrieved-text tokens of the training pass.
Paper form (default):
  L_guide = mean_j [ -cos(I_j, C_j) + log(1 + exp(-(cos(I_j, C_j) - cos(R_j, C_j)))) ]
Reference-code form (ablations; differentiable here, unlike the reference's math.exp):
  (1-t)/4 * mean exp(-cos(I_j, C_j)) + (1-t)^2/10 * mean exp(cos(R_j, C_j) - cos(I_j, C_j)),  t = step/total.
Every mean excludes padding: spans come from the tokenisation masks, never from offsets.
Examples without an image (text-only refusal data) contribute nothing; an example without a
retrieved span drops the retrieved-text term.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

FORMS = ("paper", "reference")
SCHEDULES = ("constant", "linear", "quadratic")


def masked_mean(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """float[L, B, T, D], bool[B, T] -> float[L, B, D]: mean over the masked tokens (0 where none)."""
  m = mask.astype(hidden.dtype)[None, :, :, None]
  return (hidden * m).sum(axis=2) / jnp.maximum(m.sum(axis=2), 1.0)


def cosine(a: jax.Array, b: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Cosine over the last axis, in float32. The eps sits inside the square roots so that an empty
  span (a zero mean vector) gives cos = 0 with a finite gradient instead of NaN."""
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  norm = lambda x: jnp.sqrt((x * x).sum(-1) + eps)  # noqa: E731
  return (a * b).sum(-1) / (norm(a) * norm(b))


def guidance_weight(schedule: str, weight: float, step, total_steps: int) -> jax.Array:
  """lambda(t): constant, linear decay weight*(1-t), or quadratic decay weight*(1-t)^2."""
  t = jnp.clip(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 0.0, 1.0)
  if schedule == "constant":
    return jnp.float32(weight)
  if schedule == "linear":
    return weight * (1.0 - t)
  if schedule == "quadratic":
    return weight * (1.0 - t) ** 2
  raise ValueError(f"guidance schedule={schedule!r}: expected one of {SCHEDULES}")


def layer_similarities(hidden, image_mask, retrieved_mask, caption_hidden, caption_mask, layers):
  """(cos(I_j, C_j), cos(R_j, C_j)), each float[J, B], for the guided layers.

  hidden: float[L+1, B, T, D] (training pass); caption_hidden: float[L+1, B, Tc, D] (caption pass,
  gradient stopped here); masks bool[B, T] / bool[B, Tc].
  """
  layers = jnp.asarray(layers)
  image = masked_mean(hidden[layers], image_mask)
  retrieved = masked_mean(hidden[layers], retrieved_mask)
  caption = jax.lax.stop_gradient(masked_mean(caption_hidden[layers], caption_mask))
  return cosine(image, caption), cosine(retrieved, caption)


def guidance_loss(hidden, image_mask, retrieved_mask, caption_hidden, caption_mask, layers, *, form: str = "paper",
                  step=0, total_steps: int = 1) -> tuple[jax.Array, dict]:
  """Returns (scalar loss averaged over examples with an image, metrics).

  metrics: 'cos_ic/<j>' and 'cos_rc/<j>' per guided layer (means over examples with an image and,
  for cos_rc, a retrieved span), and 'retrieved_fraction' (examples with both).
  """
  cos_ic, cos_rc = layer_similarities(hidden, image_mask, retrieved_mask, caption_hidden, caption_mask, layers)
  has_image = image_mask.any(axis=1).astype(jnp.float32)  # [B]
  has_retrieved = retrieved_mask.any(axis=1).astype(jnp.float32) * has_image
  if form == "paper":
    per_layer = -cos_ic + has_retrieved[None] * jax.nn.softplus(-(cos_ic - cos_rc))
  elif form == "reference":
    t = jnp.clip(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 0.0, 1.0)
    per_layer = ((1 - t) / 4 * jnp.exp(-cos_ic)
                 + has_retrieved[None] * (1 - t) ** 2 / 10 * jnp.exp(cos_rc - cos_ic))
  else:
    raise ValueError(f"guidance form={form!r}: expected one of {FORMS}")
  per_example = per_layer.mean(axis=0)  # [B]
  loss = (per_example * has_image).sum() / jnp.maximum(has_image.sum(), 1.0)
  metrics = {}
  for i, layer in enumerate(layers):
    metrics[f"cos_ic/{layer}"] = (cos_ic[i] * has_image).sum() / jnp.maximum(has_image.sum(), 1.0)
    metrics[f"cos_rc/{layer}"] = (cos_rc[i] * has_retrieved).sum() / jnp.maximum(has_retrieved.sum(), 1.0)
  metrics["retrieved_fraction"] = has_retrieved.mean()  # 0: the cos_rc values above measured nothing
  return loss, metrics
