"""The LLaVA-style vision-language model: CLIP (or SigLIP) vision tower -> projector -> LLaMA-family decoder.

    module, params = tga_jax.load_lvlm(path)
    logits, aux = module.apply({'params': params}, input_ids, pixel_values, attention_mask,
                               output_hidden_states=True, segment_masks={'caption': mask})

Images enter as llava-hf does it: every `<image>` of the prompt is already expanded to
`vision.num_features` copies of `image_token_id` in input_ids (tga_jax.data.conversation does this), and the
projected features of the sample's images, in order, replace the embeddings at those positions. All
shapes are static: pixel_values holds a fixed number M of image slots per sample, and a sample with
fewer images (text-only included) leaves the rest of its slots unused.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tga_jax.models.clip import ClipConfig
from tga_jax.models.image_config import ImageProcessingConfig
from tga_jax.models.llama import LlamaConfig, LlamaForCausalLM
from tga_jax.models.projector import ProjectorConfig, Projector
from tga_jax.models.siglip import vision_tower

# LLaVA's IMAGE_TOKEN_INDEX: the placeholder id when the tokenizer has no `<image>` token of its own.
LLAVA_IMAGE_TOKEN_INDEX = -200


@dataclasses.dataclass(frozen=True)
class LvlmConfig:
  """vision: the CLIP tower (feature_layer / feature_strategy select LLaVA's features).
  train_vision: False (LLaVA) stops gradients at the vision features, so a frozen tower costs no backward.
  image_processing: how the data pipeline turns images into pixel_values for this model.
  image_pool: average-pools the square patch grid by this factor per side before the projector
    (1 = LLaVA; 2 turns 8x8 patches into 4x4 tokens: a 4x shorter image span for small CPU runs); with
    the 'full' feature strategy the CLS token stays first and unpooled."""
  vision: ClipConfig
  projector: ProjectorConfig
  llm: LlamaConfig
  image_token_id: int = LLAVA_IMAGE_TOKEN_INDEX
  train_vision: bool = False
  image_processing: ImageProcessingConfig = ImageProcessingConfig()
  image_pool: int = 1

  def __post_init__(self):
    if self.image_pool != 1:
      patches = self.vision.num_features - self._has_cls
      side = int(round(patches ** 0.5))
      if self.image_pool < 1 or side * side != patches or side % self.image_pool:
        raise ValueError(f"image_pool={self.image_pool}: needs a square patch grid whose side divides by it; "
                         f"the vision tower gives {patches} patch features")

  @property
  def _has_cls(self) -> int:
    return int(self.vision.feature_strategy == "full")

  @property
  def tokens_per_image(self) -> int:
    return (self.vision.num_features - self._has_cls) // self.image_pool ** 2 + self._has_cls


def pool_patches(features: jax.Array, pool: int) -> jax.Array:
  """float[N, g*g, D] (a row-major square patch grid) -> float[N, (g/pool)^2, D]: mean of each
  pool x pool block."""
  n, count, dim = features.shape
  side = int(round(count ** 0.5))
  grid = features.reshape(n, side // pool, pool, side // pool, pool, dim)
  return grid.mean(axis=(2, 4)).reshape(n, (side // pool) ** 2, dim)


def _concrete(x) -> bool:
  return x is not None and not isinstance(x, jax.core.Tracer)


def image_placeholder_counts(input_ids, image_token_id: int, tokens_per_image: int) -> np.ndarray:
  """int[B]: images each sample's ids ask for; raises naming the sample when a count is not a whole image."""
  tokens = (np.asarray(input_ids) == image_token_id).sum(axis=-1)
  for b, n in enumerate(tokens):
    if n % tokens_per_image:
      raise ValueError(f"sample {b}: {n} image tokens (id {image_token_id}) is not a multiple of the "
                       f"{tokens_per_image} tokens one image takes; expand each <image> to {tokens_per_image} "
                       f"tokens (tga_jax.data.conversation does)")
  return tokens // tokens_per_image


def check_lvlm_inputs(config: LvlmConfig, input_ids, pixel_values, image_counts=None) -> None:
  """Host-side checks of one batch (run by the module whenever its inputs are concrete, i.e. not traced).

  Raises ValueError naming the sample when its `<image>` placeholders do not match the images it gives
  (`image_counts` int[B], else the M slots of pixel_values as an upper bound).
  """
  wanted = image_placeholder_counts(input_ids, config.image_token_id, config.tokens_per_image)
  slots = 0 if pixel_values is None else pixel_values.shape[1]
  for b, n in enumerate(wanted):
    if image_counts is not None and n != int(np.asarray(image_counts)[b]):
      raise ValueError(f"sample {b}: {n} <image> placeholder(s) in input_ids but {int(np.asarray(image_counts)[b])} "
                       f"image(s) given")
    if n > slots:
      none = " (pixel_values is None)" if pixel_values is None else ""
      raise ValueError(f"sample {b}: {n} <image> placeholder(s) in input_ids but pixel_values has "
                       f"{slots} image slot(s) per sample{none}")


def masked_mean(states, mask):
  """states float[..., B, T, D], mask bool[B, T] -> float32[..., B, D]: mean over the masked positions
  (0 where a row has none)."""
  mask = mask.astype(jnp.float32)
  total = jnp.einsum("...btd,bt->...bd", states.astype(jnp.float32), mask)
  return total / jnp.maximum(mask.sum(-1), 1.0)[:, None]


class LlavaLVLM(nn.Module):
  """`apply({'params': p}, input_ids, pixel_values, attention_mask=None, output_hidden_states=False)`
  -> (logits float32[B, T, V], aux). Params: {'vision', 'projector', 'llm'}."""
  config: LvlmConfig

  @nn.compact
  def __call__(self, input_ids, pixel_values=None, attention_mask=None, output_hidden_states: bool = False, *,
               image_counts=None, segment_masks=None, position_ids=None, output_last_attention: bool = False,
               cache=None, cache_index=None, last_only: bool = False, logits_at=None):
    """
    Args:
      input_ids: int[B, T], each `<image>` expanded to `tokens_per_image` copies of `image_token_id`.
      pixel_values: float[B, M, S, S, 3] (M image slots per sample), float[B, S, S, 3] (one each), or None
        (no images in the batch). Channels last, from tga_jax.data.image_processing.
      attention_mask: int/bool[B, T] (or over the cache slots with `cache`), 1 for real tokens.
      output_hidden_states: aux['hidden_states'] float[L+1, B, T, D] (the LLM's, transformers' counting).
      image_counts: optional int[B], the images each sample gives. Whenever the inputs are concrete (an
        eager call, not under jit) the placeholders are checked against them (else against the M slots)
        and a mismatch raises a ValueError naming the sample; under jit, run check_lvlm_inputs (or build
        batches with tga_jax.make_lvlm_batch, which checks) on the host.
      segment_masks: optional {name: bool[B, T]} (tga_jax.data.conversation's named spans, e.g. 'caption',
        'retrieved'); echoed in aux['segment_masks'] and, with output_hidden_states, averaged per layer in
        aux['segment_means'][name] float32[L+1, B, D] ('image' is always there too).
      position_ids, output_last_attention, cache, cache_index, last_only, logits_at: as LlamaForCausalLM.
    Returns:
      (logits, aux): aux['image_mask'] bool[B, T]; aux['image_features'] float[B, M * N, D] (projected, or
      None); the LLM's aux ('last_hidden_state', 'hidden_states', 'last_attention', 'cache').
    """
    cfg = self.config
    vis = cfg.vision
    batch, length = input_ids.shape
    if pixel_values is not None:
      if pixel_values.ndim == 4:
        pixel_values = pixel_values[:, None]
      want = (vis.image_size, vis.image_size, vis.num_channels)
      if pixel_values.ndim != 5 or pixel_values.shape[0] != batch or tuple(pixel_values.shape[2:]) != want:
        raise ValueError(f"pixel_values has shape {tuple(pixel_values.shape)}, expected (batch={batch}, images, "
                         f"{want[0]}, {want[1]}, {want[2]}) or (batch={batch}, {want[0]}, {want[1]}, {want[2]})")
    if _concrete(input_ids) and (image_counts is None or _concrete(image_counts)) and cache_index is None:
      check_lvlm_inputs(cfg, input_ids, pixel_values, image_counts)

    image_mask = input_ids == cfg.image_token_id
    features = None
    if pixel_values is not None:
      slots = pixel_values.shape[1]
      flat = pixel_values.reshape((batch * slots,) + pixel_values.shape[2:])
      _, vision_aux = vision_tower(vis)(flat)
      selected = vision_aux["features"]
      if not cfg.train_vision:
        selected = jax.lax.stop_gradient(selected)
      if cfg.image_pool > 1:
        cls = selected[:, :cfg._has_cls]
        selected = jnp.concatenate([cls, pool_patches(selected[:, cfg._has_cls:], cfg.image_pool)], axis=1)
      features, _ = Projector(cfg.projector, name="projector")(selected)
      features = features.reshape(batch, slots * cfg.tokens_per_image, -1)
    elif self.is_initializing():
      # Create the vision and projector params even when init sees a text-only batch.
      size = vis.image_size
      dummy = jnp.zeros((1, size, size, vis.num_channels), jnp.float32)
      _, vision_aux = vision_tower(vis)(dummy)
      Projector(cfg.projector, name="projector")(vision_aux["features"])

    def scatter_images(embeds):
      if features is None:
        return embeds
      # The k-th image token of a row takes the k-th feature row of that sample's images.
      order = jnp.clip(jnp.cumsum(image_mask, axis=1) - 1, 0, features.shape[1] - 1)
      picked = jnp.take_along_axis(features, order[..., None], axis=1)
      return jnp.where(image_mask[..., None], picked.astype(embeds.dtype), embeds)

    # Placeholder ids may lie outside the vocabulary (LLaVA's -200): look up a harmless id there instead.
    safe_ids = jnp.where(image_mask, 0, input_ids)
    logits, aux = LlamaForCausalLM(cfg.llm, name="llm")(
        safe_ids, attention_mask, position_ids, output_hidden_states=output_hidden_states,
        output_last_attention=output_last_attention, cache=cache, cache_index=cache_index, last_only=last_only,
        logits_at=logits_at, embed_hook=scatter_images)
    aux = dict(aux, image_mask=image_mask, image_features=features)
    if segment_masks is not None:
      aux["segment_masks"] = dict(segment_masks)
    if output_hidden_states:
      named = dict(segment_masks or {}, image=image_mask)
      aux["segment_means"] = {name: masked_mean(aux["hidden_states"], mask) for name, mask in named.items()}
    return logits, aux
