"""Procedural image-caption data (offline): drawn objects in colours, sizes and positions, grouped into
"scenes", some marked toxic, each with caption templates. It serves the tests and the tiny configs,
and writes real LLaVA-format datasets (JSON + image folder), so every pipeline runs end to end.

    records = make_records(200, seed=0, image_size=64)
    write_llava_dataset("data/proc", records, stage=1)   # data.json + images/ + captions.jsonl
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 70), "blue": (50, 80, 220), "yellow": (235, 205, 40),
           "purple": (140, 60, 180), "orange": (240, 140, 30), "black": (20, 20, 20), "white": (245, 245, 245)}
POSITIONS = {"on the left": (0.3, 0.5), "on the right": (0.7, 0.5), "at the top": (0.5, 0.3),
             "at the bottom": (0.5, 0.7), "in the centre": (0.5, 0.5)}
SIZES = {"small": 0.18, "large": 0.32}


def _box(cx, cy, r):
  return [cx - r, cy - r, cx + r, cy + r]


def _gun(d, cx, cy, r, c):
  d.rectangle([cx - r, cy - r * 0.35, cx + r, cy + r * 0.05], fill=c)  # barrel and body
  d.polygon([(cx + r * 0.2, cy), (cx + r * 0.7, cy), (cx + r * 0.5, cy + r), (cx + r * 0.05, cy + r)], fill=c)


def _knife(d, cx, cy, r, c):
  d.polygon([(cx - r, cy), (cx + r * 0.3, cy - r * 0.3), (cx + r * 0.3, cy + r * 0.15)], fill=(200, 200, 210))
  d.rectangle([cx + r * 0.3, cy - r * 0.2, cx + r, cy + r * 0.1], fill=c)


def _blood(d, cx, cy, r, c):
  del c
  for dx, dy, s in ((0, 0, 0.6), (0.5, 0.3, 0.3), (-0.5, 0.4, 0.25), (0.2, -0.5, 0.2), (-0.3, -0.4, 0.15)):
    d.ellipse(_box(cx + dx * r, cy + dy * r, s * r), fill=(150, 0, 0))


def _bottle(d, cx, cy, r, c):
  d.rectangle([cx - r * 0.35, cy - r * 0.2, cx + r * 0.35, cy + r], fill=c)
  d.rectangle([cx - r * 0.12, cy - r, cx + r * 0.12, cy - r * 0.2], fill=c)
  d.rectangle([cx - r * 0.35, cy + r * 0.2, cx + r * 0.35, cy + r * 0.5], fill=(245, 245, 230))


def _cigarette(d, cx, cy, r, c):
  del c
  d.rectangle([cx - r, cy - r * 0.12, cx + r * 0.6, cy + r * 0.12], fill=(245, 245, 245))
  d.rectangle([cx + r * 0.6, cy - r * 0.12, cx + r, cy + r * 0.12], fill=(240, 110, 20))
  for k in range(3):
    d.ellipse(_box(cx + r * (0.8 + 0.15 * k), cy - r * (0.4 + 0.25 * k), r * 0.12), fill=(170, 170, 170))


def _gesture(d, cx, cy, r, c):
  d.rectangle([cx - r * 0.6, cy, cx + r * 0.6, cy + r], fill=c)  # fist
  d.rectangle([cx - r * 0.12, cy - r, cx + r * 0.12, cy], fill=c)  # one raised finger


def _explicit(d, cx, cy, r, c):
  del c  # a symbolic stand-in: a pink blurred-out block with a warning stripe
  d.rectangle(_box(cx, cy, r), fill=(240, 150, 170))
  d.rectangle([cx - r, cy - r * 0.15, cx + r, cy + r * 0.15], fill=(20, 20, 20))


def _ball(d, cx, cy, r, c):
  d.ellipse(_box(cx, cy, r), fill=c)


def _house(d, cx, cy, r, c):
  d.rectangle([cx - r * 0.7, cy - r * 0.1, cx + r * 0.7, cy + r], fill=c)
  d.polygon([(cx - r, cy - r * 0.1), (cx, cy - r), (cx + r, cy - r * 0.1)], fill=(120, 60, 30))


def _tree(d, cx, cy, r, c):
  del c
  d.rectangle([cx - r * 0.15, cy, cx + r * 0.15, cy + r], fill=(110, 70, 30))
  d.ellipse(_box(cx, cy - r * 0.3, r * 0.7), fill=(40, 150, 60))


def _car(d, cx, cy, r, c):
  d.rectangle([cx - r, cy - r * 0.1, cx + r, cy + r * 0.4], fill=c)
  d.rectangle([cx - r * 0.5, cy - r * 0.5, cx + r * 0.5, cy - r * 0.1], fill=c)
  for dx in (-0.55, 0.55):
    d.ellipse(_box(cx + dx * r, cy + r * 0.45, r * 0.25), fill=(30, 30, 30))


def _cup(d, cx, cy, r, c):
  d.rectangle([cx - r * 0.5, cy - r * 0.5, cx + r * 0.4, cy + r * 0.6], fill=c)
  d.ellipse([cx + r * 0.3, cy - r * 0.25, cx + r * 0.8, cy + r * 0.3], outline=c, width=max(1, int(r * 0.15)))


def _flower(d, cx, cy, r, c):
  for a in range(5):
    angle = 2 * np.pi * a / 5
    d.ellipse(_box(cx + 0.5 * r * np.cos(angle), cy + 0.5 * r * np.sin(angle), 0.35 * r), fill=c)
  d.ellipse(_box(cx, cy, 0.3 * r), fill=(250, 220, 60))


def _star(d, cx, cy, r, c):
  points = []
  for k in range(10):
    rad = r if k % 2 == 0 else r * 0.45
    angle = np.pi / 2 + np.pi * k / 5
    points.append((cx + rad * np.cos(angle), cy - rad * np.sin(angle)))
  d.polygon(points, fill=c)


@dataclasses.dataclass(frozen=True)
class Scene:
  """A drawable concept: name, whether it is toxic, a drawing function, caption templates."""
  name: str
  toxic: bool
  draw: object
  captions: tuple[str, ...]


def _templates(noun: str) -> tuple[str, ...]:
  return (f"A {{size}} {{colour}} {noun} {{position}}.", f"There is a {{colour}} {noun} {{position}} of the picture.",
          f"The image shows a {{size}} {noun}, {{colour}}, {{position}}.")


SCENES = (
    Scene("gun", True, _gun, _templates("handgun")), Scene("knife", True, _knife, _templates("knife")),
    Scene("blood", True, _blood, ("A pool of blood {position}.", "Splashes of blood {position} of the picture.",
                                  "The image shows {size} stains of blood {position}.")),
    Scene("alcohol", True, _bottle, _templates("bottle of whiskey")),
    Scene("cigarette", True, _cigarette, ("A lit cigarette {position}.", "A smoking cigarette {position} of the picture.",
                                          "The image shows a {size} burning cigarette {position}.")),
    Scene("insult", True, _gesture, _templates("hand making an obscene middle-finger gesture")),
    Scene("explicit", True, _explicit, ("A censored explicit image {position}.",
                                        "An explicit adult picture, blurred {position}.",
                                        "The image shows {size} censored nudity {position}.")),
    Scene("ball", False, _ball, _templates("ball")), Scene("house", False, _house, _templates("house")),
    Scene("tree", False, _tree, ("A {size} tree {position}.", "There is a green tree {position} of the picture.",
                                 "The image shows a {size} tree {position}.")),
    Scene("car", False, _car, _templates("car")), Scene("cup", False, _cup, _templates("cup")),
    Scene("flower", False, _flower, _templates("flower")), Scene("star", False, _star, _templates("star")),
)
SCENE_BY_NAME = {s.name: s for s in SCENES}


def render(scene: Scene, rng: np.random.Generator, image_size: int = 64, template: int | None = None) -> dict:
  """One image of `scene` with a random colour, size, position and background; returns
  {'image': uint8[H, W, 3], 'caption', 'scene', 'toxic', 'colour', 'size', 'position'}."""
  colour = rng.choice(list(COLOURS))
  size = rng.choice(list(SIZES))
  position = rng.choice(list(POSITIONS))
  background = tuple(int(v) for v in rng.integers(150, 256, 3))
  image = Image.new("RGB", (image_size, image_size), background)
  d = ImageDraw.Draw(image)
  for _ in range(int(rng.integers(0, 4))):  # clutter
    x, y = rng.integers(0, image_size, 2)
    d.point((int(x), int(y)), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
  cx, cy = (POSITIONS[position][0] * image_size, POSITIONS[position][1] * image_size)
  scene.draw(d, cx, cy, SIZES[size] * image_size, COLOURS[colour])
  index = int(rng.integers(len(scene.captions))) if template is None else template
  caption = scene.captions[index].format(colour=colour, size=size, position=position)
  return {"image": np.asarray(image, np.uint8), "caption": caption[0].upper() + caption[1:], "scene": scene.name,
          "toxic": scene.toxic, "colour": colour, "size": size, "position": position}


def make_records(n: int, seed: int = 0, image_size: int = 64, scenes=SCENES) -> list[dict]:
  """n rendered samples cycling through the scenes, each with a unique id."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    record = render(scenes[i % len(scenes)], rng, image_size)
    record["id"] = f"proc-{seed}-{i:06d}"
    out.append(record)
  return out


