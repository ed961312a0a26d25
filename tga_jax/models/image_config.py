"""How a vision tower expects its pixels: size, crop, mean/std and aspect handling (HF's
`preprocessor_config.json`). Part of the model's config (LvlmConfig.image); the numpy/PIL code that
applies it lives in tga_jax/data/image_processing.py.
"""
from __future__ import annotations

import dataclasses
import json
import os

from trainkit.json_fields import ConfigError, as_object, float_field, int_field

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
  def from_hf(cls, hf: dict, aspect: str = "pad", where: str = "preprocessor_config.json") -> "ImageProcessingConfig":
    """From a preprocessor_config.json dict (CLIPImageProcessor's fields); `where` names it in errors."""
    hf = as_object(hf, where)
    size = hf.get("size", {"shortest_edge": 224})
    size = size.get("shortest_edge", size.get("height")) if isinstance(size, dict) else size
    size = int_field({"size": size}, "size", where, minimum=1)
    crop = hf.get("crop_size", size)
    crop = crop.get("height") if isinstance(crop, dict) else crop
    crop = int_field({"crop_size": crop}, "crop_size", where, minimum=1)
    stats = {}
    for key, default in (("image_mean", OPENAI_CLIP_MEAN), ("image_std", OPENAI_CLIP_STD)):
      value = hf.get(key, default)
      value = [value] * 3 if isinstance(value, (int, float)) and not isinstance(value, bool) else value
      if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(
          isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{where}: '{key}' must be 3 numbers (one per RGB channel), found {value!r}")
      stats[key] = tuple(float(v) for v in value)
    if min(stats["image_std"]) <= 0:
      raise ConfigError(f"{where}: 'image_std' must be > 0 per channel, found {list(stats['image_std'])}")
    return cls(size=size, crop_size=crop, mean=stats["image_mean"], std=stats["image_std"],
               rescale_factor=float_field(hf, "rescale_factor", where, default=1 / 255, positive=True),
               aspect=aspect)

  @classmethod
  def from_folder(cls, folder: str, aspect: str = "pad", image_size: int | None = None) -> "ImageProcessingConfig":
    """From `folder/preprocessor_config.json` when present, else CLIP's defaults at `image_size`."""
    path = os.path.join(folder, "preprocessor_config.json")
    if os.path.exists(path):
      try:
        with open(path) as f:
          hf = json.load(f)
      except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from e
      return cls.from_hf(hf, aspect, where=path)
    size = image_size or 336
    return cls(size=size, crop_size=size, aspect=aspect)

  def to_hf(self) -> dict:
    return {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": self.size},
            "resample": 3, "do_center_crop": True, "crop_size": {"height": self.crop_size, "width": self.crop_size},
            "do_rescale": True, "rescale_factor": self.rescale_factor, "do_normalize": True,
            "image_mean": list(self.mean), "image_std": list(self.std), "do_convert_rgb": True}
