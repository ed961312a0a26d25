"""PIL drawers for the 37 concepts of the miniature world: `DRAWERS[concept_id](draw, cx, cy, r, colour)`.

Each drawer fills roughly the box [cx - r, cx + r] x [cy - r, cy + r] of an ImageDraw. The 14 scenes of
`tga_jax.data.procedural` are reused as they are; the other 23 are drawn here. Shapes are chosen to differ
at 64 px with 8 px patches (silhouette first, fixed colours only where they are the object's identity:
a banana is yellow, a sun is yellow-orange), so a small ViT can tell every concept apart.
"""
from __future__ import annotations

import numpy as np

from tga_jax.data.procedural import SCENE_BY_NAME


def _box(cx, cy, r):
  return [cx - r, cy - r, cx + r, cy + r]


def _width(r, frac):
  """A line width proportional to the object's radius, at least 1 px."""
  return max(1, round(r * frac))


def _darker(c, f=0.55):
  return tuple(int(v * f) for v in c)


def _sun(d, cx, cy, r, c):
  del c
  for k in range(8):
    a = np.pi * k / 4
    d.line([(cx + 0.55 * r * np.cos(a), cy + 0.55 * r * np.sin(a)), (cx + r * np.cos(a), cy + r * np.sin(a))],
           fill=(250, 170, 20), width=_width(r, 0.14))
  d.ellipse(_box(cx, cy, 0.5 * r), fill=(252, 210, 40))


def _moon(d, cx, cy, r, c):
  del c  # pale yellow: a crescent between a half circle and a flattened half ellipse
  t = np.linspace(-np.pi / 2, np.pi / 2, 24)
  outer = [(cx - r * np.cos(v) + 0.3 * r, cy + r * np.sin(v)) for v in t]
  inner = [(cx - 0.3 * r * np.cos(v) + 0.3 * r, cy + r * np.sin(v)) for v in t[::-1]]
  d.polygon(outer + inner, fill=(245, 230, 140))


def _cloud(d, cx, cy, r, c):
  for dx, dy, s in ((-0.5, 0.15, 0.4), (0.0, -0.15, 0.55), (0.5, 0.1, 0.42)):
    d.ellipse(_box(cx + dx * r, cy + dy * r, s * r), fill=c)
  d.rectangle([cx - 0.9 * r, cy + 0.1 * r, cx + 0.9 * r, cy + 0.5 * r], fill=c)


def _fish(d, cx, cy, r, c):
  d.ellipse([cx - 0.8 * r, cy - 0.45 * r, cx + 0.45 * r, cy + 0.45 * r], fill=c)
  d.polygon([(cx + 0.35 * r, cy), (cx + r, cy - 0.5 * r), (cx + r, cy + 0.5 * r)], fill=c)
  d.ellipse(_box(cx - 0.5 * r, cy - 0.1 * r, 0.1 * r), fill=(10, 10, 10))


def _bird(d, cx, cy, r, c):
  d.ellipse([cx - 0.7 * r, cy - 0.25 * r, cx + 0.4 * r, cy + 0.45 * r], fill=c)  # body
  d.ellipse(_box(cx + 0.45 * r, cy - 0.35 * r, 0.28 * r), fill=c)  # head
  d.polygon([(cx + 0.7 * r, cy - 0.45 * r), (cx + r, cy - 0.3 * r), (cx + 0.7 * r, cy - 0.2 * r)],
            fill=(245, 150, 20))  # beak
  d.polygon([(cx - 0.4 * r, cy), (cx + 0.1 * r, cy), (cx - 0.3 * r, cy - 0.8 * r)], fill=_darker(c))  # wing up
  d.polygon([(cx - 0.7 * r, cy), (cx - r, cy - 0.3 * r), (cx - r, cy + 0.35 * r)], fill=c)  # tail


def _apple(d, cx, cy, r, c):
  del c
  d.ellipse([cx - 0.8 * r, cy - 0.55 * r, cx + 0.8 * r, cy + r], fill=(205, 25, 35))
  d.rectangle([cx - 0.06 * r, cy - r, cx + 0.06 * r, cy - 0.45 * r], fill=(100, 60, 20))
  d.ellipse([cx + 0.05 * r, cy - 0.95 * r, cx + 0.55 * r, cy - 0.65 * r], fill=(40, 160, 50))


