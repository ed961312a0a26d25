"""CLIP preprocessing vs transformers' CLIPImageProcessor (PIL backend), and LLaVA's 'pad' aspect."""
import numpy as np
import pytest
from PIL import Image

from tga_jax.data.image_processing import expand_to_square, preprocess_image, preprocess_images
from tga_jax.models.image_config import ImageProcessingConfig

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def reference():
  from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
  return CLIPImageProcessorPil(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32})


def _hf(reference, image):
  return reference(images=image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)


@pytest.mark.parametrize("shape", [(50, 70, 3), (91, 33, 3), (40, 40, 3), (17, 23, 3), (33, 29), (45, 60, 4)])
def test_crop_mode_equals_clip_image_processor(reference, shape):
  image = np.random.RandomState(sum(shape)).randint(0, 256, shape).astype(np.uint8)
  ours = preprocess_image(image, ImageProcessingConfig(size=40, crop_size=32, aspect="crop"))
  assert ours.dtype == np.float32 and ours.shape == (32, 32, 3)
  pil = Image.fromarray(image).convert("RGB")  # what transformers does with gray / RGBA input
  np.testing.assert_array_equal(ours, _hf(reference, pil))


def test_pad_mode_expands_to_a_square_of_the_mean_colour(reference):
  config = ImageProcessingConfig(size=40, crop_size=32, aspect="pad")
  assert config.fill_colour == (122, 116, 104)  # int(255 * OpenAI CLIP mean), as LLaVA computes it
  image = np.full((2, 6, 3), 255, np.uint8)
  square = np.asarray(expand_to_square(Image.fromarray(image), config.fill_colour))
  assert square.shape == (6, 6, 3)
  np.testing.assert_array_equal(square[:2], np.broadcast_to([122, 116, 104], (2, 6, 3)))  # top band
  np.testing.assert_array_equal(square[2:4], 255)                                        # image centred
  np.testing.assert_array_equal(square[4:], np.broadcast_to([122, 116, 104], (2, 6, 3)))  # bottom band
  tall = np.random.RandomState(0).randint(0, 256, (50, 21, 3)).astype(np.uint8)
  padded = np.asarray(expand_to_square(Image.fromarray(tall), config.fill_colour))
  np.testing.assert_array_equal(padded[:, 14:35], tall)  # (50 - 21) // 2 = 14 columns to the left
  # Pad, then CLIP preprocessing of the square: equal to the processor run on the padded image.
  np.testing.assert_array_equal(preprocess_image(tall, config), _hf(reference, Image.fromarray(padded)))
  # The padding normalises to (about) zero: that is why LLaVA pads with the mean.
  out = preprocess_image(np.full((4, 60, 3), 255, np.uint8), config)
  assert np.abs(out[0, 0]).max() < 0.02


def test_batch_and_bad_images_are_named():
  config = ImageProcessingConfig(size=16, crop_size=16)
  images = [np.zeros((10, 20, 3), np.uint8), np.ones((30, 12, 3), np.uint8)]
  assert preprocess_images(images, config).shape == (2, 16, 16, 3)
  with pytest.raises(ValueError, match="image 1: expected a uint8 image, got dtype float32"):
    preprocess_images([images[0], np.zeros((4, 4, 3), np.float32)], config)
  with pytest.raises(ValueError, match=r"image 0: expected an image of shape \(height, width, 3\), got \(3, 4, 4, 2\)"):
    preprocess_images([np.zeros((3, 4, 4, 2), np.uint8)], config)
  with pytest.raises(ValueError, match="aspect='stretch'"):
    ImageProcessingConfig(aspect="stretch")
