"""The miniature world's renderer: every concept drawn in varied palettes, sizes, positions, backgrounds
and clutter, with neutral captions; some variant combinations and phrasings are held out for testing.

    sample = render("knife", np.random.default_rng(0), split="heldout")  # {'image': uint8[64, 64, 3], ...}
    records = make_split(20, "train", seed=0)                         # 37 * 20 records, concept-major

Variant factors: PALETTES (object and background colours) x BACKGROUNDS (plain, gradient, stripes, ...)
x CLUTTER (none, lines, shapes, dots). The (palette, background) pairs in HELDOUT_PAIRS never appear
in the train split: each palette and each background is seen in training, only not together, so
held-out renders test generalisation to new combinations rather than to unseen colours.
Captions: TRAIN_TEMPLATES for the train split, HELDOUT_TEMPLATES for the held-out one; the canonical
caption of a concept (`canonical_caption`) is the text the retrieval index holds for it.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from tga_jax.miniature.concepts import BY_ID, CONCEPTS
from tga_jax.miniature.drawers import DRAWERS

SPLITS = ("train", "heldout")
# Bumped whenever renders change, so cached artifacts made from older renders are redone.
WORLD_VERSION = 2

# name -> (two background colours, object colours). Object colours contrast with the backgrounds.
PALETTES = {
    "warm": (((250, 236, 214), (238, 212, 178)), ((215, 40, 40), (235, 130, 25), (170, 55, 20), (195, 30, 120))),
    "cool": (((218, 234, 250), (196, 220, 240)), ((45, 75, 215), (30, 150, 160), (95, 55, 195), (25, 115, 85))),
    "grey": (((128, 128, 136), (150, 150, 158)), ((245, 245, 245), (250, 200, 60), (30, 30, 30), (240, 120, 150))),
    "dark": (((28, 28, 40), (52, 52, 74)), ((240, 240, 240), (240, 200, 60), (100, 200, 250), (250, 120, 120))),
    "earth": (((205, 195, 155), (178, 166, 125)), ((105, 65, 25), (55, 105, 35), (150, 40, 30), (35, 55, 95))),
    "neon": (((18, 18, 18), (58, 0, 78)), ((0, 250, 120), (255, 0, 200), (0, 200, 255), (255, 245, 0))),
}
BACKGROUNDS = ("plain", "gradient", "striped", "dotted", "checkered", "speckled")
CLUTTER = ("none", "lines", "shapes", "dots")
# One pair per palette and per background (a shifted diagonal): 6 of the 36 pairs are held out.
HELDOUT_PAIRS = frozenset((p, BACKGROUNDS[(i + 2) % len(BACKGROUNDS)]) for i, p in enumerate(PALETTES))
TRAIN_PAIRS = tuple((p, b) for p in PALETTES for b in BACKGROUNDS if (p, b) not in HELDOUT_PAIRS)
HELDOUT_PAIR_LIST = tuple(sorted(HELDOUT_PAIRS))

TRAIN_TEMPLATES = (
    "A photo of {noun} on a {bg} background.",
    "{noun} on a {bg} background.",
    "A drawing of {noun}.",
    "An image showing {noun}.",
    "There is {noun} in this picture.",
    "A simple illustration of {noun} against a {bg} backdrop.",
)
HELDOUT_TEMPLATES = (
    "This picture contains {noun} over a {bg} background.",
    "A small scene with {noun} in it.",
)
CANONICAL_TEMPLATE = "A picture of {noun}."
CONCEPT_IDS = tuple(c.id for c in CONCEPTS)


def _sentence(text: str) -> str:
  return text[0].upper() + text[1:]


def caption_for(concept_id: str, template: str, background: str) -> str:
  """One caption: `template` filled with the concept's noun and the background's name."""
  return _sentence(template.format(noun=BY_ID[concept_id].noun, bg=background))


def canonical_caption(concept_id: str) -> str:
  """The concept's caption in the retrieval index ('A picture of a handgun.')."""
  return _sentence(CANONICAL_TEMPLATE.format(noun=BY_ID[concept_id].noun))


def all_captions(split: str) -> list[str]:
  """Every distinct caption the split can produce (the texts to embed once), in a fixed order."""
  templates = TRAIN_TEMPLATES if split == "train" else HELDOUT_TEMPLATES
  out = dict.fromkeys(caption_for(c, t, b) for c in CONCEPT_IDS for t in templates for b in BACKGROUNDS)
  return list(out)