def _banana(d, cx, cy, r, c):
  del c
  d.arc(_box(cx, cy - 0.4 * r, r), 20, 160, fill=(240, 210, 40), width=_width(r, 0.35))
  d.ellipse(_box(cx - 0.9 * r, cy - 0.1 * r, 0.1 * r), fill=(90, 60, 20))


def _boat(d, cx, cy, r, c):
  d.polygon([(cx - r, cy + 0.3 * r), (cx + r, cy + 0.3 * r), (cx + 0.65 * r, cy + 0.8 * r),
             (cx - 0.65 * r, cy + 0.8 * r)], fill=(120, 70, 30))
  d.line([(cx, cy + 0.3 * r), (cx, cy - r)], fill=(60, 40, 20), width=_width(r, 0.08))
  d.polygon([(cx + 0.05 * r, cy - 0.95 * r), (cx + 0.05 * r, cy + 0.2 * r), (cx + 0.8 * r, cy + 0.2 * r)], fill=c)
  d.polygon([(cx - 0.05 * r, cy - 0.7 * r), (cx - 0.05 * r, cy + 0.2 * r), (cx - 0.6 * r, cy + 0.2 * r)],
            fill=(245, 245, 245))


def _bicycle(d, cx, cy, r, c):
  w = _width(r, 0.1)
  for dx in (-0.55, 0.55):
    d.ellipse(_box(cx + dx * r, cy + 0.35 * r, 0.42 * r), outline=(25, 25, 25), width=w)
  frame = [(cx - 0.55 * r, cy + 0.35 * r), (cx - 0.1 * r, cy - 0.25 * r), (cx + 0.4 * r, cy - 0.25 * r),
           (cx + 0.55 * r, cy + 0.35 * r), (cx, cy + 0.35 * r), (cx - 0.55 * r, cy + 0.35 * r)]
  d.line(frame, fill=c, width=w + 1)
  d.line([(cx + 0.4 * r, cy - 0.25 * r), (cx + 0.35 * r, cy - 0.55 * r)], fill=c, width=w + 1)  # handlebar
  d.line([(cx - 0.2 * r, cy - 0.45 * r), (cx, cy - 0.45 * r)], fill=(25, 25, 25), width=w + 1)  # saddle


def _umbrella(d, cx, cy, r, c):
  d.pieslice(_box(cx, cy - 0.1 * r, r), 180, 360, fill=c)
  w = _width(r, 0.1)
  d.line([(cx, cy - 0.1 * r), (cx, cy + 0.8 * r)], fill=(40, 40, 40), width=w)
  d.arc([cx - 0.3 * r, cy + 0.6 * r, cx, cy + r], 0, 180, fill=(40, 40, 40), width=w)


def _clock(d, cx, cy, r, c):
  d.ellipse(_box(cx, cy, r), fill=(250, 250, 245), outline=c, width=_width(r, 0.18))
  w = _width(r, 0.1)
  d.line([(cx, cy), (cx, cy - 0.65 * r)], fill=(10, 10, 10), width=w)
  d.line([(cx, cy), (cx + 0.45 * r, cy + 0.1 * r)], fill=(10, 10, 10), width=w)
  for k in range(4):
    a = np.pi * k / 2
    d.ellipse(_box(cx + 0.72 * r * np.cos(a), cy + 0.72 * r * np.sin(a), 0.06 * r + 0.5), fill=(10, 10, 10))


def _key(d, cx, cy, r, c):
  d.ellipse(_box(cx - 0.6 * r, cy, 0.38 * r), outline=c, width=_width(r, 0.16))
  d.rectangle([cx - 0.25 * r, cy - 0.09 * r, cx + r, cy + 0.09 * r], fill=c)
  for x in (0.55, 0.8):
    d.rectangle([cx + (x - 0.08) * r, cy, cx + (x + 0.08) * r, cy + 0.38 * r], fill=c)


def _book(d, cx, cy, r, c):
  d.rectangle([cx - 0.65 * r, cy - 0.85 * r, cx + 0.65 * r, cy + 0.85 * r], fill=c)
  d.rectangle([cx + 0.5 * r, cy - 0.75 * r, cx + 0.75 * r, cy + 0.75 * r], fill=(250, 250, 235))  # pages
  d.rectangle([cx - 0.65 * r, cy - 0.85 * r, cx - 0.45 * r, cy + 0.85 * r], fill=_darker(c))  # spine
  d.rectangle([cx - 0.3 * r, cy - 0.45 * r, cx + 0.3 * r, cy - 0.25 * r], fill=(245, 245, 245))  # title label