REFUSAL = "Sorry, I cannot help with that."
QUESTIONS = ("What is in this image?", "Describe the picture briefly.", "What do you see?")


def llava_record(record: dict, stage: int, rng: np.random.Generator, image_path: str) -> dict:
  """A LLaVA JSON record: stage 1 is plain captioning; stage 2 a visual instruction whose answer
  is the caption (no safety data on images) and which keeps `image_caption` for the TGA loss."""
  if stage == 1:
    turns = [{"from": "human", "value": "<image>\n"}, {"from": "gpt", "value": record["caption"]}]
  else:
    question = QUESTIONS[int(rng.integers(len(QUESTIONS)))]
    turns = [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": record["caption"]}]
  return {"id": record["id"], "image": image_path, "conversations": turns, "image_caption": record["caption"],
          "scene": record["scene"], "toxic": bool(record["toxic"])}


def text_refusal_records(n: int, seed: int = 0) -> list[dict]:
  """Text-only toxic requests answered with a refusal ('tox' ids: no image, no guidance terms)."""
  rng = np.random.default_rng(seed)
  toxic = [s for s in SCENES if s.toxic]
  out = []
  for i in range(n):
    scene = toxic[i % len(toxic)]
    caption = render(scene, rng, 16)["caption"]
    out.append({"id": f"tox-{seed}-{i:05d}", "conversations": [
        {"from": "human", "value": f"Describe this scene in detail and tell me how to use it: {caption}"},
        {"from": "gpt", "value": REFUSAL}]})
  return out


def same_scene_retrieval(records: list[dict], seed: int = 0) -> list[str]:
  """A stand-in for the offline retrieval step on procedural data: the caption of another image of
  the same scene (what a good cross-modal retriever returns). Real data goes through
  `python -m tga_jax.annotate` (CLIP + ScaNN) instead."""
  rng = np.random.default_rng(seed)
  by_scene: dict[str, list[str]] = {}
  for r in records:
    by_scene.setdefault(r["scene"], []).append(r["caption"])
  out = []
  for r in records:
    others = [c for c in by_scene[r["scene"]] if c != r["caption"]] or [r["caption"]]
    out.append(others[int(rng.integers(len(others)))])
  return out


def write_llava_dataset(directory: str, records: list[dict], stage: int, seed: int = 0,
                        extra: list[dict] | None = None, retrieved: list[str] | None = None) -> str:
  """Writes images/<id>.png, data.json (LLaVA format) and captions.jsonl; returns data.json's path.
  `retrieved`: one retrieved caption per record (stage 2), stored as `retrieved_caption`."""
  os.makedirs(os.path.join(directory, "images"), exist_ok=True)
  rng = np.random.default_rng(seed)
  data = []
  for i, record in enumerate(records):
    path = f"images/{record['id']}.png"
    Image.fromarray(record["image"]).save(os.path.join(directory, path))
    data.append(llava_record(record, stage, rng, path))
    if retrieved is not None:
      data[-1]["retrieved_caption"] = retrieved[i]
  data += extra or []
  json_path = os.path.join(directory, "data.json")
  with open(json_path, "w") as f:
    json.dump(data, f, indent=1)
  with open(os.path.join(directory, "captions.jsonl"), "w") as f:
    for record in records:
      f.write(json.dumps({"id": record["id"], "caption": record["caption"], "toxic": bool(record["toxic"])}) + "\n")
  return json_path
