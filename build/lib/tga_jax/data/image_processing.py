"""CLIP image preprocessing in numpy/PIL for the data pipeline (host side, outside jit).

    pixels = preprocess_image(image_uint8_hwc, ImageProcessingConfig(size=336, aspect="pad"))  # float32[336, 336, 3]

Equal to transformers' CLIPImageProcessor on its PIL backend: RGB conversion, bicubic resize of the
shortest side to `size` (the long side to int(size * long / short)), centre crop to `crop_size`, rescale
by 1/255 and normalise with the OpenAI CLIP mean and std. With aspect="pad" the image is first expanded
to a square filled with the mean colour (LLaVA's `expand2square`, colour int(255 * mean) per channel),
as LLaVA-1.5 does. Output is channels last: float32[crop, crop, 3].
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from tga_jax.models.image_config import ImageProcessingConfig


def expand_to_square(image: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
  """A square canvas of the longer side filled with `colour`, the image pasted in its middle."""
  width, height = image.size
  if width == height:
    return image
  side = max(width, height)
  canvas = Image.new(image.mode, (side, side), colour)
  canvas.paste(image, ((side - width) // 2, (side - height) // 2))
  return canvas


def _to_pil(image, where: str) -> Image.Image:
  if isinstance(image, Image.Image):
    return image.convert("RGB")
  array = np.asarray(image)
  if array.dtype != np.uint8:
    raise ValueError(f"{where}: expected a uint8 image, got dtype {array.dtype}")
  if array.ndim == 2:
    array = np.repeat(array[..., None], 3, axis=-1)
  if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
    raise ValueError(f"{where}: expected an image of shape (height, width, 3), got {array.shape}")
  if array.shape[0] == 0 or array.shape[1] == 0:
    raise ValueError(f"{where}: empty image of shape {array.shape}")
  if array.shape[-1] == 1:
    array = np.repeat(array, 3, axis=-1)
  return Image.fromarray(array).convert("RGB")


def preprocess_image(image, config: ImageProcessingConfig = ImageProcessingConfig(),
                     where: str = "image") -> np.ndarray:
  """uint8[H, W, 3] (or [H, W], [H, W, 4], or a PIL image) -> float32[crop, crop, 3].

  Args:
    where: names the image in errors (a file name or 'sample 3, image 1').
  """
  pil = _to_pil(image, where)
  if config.aspect == "pad":
    pil = expand_to_square(pil, config.fill_colour)
  width, height = pil.size
  short, long = min(width, height), max(width, height)
  new_short, new_long = config.size, int(config.size * long / short)
  new_width, new_height = (new_short, new_long) if width <= height else (new_long, new_short)
  pil = pil.resize((new_width, new_height), resample=Image.Resampling.BICUBIC)
  array = np.asarray(pil)
  crop = config.crop_size
  top, left = (new_height - crop) // 2, (new_width - crop) // 2
  if top < 0 or left < 0:
    # Only when crop_size > size: transformers pads with zeros around the image before cropping.
    padded = np.zeros((max(crop, new_height), max(crop, new_width), 3), np.uint8)
    pad_top, pad_left = -(-(padded.shape[0] - new_height) // 2), -(-(padded.shape[1] - new_width) // 2)
    padded[pad_top:pad_top + new_height, pad_left:pad_left + new_width] = array
    array = padded
    top, left = top + pad_top, left + pad_left
  array = array[top:top + crop, left:left + crop]
  # Same order and precision as transformers: rescale in float64 then float32, normalise in float32.
  scaled = (array.astype(np.float64) * config.rescale_factor).astype(np.float32)
  return (scaled - np.asarray(config.mean, np.float32)) / np.asarray(config.std, np.float32)


def preprocess_images(images, config: ImageProcessingConfig = ImageProcessingConfig()) -> np.ndarray:
  """A list of images -> float32[N, crop, crop, 3] (errors name the image's index)."""
  if not len(images):
    return np.zeros((0, config.crop_size, config.crop_size, 3), np.float32)
  return np.stack([preprocess_image(image, config, where=f"image {i}") for i, image in enumerate(images)])
