"""Host-side examples and batches for the LVLM: tokenised conversations + their images -> fixed shapes.

    example = make_lvlm_example(tokens, [image], config, max_images=1)    # a grain parse step
    batch = make_lvlm_batch([(tokens_a, [image]), (tokens_b, [image1, image2]), (tokens_c, [])], config,
                            max_images=2)
    logits, aux = module.apply({'params': p}, batch['input_ids'], batch['pixel_values'], batch['attention_mask'],
                               image_counts=batch['image_counts'], segment_masks=batch['segments'])

Problems raise trainkit.BadRecord (a ValueError, so a trainkit pipeline counts and skips the record)
naming the sample and image: placeholders that do not match the images given, an image of the wrong
shape or dtype. The text before the first ':' is the reason the skip counter groups by.
"""
from __future__ import annotations

import numpy as np

from tga_jax.data.conversation import SEGMENTS, TokenizedConversation
from tga_jax.data.image_processing import preprocess_image
from tga_jax.models.lvlm import LvlmConfig
from trainkit import BadRecord


def _pixels(image, config: LvlmConfig, where: str) -> np.ndarray:
  """A uint8 image (preprocessed here) or an already preprocessed float32[S, S, 3]."""
  size, channels = config.vision.image_size, config.vision.num_channels
  array = np.asarray(image)
  try:
    if array.dtype == np.uint8:
      return preprocess_image(array, config.image_processing, where=where)
  except ValueError as e:
    raise BadRecord(f"bad image: {e}") from e
  if not np.issubdtype(array.dtype, np.floating):
    raise BadRecord(f"bad image: {where}: dtype {array.dtype}; expected uint8 (raw) or float (preprocessed) pixels")
  if array.shape != (size, size, channels):
    raise BadRecord(f"bad image: {where}: preprocessed image has shape {array.shape}, expected ({size}, {size}, "
                    f"{channels}) (channels last, as tga_jax.data.image_processing returns them)")
  return array.astype(np.float32)


def make_lvlm_example(tokens: TokenizedConversation, images, config: LvlmConfig, max_images: int,
                      where: str = "sample") -> dict:
  """One sample's arrays: input_ids int32[L], attention_mask int32[L], loss_mask bool[L], segments
  {name: bool[L]}, pixel_values float32[M, S, S, 3] (unused slots zero), image_count int32[].

  A truncated conversation that lost images keeps only the images whose placeholders survived.
  """
  if not isinstance(tokens, TokenizedConversation):
    raise TypeError(f"{where}: expected a TokenizedConversation, got {type(tokens).__name__}")
  images = list(images or [])
  placeholders = tokens.num_images
  if placeholders != len(images) and not (tokens.truncated and placeholders < len(images)):
    raise BadRecord(f"images do not match placeholders: {where}: {placeholders} <image> placeholder(s) in the "
                    f"conversation but {len(images)} image(s) given")
  images = images[:placeholders]
  if len(images) > max_images:
    raise BadRecord(f"too many images: {where}: {len(images)} images but max_images={max_images}")
  size, channels = config.vision.image_size, config.vision.num_channels
  pixel_values = np.zeros((max_images, size, size, channels), np.float32)
  for k, image in enumerate(images):
    pixel_values[k] = _pixels(image, config, f"{where}, image {k}")
  return {
      "input_ids": tokens.input_ids.astype(np.int32),
      "attention_mask": tokens.attention_mask.astype(np.int32),
      "loss_mask": tokens.loss_mask.astype(bool),
      "segments": tokens.segment_masks(SEGMENTS),
      "pixel_values": pixel_values,
      "image_count": np.int32(len(images)),
  }


def make_lvlm_batch(samples, config: LvlmConfig, max_images: int | None = None) -> dict:
  """[(TokenizedConversation, [images])] -> the examples stacked on a leading batch axis.

  Args:
    samples: per sample its tokens (all padded to one length) and its images, in placeholder order.
    max_images: the image slots M per sample (fix it for a run so shapes never change); default the
      largest count in the batch (at least 1).
  Returns:
    input_ids int32[B, L], attention_mask int32[B, L], loss_mask bool[B, L], segments {name: bool[B, L]}
    for tga_jax.data.conversation.SEGMENTS, pixel_values float32[B, M, S, S, 3], image_counts int32[B].
  """
  if not samples:
    raise ValueError("make_lvlm_batch: no samples")
  lengths = sorted({len(tokens.input_ids) for tokens, _ in samples})
  if len(lengths) != 1:
    raise ValueError(f"make_lvlm_batch: samples have different lengths {lengths}; tokenise with one max_length "
                     f"(pad=True)")
  if max_images is None:
    max_images = max([1] + [min(tokens.num_images, len(images or [])) for tokens, images in samples])
  examples = [make_lvlm_example(tokens, images, config, max_images, where=f"sample {b}")
              for b, (tokens, images) in enumerate(samples)]
  batch = {key: np.stack([e[key] for e in examples]) for key in ("input_ids", "attention_mask", "loss_mask",
                                                                 "pixel_values")}
  batch["segments"] = {name: np.stack([e["segments"][name] for e in examples]) for name in SEGMENTS}
  batch["image_counts"] = np.asarray([e["image_count"] for e in examples], np.int32)
  return batch
