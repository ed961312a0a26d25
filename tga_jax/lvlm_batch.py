"""Host-side batching for the LVLM: tokenised conversations + their images -> fixed-shape arrays.

    batch = make_lvlm_batch([(tokens_a, [image]), (tokens_b, [image1, image2]), (tokens_c, [])], config,
                            max_images=2)
    logits, aux = module.apply({'params': p}, batch['input_ids'], batch['pixel_values'], batch['attention_mask'],
                               image_counts=batch['image_counts'], segment_masks=batch['segments'])

Every problem names the sample (and image) it is in: placeholders that do not match the images given,
an image of the wrong shape or dtype.
"""
from __future__ import annotations

import numpy as np

from tga_jax.conversation import SEGMENTS, TokenizedConversation
from tga_jax.image_processing import preprocess_image
from tga_jax.lvlm import LvlmConfig


def _pixels(image, config: LvlmConfig, where: str) -> np.ndarray:
  """A uint8 image (preprocessed here) or an already preprocessed float32[S, S, 3]."""
  size, channels = config.vision.image_size, config.vision.num_channels
  array = np.asarray(image)
  if array.dtype == np.uint8:
    return preprocess_image(array, config.image_processing, where=where)
  if not np.issubdtype(array.dtype, np.floating):
    raise ValueError(f"{where}: dtype {array.dtype}; expected uint8 (raw) or float (preprocessed) pixels")
  if array.shape != (size, size, channels):
    raise ValueError(f"{where}: preprocessed image has shape {array.shape}, expected ({size}, {size}, {channels}) "
                     f"(channels last, as tga_jax.image_processing returns them)")
  return array.astype(np.float32)


def make_lvlm_batch(samples, config: LvlmConfig, max_images: int | None = None) -> dict:
  """[(TokenizedConversation, [images])] -> dict of arrays.

  Args:
    samples: per sample its tokens (padded to one length) and its images, in placeholder order. A
      truncated conversation that lost images keeps only the images whose placeholders survived.
    max_images: the image slots M per sample (fix it for a run so shapes never change); default the
      largest count in the batch (at least 1).
  Returns:
    input_ids int32[B, L], attention_mask int32[B, L], loss_mask bool[B, L], segments {name: bool[B, L]}
    for tga_jax.conversation.SEGMENTS, pixel_values float32[B, M, S, S, 3] (unused slots zero),
    image_counts int32[B].
  """
  if not samples:
    raise ValueError("make_lvlm_batch: no samples")
  lengths = {len(tokens.input_ids) for tokens, _ in samples}
  if len(lengths) != 1:
    raise ValueError(f"make_lvlm_batch: samples have different lengths {sorted(lengths)}; tokenise with one "
                     f"max_length (pad=True)")
  kept = []
  for b, (tokens, images) in enumerate(samples):
    if not isinstance(tokens, TokenizedConversation):
      raise TypeError(f"sample {b}: expected a TokenizedConversation, got {type(tokens).__name__}")
    images = list(images or [])
    placeholders = tokens.num_images
    if placeholders != len(images) and not (tokens.truncated and placeholders < len(images)):
      raise ValueError(f"sample {b}: {placeholders} <image> placeholder(s) in the conversation but {len(images)} "
                       f"image(s) given")
    kept.append(images[:placeholders])
  slots = max(1, max(len(images) for images in kept)) if max_images is None else max_images
  size, channels = config.vision.image_size, config.vision.num_channels
  pixel_values = np.zeros((len(samples), slots, size, size, channels), np.float32)
  for b, images in enumerate(kept):
    if len(images) > slots:
      raise ValueError(f"sample {b}: {len(images)} images but max_images={slots}")
    for k, image in enumerate(images):
      pixel_values[b, k] = _pixels(image, config, f"sample {b}, image {k}")
  stack = lambda get: np.stack([get(tokens) for tokens, _ in samples])  # noqa: E731
  return {
      "input_ids": stack(lambda t: t.input_ids).astype(np.int32),
      "attention_mask": stack(lambda t: t.attention_mask).astype(np.int32),
      "loss_mask": stack(lambda t: t.loss_mask).astype(bool),
      "segments": {name: stack(lambda t, n=name: t.segment_masks((n,))[n]) for name in SEGMENTS},
      "pixel_values": pixel_values,
      "image_counts": np.asarray([len(images) for images in kept], np.int32),
  }