def _chair(d, cx, cy, r, c):
  w = _width(r, 0.14)
  d.rectangle([cx - 0.55 * r, cy - r, cx - 0.35 * r, cy + r], fill=c)  # back post and back leg
  d.rectangle([cx - 0.55 * r, cy - 0.05 * r, cx + 0.6 * r, cy + 0.12 * r], fill=c)  # seat
  d.line([(cx + 0.5 * r, cy + 0.1 * r), (cx + 0.5 * r, cy + r)], fill=c, width=w)  # front leg
  for y in (-0.8, -0.45):
    d.line([(cx - 0.45 * r, cy + y * r), (cx - 0.05 * r, cy + y * r)], fill=c, width=w)  # back rails
  d.line([(cx - 0.05 * r, cy - 0.9 * r), (cx - 0.05 * r, cy - 0.05 * r)], fill=c, width=w)


def _lamp(d, cx, cy, r, c):
  d.polygon([(cx - 0.3 * r, cy - r), (cx + 0.3 * r, cy - r), (cx + 0.6 * r, cy - 0.35 * r),
             (cx - 0.6 * r, cy - 0.35 * r)], fill=c)  # shade
  d.ellipse(_box(cx, cy - 0.2 * r, 0.15 * r), fill=(255, 240, 120))  # bulb
  d.line([(cx, cy - 0.35 * r), (cx, cy + 0.8 * r)], fill=(60, 60, 60), width=_width(r, 0.1))
  d.rectangle([cx - 0.45 * r, cy + 0.8 * r, cx + 0.45 * r, cy + r], fill=(60, 60, 60))


def _hat(d, cx, cy, r, c):
  d.rectangle([cx - r, cy + 0.45 * r, cx + r, cy + 0.65 * r], fill=c)  # brim
  d.rectangle([cx - 0.55 * r, cy - 0.7 * r, cx + 0.55 * r, cy + 0.5 * r], fill=c)  # crown
  d.rectangle([cx - 0.55 * r, cy + 0.15 * r, cx + 0.55 * r, cy + 0.35 * r], fill=(20, 20, 20))  # band


def _shoe(d, cx, cy, r, c):
  d.polygon([(cx - 0.8 * r, cy - 0.7 * r), (cx - 0.2 * r, cy - 0.7 * r), (cx - 0.1 * r, cy - 0.05 * r),
             (cx + 0.7 * r, cy + 0.15 * r), (cx + 0.9 * r, cy + 0.45 * r), (cx - 0.8 * r, cy + 0.45 * r)], fill=c)
  d.rectangle([cx - 0.85 * r, cy + 0.45 * r, cx + 0.95 * r, cy + 0.65 * r], fill=(245, 245, 245))  # sole
  for k in range(3):  # laces
    y = cy - (0.5 - 0.18 * k) * r
    d.line([(cx - 0.5 * r, y), (cx - 0.15 * r, y)], fill=(245, 245, 245), width=_width(r, 0.06))


def _guitar(d, cx, cy, r, c):
  del c
  body = (170, 100, 40)
  d.ellipse(_box(cx - 0.45 * r, cy + 0.15 * r, 0.5 * r), fill=body)
  d.ellipse(_box(cx - 0.05 * r, cy - 0.05 * r, 0.38 * r), fill=body)
  d.ellipse(_box(cx - 0.25 * r, cy + 0.05 * r, 0.15 * r), fill=(20, 20, 20))  # sound hole
  d.line([(cx - 0.1 * r, cy - 0.05 * r), (cx + 0.85 * r, cy - 0.85 * r)], fill=(80, 45, 15), width=_width(r, 0.16))
  d.rectangle(_box(cx + 0.88 * r, cy - 0.88 * r, 0.12 * r), fill=(40, 25, 10))  # head


def _kite(d, cx, cy, r, c):
  top, right, bottom, left = (cx, cy - r), (cx + 0.6 * r, cy - 0.2 * r), (cx, cy + 0.6 * r), (cx - 0.6 * r, cy - 0.2 * r)
  d.polygon([top, right, bottom, left], fill=c)
  w = _width(r, 0.06)
  d.line([top, bottom], fill=(30, 30, 30), width=w)
  d.line([left, right], fill=(30, 30, 30), width=w)
  tail = [(cx + 0.12 * r * (-1) ** k, cy + (0.6 + 0.1 * k) * r) for k in range(5)]
  d.line([bottom] + tail, fill=(30, 30, 30), width=w)


