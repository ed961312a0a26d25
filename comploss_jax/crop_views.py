"""CmpCrop for text classification: nested views of one input that drop whole sentences or paragraphs.

    views = classification_crop_views(tokenizer, records, ("text",), max_length=256, num_crops=1, rng=rng)
    # views["input_ids"]: int32[N, 1 + num_crops, max_length]; view 0 is the plain truncated input

The input ablation of the paper (spec §2) applied to a single long text: view 0 is exactly what
`features.encode_classification` gives (the text truncated to `max_length` tokens); each cropped view
keeps a shrinking subset of the units (sentences or paragraphs) that view 0 shows, in their original
order. The subsets are nested (view j keeps the first n_j units of one random permutation, with
n_0 > n_1 > ... >= 1), so a cropped view never sees text that a less cropped view does not: dropping a
unit never lets text from beyond view 0's truncation point in. Cropping works on view 0's tokens, so a
unit cut by the truncation is kept or dropped as the part view 0 shows.
"""
from __future__ import annotations

import re

import numpy as np

from comploss_jax.features import _text

UNITS = ("sentence", "paragraph")

# A sentence ends at . ! or ? (closing quotes or brackets may follow), then whitespace, then what
# starts a sentence: a capital or a digit, possibly after an opening quote or bracket. ("$1.13bn" and
# "e.g. the" do not end one.)
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]\u2019\u201d]*\s+(?=[\"'(\[\u2018\u201c]?[A-Z0-9])")
# Abbreviations that are followed by a capital without ending the sentence ("Mr. Blair"); single
# letters ("George W. Bush", "the U.S. Senate") do not end one either.
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "gen", "sen", "gov", "lt", "col", "sgt", "capt",
                            "rev", "jr", "sr", "no", "vs", "mt", "ft"})
_LAST_WORD = re.compile(r"(\w+)\.$")


def text_units(text: str, unit: str = "sentence") -> list[tuple[int, int]]:
  """Character spans [start, end) of the text's paragraphs (non-empty lines) or sentences, in order.

  Spans hold no leading or trailing whitespace; every non-space character lies in exactly one span.
  A line break always ends a sentence (a BBC headline is its own line).
  """
  if unit not in UNITS:
    raise ValueError(f"unit={unit!r}: expected one of {UNITS}")
  spans = []
  for line in re.finditer(r"[^\n]+", text):
    pieces = [(line.start(), line.end())]
    if unit == "sentence":
      pieces, start = [], line.start()
      for end in _SENTENCE_END.finditer(text, line.start(), line.end()):
        word = _LAST_WORD.search(text, start, end.start() + 1)
        abbreviation = word is not None and (len(word.group(1)) == 1 or word.group(1).lower() in _ABBREVIATIONS)
        if abbreviation and end.group().startswith("."):
          continue
        pieces.append((start, end.end()))
        start = end.end()
      pieces.append((start, line.end()))
    for start, end in pieces:
      piece = text[start:end]
      stripped = piece.strip()
      if stripped:
        first = start + len(piece) - len(piece.lstrip())
        spans.append((first, first + len(stripped)))
  return spans


def nested_keep_counts(total: int, num_crops: int, rng: np.random.Generator) -> list[int]:
  """Units kept per view: `total` for view 0, then `num_crops` distinct counts in [1, total) sampled
  without replacement, descending. With fewer than num_crops smaller counts available (a view 0 of
  one or two units), the last count repeats: such views equal the one before them."""
  if total < 1 or num_crops < 0:
    raise ValueError(f"total={total}, num_crops={num_crops}: need total >= 1 and num_crops >= 0")
  available = total - 1
  smaller = sorted((rng.choice(available, size=min(num_crops, available), replace=False) + 1).tolist(), reverse=True)
  smaller += [smaller[-1] if smaller else total] * (num_crops - len(smaller))
  return [total] + smaller


def crop_views(tokenizer, text: str, max_length: int, num_crops: int, rng: np.random.Generator,
               unit: str = "sentence") -> dict[str, np.ndarray]:
  """One text -> int32 input_ids/attention_mask/token_type_ids [1 + num_crops, max_length] and
  kept_units [1 + num_crops, U] (1 where view j keeps unit u of the text_units(text, unit) list).

  Special tokens ([CLS], [SEP] or <s>, </s>) stay in every view; padding follows the kept tokens.
  """
  text = _text(text)
  enc = tokenizer(text, truncation=True, max_length=max_length, padding="max_length", return_offsets_mapping=True,
                  return_special_tokens_mask=True)
  ids = np.asarray(enc["input_ids"], np.int32)
  mask = np.asarray(enc["attention_mask"], np.int32)
  types = np.asarray(enc.get("token_type_ids") or np.zeros_like(ids), np.int32)
  special = np.asarray(enc["special_tokens_mask"], bool)
  starts = np.asarray([start for start, _ in enc["offset_mapping"]])
  spans = text_units(text, unit)
  content = (mask > 0) & ~special
  # The unit of each content token: the last span starting at or before the token's first character.
  unit_of = np.full(len(ids), -1)
  if spans:
    unit_of[content] = np.searchsorted(np.asarray([s for s, _ in spans]), starts[content], side="right") - 1
  unit_of[content] = np.maximum(unit_of[content], 0)  # text before the first span is only whitespace
  shown = np.unique(unit_of[content])
  order = rng.permutation(shown)
  counts = nested_keep_counts(len(shown), num_crops, rng) if len(shown) else [0] * (1 + num_crops)
  out = {"input_ids": [], "attention_mask": [], "token_type_ids": [], "kept_units": []}
  for count in counts:
    kept_units = np.zeros(len(spans), np.int32)
    kept_units[order[:count]] = 1
    keep = (special & (mask > 0)) | (content & np.isin(unit_of, order[:count]))
    n = int(keep.sum())
    pad = max_length - n
    out["input_ids"].append(np.concatenate([ids[keep], np.full(pad, tokenizer.pad_token_id or 0, np.int32)]))
    out["attention_mask"].append(np.concatenate([np.ones(n, np.int32), np.zeros(pad, np.int32)]))
    out["token_type_ids"].append(np.concatenate([types[keep], np.zeros(pad, np.int32)]))
    out["kept_units"].append(kept_units)
  return {k: np.asarray(v, np.int32) for k, v in out.items()}


def classification_crop_views(tokenizer, records, text_keys, max_length: int, num_crops: int,
                              rng: np.random.Generator, unit: str = "sentence") -> dict[str, np.ndarray]:
  """Records of a single-text classification task -> views int32 input_ids/attention_mask/
  token_type_ids [N, 1 + num_crops, max_length] and labels [N] (as `encode_classification` gives them).

  The crops are drawn once per record from `rng` (a run draws them with its seed)."""
  if len(text_keys) != 1:
    raise ValueError(f"cropped views need a single-text task; this one reads {tuple(text_keys)}")
  views = [crop_views(tokenizer, r[text_keys[0]], max_length, num_crops, rng, unit) for r in records]
  out = {k: np.stack([v[k] for v in views]) for k in ("input_ids", "attention_mask", "token_type_ids")}
  labels = np.asarray([r["label"] for r in records])
  out["labels"] = labels.astype(np.float32 if labels.dtype.kind == "f" else np.int32)
  return out