def _background(kind: str, colours, rng: np.random.Generator, size: int) -> np.ndarray:
  """uint8[size, size, 3] background of one style, in the palette's two colours."""
  a, b = (np.asarray(c, np.float32) for c in colours)
  if rng.random() < 0.5:
    a, b = b, a
  y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
  if kind == "plain":
    out = np.broadcast_to(a, (size, size, 3)).copy()
  elif kind == "gradient":
    t = (y if rng.random() < 0.5 else x)[..., None]
    out = a * (1 - t) + b * t
  elif kind == "striped":
    period = rng.uniform(0.1, 0.2)
    along = (x + y) if rng.random() < 0.5 else y
    out = np.where(((along / period) % 1.0 < 0.5)[..., None], a, b)
  elif kind == "dotted":
    step = int(rng.integers(6, 10))
    dots = ((np.mgrid[0:size, 0:size] % step) < 2).all(axis=0)
    out = np.where(dots[..., None], b, a)
  elif kind == "checkered":
    cell = rng.uniform(0.08, 0.16)
    out = np.where((((x // cell) + (y // cell)) % 2 == 0)[..., None], a, b)
  elif kind == "speckled":
    out = a + rng.normal(0, 18, (size, size, 3)).astype(np.float32)
  else:
    raise ValueError(f"background {kind!r}: expected one of {BACKGROUNDS}")
  return np.clip(out, 0, 255).astype(np.uint8)


def _clutter(d: ImageDraw.ImageDraw, kind: str, rng: np.random.Generator, size: int, colours) -> None:
  """Distractors: thin lines, small shapes or dots, too small or thin to read as any concept."""
  pick = lambda: tuple(int(v) for v in colours[int(rng.integers(len(colours)))])
  if kind == "lines":
    for _ in range(int(rng.integers(2, 5))):
      x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, size, 4))
      d.line([(x0, y0), (x1, y1)], fill=pick(), width=1)
  elif kind == "shapes":
    for _ in range(int(rng.integers(2, 5))):
      x, y = (float(v) for v in rng.uniform(0, size, 2))
      s = float(rng.uniform(min(1.5, 0.05 * size), max(1.5, 0.06 * size)))  # 1.5..3.8 px at 64
      shape = int(rng.integers(3))
      if shape == 0:
        d.ellipse([x - s, y - s, x + s, y + s], fill=pick())
      elif shape == 1:
        d.rectangle([x - s, y - s, x + s, y + s], fill=pick())
      else:
        d.polygon([(x, y - s), (x + s, y + s), (x - s, y + s)], fill=pick())
  elif kind == "dots":
    for _ in range(int(rng.integers(10, 30))):
      x, y = (float(v) for v in rng.uniform(0, size, 2))
      d.ellipse([x - 0.7, y - 0.7, x + 0.7, y + 0.7], fill=pick())
  elif kind != "none":
    raise ValueError(f"clutter {kind!r}: expected one of {CLUTTER}")


def render(concept_id: str, rng: np.random.Generator, split: str = "train", image_size: int = 64,
           template: int | None = None) -> dict:
  """One image of a concept with random variants of `split`.

  Returns {'image': uint8[S, S, 3], 'caption': str, 'concept': id, 'toxic': bool, 'palette', 'background',
  'clutter', 'template': int (index into the split's templates), 'radius': float (fraction of S),
  'centre': (x, y) fractions}.
  """
  if split not in SPLITS:
    raise ValueError(f"split={split!r}: expected one of {SPLITS}")
  if concept_id not in BY_ID:
    raise KeyError(f"unknown concept {concept_id!r}; known: {CONCEPT_IDS}")
  pairs = TRAIN_PAIRS if split == "train" else HELDOUT_PAIR_LIST
  palette, background = pairs[int(rng.integers(len(pairs)))]
  clutter = CLUTTER[int(rng.integers(len(CLUTTER)))]
  bg_colours, obj_colours = PALETTES[palette]
  size = image_size
  image = Image.fromarray(_background(background, bg_colours, rng, size))
  d = ImageDraw.Draw(image)
  _clutter(d, clutter, rng, size, obj_colours + bg_colours)
  # Large enough that fine parts (clock hands, a balloon's string) span several 8 px patches; the centre
  # moves by up to an eighth of the image: a small ViT learns translation invariance slowly.
  radius = float(rng.uniform(0.30, 0.40))
  r = radius * size
  lo, hi = max(r, 0.38 * size), min(size - r, 0.62 * size)
  cx, cy = (float(v) for v in rng.uniform(lo, hi, 2))
  colour = obj_colours[int(rng.integers(len(obj_colours)))]
  DRAWERS[concept_id](d, cx, cy, r, colour)
  templates = TRAIN_TEMPLATES if split == "train" else HELDOUT_TEMPLATES
  index = int(rng.integers(len(templates))) if template is None else template
  concept = BY_ID[concept_id]
  return {"image": np.asarray(image, np.uint8), "caption": caption_for(concept_id, templates[index], background),
          "concept": concept_id, "toxic": concept.toxic, "palette": palette, "background": background,
          "clutter": clutter, "template": index, "radius": radius, "centre": (cx / size, cy / size)}


_SPLIT_CODE = {"train": 0, "heldout": 1}


def make_split(n_per_concept: int, split: str = "train", seed: int = 0, image_size: int = 64,
               concepts: tuple[str, ...] = CONCEPT_IDS) -> list[dict]:
  """n_per_concept renders of every concept (concept-major order), each with an 'id'.

  Deterministic by (seed, split, concept): one concept's renders do not change when others are added.
  """
  out = []
  for concept_id in concepts:
    index = CONCEPT_IDS.index(concept_id)
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
    for i in range(n_per_concept):
      record = render(concept_id, rng, split, image_size)
      record["id"] = f"{split}-{seed}-{concept_id}-{i:05d}"
      out.append(record)
  return out


def render_batch(rng: np.random.Generator, batch: int, split: str = "train", image_size: int = 64) -> list[dict]:
  """`batch` renders of uniformly drawn concepts (fresh procedural data for one training step)."""
  ids = rng.integers(len(CONCEPT_IDS), size=batch)
  return [render(CONCEPT_IDS[int(i)], rng, split, image_size) for i in ids]
