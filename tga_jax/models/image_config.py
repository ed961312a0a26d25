"""How a vision tower expects its pixels: size, crop, mean/std and aspect handling (HF's
`preprocessor_config.json`). Part of the model's config (LvlmConfig.image); the numpy/PIL code that
applies it lives in tga_jax/data/image_processing.py.
"""
from __future__ import annotations

import dataclasses
import json
import os

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ASPECTS = ("crop", "pad")


@dataclasses.dataclass(frozen=True)
class ImageProcessingConfig:
  """size: target of the shortest side; crop_size: the square cut from the centre (the model's
  image_size); aspect: 'crop' (CLIP's own preprocessing) or 'pad' (LLaVA-1.5: square first)."""
  size: int = 336
  crop_size: int = 336
  mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
  std: tuple[float, float, float] = OPENAI_CLIP_STD
  rescale_factor: float = 1 / 255
  aspect: str = "pad"

  def __post_init__(self):
    if self.aspect not in ASPECTS:
      raise ValueError(f"aspect={self.aspect!r}: expected one of {ASPECTS}")

  @property
  def fill_colour(self) -> tuple[int, int, int]:
    """The padding colour of aspect='pad': the mean in 0..255, truncated as LLaVA does."""
    return tuple(int(m * 255) for m in self.mean)

  @classmethod
  def from_hf(cls, hf: dict, aspect: str = "pad") -> "ImageProcessingConfig":
    """From a preprocessor_config.json dict (CLIPImageProcessor's fields)."""
    size = hf.get("size", {"shortest_edge": 224})
    size = size.get("shortest_edge", size.get("height")) if isinstance(size, dict) else size
    crop = hf.get("crop_size", size)
    crop = crop.get("height") if isinstance(crop, dict) else crop
    return cls(size=int(size), crop_size=int(crop), mean=tuple(hf.get("image_mean", OPENAI_CLIP_MEAN)),
               std=tuple(hf.get("image_std", OPENAI_CLIP_STD)), rescale_factor=float(hf.get("rescale_factor", 1 / 255)),
               aspect=aspect)

  @classmethod
  def from_folder(cls, folder: str, aspect: str = "pad", image_size: int | None = None) -> "ImageProcessingConfig":
    """From `folder/preprocessor_config.json` when present, else CLIP's defaults at `image_size`."""
    path = os.path.join(folder, "preprocessor_config.json")
    if os.path.exists(path):
      with open(path) as f:
        return cls.from_hf(json.load(f), aspect)
    size = image_size or 336
    return cls(size=size, crop_size=size, aspect=aspect)

  def to_hf(self) -> dict:
    return {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": self.size},
            "resample": 3, "do_center_crop": True, "crop_size": {"height": self.crop_size, "width": self.crop_size},
            "do_rescale": True, "rescale_factor": self.rescale_factor, "do_normalize": True,
            "image_mean": list(self.mean), "image_std": list(self.std), "do_convert_rgb": True}