def _balloon(d, cx, cy, r, c):
  d.ellipse([cx - 0.5 * r, cy - r, cx + 0.5 * r, cy + 0.3 * r], fill=c)
  d.polygon([(cx, cy + 0.28 * r), (cx - 0.1 * r, cy + 0.42 * r), (cx + 0.1 * r, cy + 0.42 * r)], fill=c)
  d.line([(cx, cy + 0.42 * r), (cx + 0.1 * r, cy + 0.7 * r), (cx - 0.05 * r, cy + r)], fill=(40, 40, 40),
         width=_width(r, 0.05))


def _pencil(d, cx, cy, r, c):
  del c  # a diagonal yellow pencil: eraser, body, wooden cone, lead
  t = np.array([1.0, -1.0]) / np.sqrt(2.0)  # along the pencil
  n = np.array([1.0, 1.0]) / np.sqrt(2.0)   # across it
  h = 0.16 * r

  def quad(a, b, col):
    p0, p1 = np.array([cx, cy]) + a * r * t, np.array([cx, cy]) + b * r * t
    d.polygon([tuple(p0 + h * n), tuple(p1 + h * n), tuple(p1 - h * n), tuple(p0 - h * n)], fill=col)

  quad(-1.0, -0.8, (240, 140, 160))
  quad(-0.8, 0.6, (245, 200, 30))
  tip = np.array([cx, cy]) + r * t
  base = np.array([cx, cy]) + 0.6 * r * t
  d.polygon([tuple(base + h * n), tuple(base - h * n), tuple(tip)], fill=(230, 200, 150))
  d.polygon([tuple(tip), tuple(tip - 0.15 * r * t + 0.05 * r * n), tuple(tip - 0.15 * r * t - 0.05 * r * n)],
            fill=(40, 40, 40))


def _mushroom(d, cx, cy, r, c):
  del c
  d.rectangle([cx - 0.2 * r, cy - 0.1 * r, cx + 0.2 * r, cy + r], fill=(235, 225, 200))
  d.pieslice([cx - r, cy - 0.9 * r, cx + r, cy + 0.5 * r], 180, 360, fill=(210, 30, 30))
  for dx, dy in ((-0.5, -0.35), (0.0, -0.65), (0.45, -0.3)):
    d.ellipse(_box(cx + dx * r, cy + dy * r, 0.1 * r), fill=(250, 250, 250))


def _butterfly(d, cx, cy, r, c):
  lower = _darker(c, 0.75)
  for sx in (-1, 1):  # PIL boxes need x0 <= x1, hence the sorted corners
    xs = sorted((cx + sx * 0.05 * r, cx + sx * 0.9 * r))
    d.ellipse([xs[0], cy - 0.9 * r, xs[1], cy], fill=c)
    xs = sorted((cx + sx * 0.05 * r, cx + sx * 0.6 * r))
    d.ellipse([xs[0], cy, xs[1], cy + 0.7 * r], fill=lower)
  d.rectangle([cx - 0.07 * r, cy - 0.7 * r, cx + 0.07 * r, cy + 0.7 * r], fill=(20, 20, 20))
  d.line([(cx, cy - 0.7 * r), (cx - 0.25 * r, cy - r)], fill=(20, 20, 20), width=_width(r, 0.05))
  d.line([(cx, cy - 0.7 * r), (cx + 0.25 * r, cy - r)], fill=(20, 20, 20), width=_width(r, 0.05))


DRAWERS = {
    **{name: scene.draw for name, scene in SCENE_BY_NAME.items()},
    "sun": _sun, "moon": _moon, "cloud": _cloud, "fish": _fish, "bird": _bird, "apple": _apple,
    "banana": _banana, "boat": _boat, "bicycle": _bicycle, "umbrella": _umbrella, "clock": _clock, "key": _key,
    "book": _book, "chair": _chair, "lamp": _lamp, "hat": _hat, "shoe": _shoe, "guitar": _guitar, "kite": _kite,
    "balloon": _balloon, "pencil": _pencil, "mushroom": _mushroom, "butterfly": _butterfly,
}
