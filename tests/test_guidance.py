"""The TGA guidance loss equals a numpy computation; padding is excluded; gradients flow to I and R only."""
import jax
import numpy as np
import pytest

from tga_jax.guidance import guidance_loss, guidance_weight


def np_reference(hidden, image_mask, retrieved_mask, caption_hidden, caption_mask, layers, form, t=0.0):
  def mean(h, m):
    return h[m].mean(axis=0)

  def cos(a, b):
    return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))

  total, count = 0.0, 0
  for b in range(hidden.shape[1]):
    if not image_mask[b].any():
      continue
    terms = []
    for j in layers:
      i_j, c_j = mean(hidden[j, b], image_mask[b]), mean(caption_hidden[j, b], caption_mask[b])
      cic = cos(i_j, c_j)
      has_r = retrieved_mask[b].any()
      crc = cos(mean(hidden[j, b], retrieved_mask[b]), c_j) if has_r else 0.0
      if form == "paper":
        terms.append(-cic + (np.log1p(np.exp(-(cic - crc))) if has_r else 0.0))
      else:
        terms.append((1 - t) / 4 * np.exp(-cic) + ((1 - t) ** 2 / 10 * np.exp(crc - cic) if has_r else 0.0))
    total += np.mean(terms)
    count += 1
  return total / count


def random_case(seed=0, L=5, B=4, T=12, Tc=7, D=16):
  rng = np.random.default_rng(seed)
  hidden = rng.normal(size=(L + 1, B, T, D)).astype(np.float32)
  caption_hidden = rng.normal(size=(L + 1, B, Tc, D)).astype(np.float32)
  image_mask = np.zeros((B, T), bool)
  image_mask[:, 1:5] = True
  image_mask[2] = False  # a text-only sample: no guidance
  retrieved_mask = np.zeros((B, T), bool)
  retrieved_mask[:, 6:9] = True
  retrieved_mask[1] = False  # no retrieved span: only the first term
  caption_mask = np.zeros((B, Tc), bool)
  caption_mask[:, :5] = True
  caption_mask[3, 3:] = False  # padding must not enter the caption mean
  return hidden, image_mask, retrieved_mask, caption_hidden, caption_mask


@pytest.mark.parametrize("form", ["paper", "reference"])
def test_equals_numpy_and_ignores_padding(form):
  case = random_case()
  layers = (2, 3, 4)
  loss, metrics = jax.jit(lambda *a: guidance_loss(*a, layers, form=form, step=3, total_steps=10))(*case)
  assert float(loss) == pytest.approx(np_reference(*case, layers, form, t=0.3), rel=1e-5)
  assert set(metrics) == {f"cos_{k}/{j}" for k in ("ic", "rc") for j in layers} | {"retrieved_fraction"}
  hidden, image_mask, retrieved_mask, caption_hidden, caption_mask = case
  noisy = caption_hidden.copy()
  noisy[:, 3, 3:] = 1e3  # garbage in padded caption positions changes nothing
  again, _ = guidance_loss(hidden, image_mask, retrieved_mask, noisy, caption_mask, layers, form=form, step=3,
                           total_steps=10)
  assert float(again) == pytest.approx(float(loss), rel=1e-6)


def test_gradient_reaches_image_and_retrieved_states_not_the_caption():
  hidden, image_mask, retrieved_mask, caption_hidden, caption_mask = random_case()
  grad_h, grad_c = jax.grad(lambda h, c: guidance_loss(h, image_mask, retrieved_mask, c, caption_mask, (2, 3))[0],
                            argnums=(0, 1))(hidden, caption_hidden)
  g = np.abs(np.asarray(grad_h))
  assert g[2:4][:, image_mask].sum() > 0 and g[2:4][:, retrieved_mask & image_mask.any(1)[:, None]].sum() > 0
  assert g[[0, 1, 4, 5]].sum() == 0  # only the guided layers
  assert np.abs(np.asarray(grad_c)).sum() == 0  # the caption pass is a fixed target


def test_weight_schedules():
  assert float(guidance_weight("constant", 0.5, 7, 10)) == pytest.approx(0.5)
  assert float(guidance_weight("linear", 2.0, 5, 10)) == pytest.approx(1.0)
  assert float(guidance_weight("quadratic", 2.0, 5, 10)) == pytest.approx(0.5)
  with pytest.raises(ValueError, match="schedule='cosine'"):
    guidance_weight("cosine", 1.0, 0, 10)
