"""Extractive QA inputs: SQuAD sliding windows, n-best decoding, crop sizes for CmpCrop views.

Both use a fast tokenizer's offset mapping to move between characters and tokens. HotpotQA's
views are built in hotpot.py.
"""
from __future__ import annotations

import numpy as np

from comploss_jax.features import _text


def _token_span(offsets, sequence_ids, char_start: int, char_end: int) -> tuple[int, int] | None:
  """Token indices (inclusive) of the context tokens covering [char_start, char_end), or None when
  the answer is not entirely inside this window."""
  context = [i for i, s in enumerate(sequence_ids) if s == 1]
  if not context or offsets[context[0]][0] > char_start or offsets[context[-1]][1] < char_end:
    return None
  start = next(i for i in context if offsets[i][1] > char_start)
  end = next(i for i in reversed(context) if offsets[i][0] < char_end)
  return start, end


def squad_windows(tokenizer, examples: list[dict], max_length: int, stride: int) -> dict[str, np.ndarray]:
  """SQuAD examples -> one feature per window of the context (question first, context windows
  overlapping by `stride` tokens). Answers outside a window point at token 0 ([CLS]).

  Returns int32 arrays input_ids/attention_mask/token_type_ids [F, L], start/end [F], and for
  decoding: example_index [F], offsets [F, L, 2] (-1 outside the context).
  """
  enc = tokenizer([_text(e["question"]).lstrip() for e in examples], [_text(e["context"]) for e in examples],
                  truncation="only_second", max_length=max_length, stride=stride, return_overflowing_tokens=True,
                  return_offsets_mapping=True, padding="max_length")
  starts, ends, offsets = [], [], []
  for i, example_index in enumerate(enc["overflow_to_sample_mapping"]):
    seq = enc.sequence_ids(i)
    offs = enc["offset_mapping"][i]
    answers = examples[example_index]["answers"]
    span = None
    if len(answers["text"]):
      char_start = int(answers["answer_start"][0])
      span = _token_span(offs, seq, char_start, char_start + len(_text(answers["text"][0])))
    starts.append(span[0] if span else 0)
    ends.append(span[1] if span else 0)
    offsets.append([list(o) if s == 1 else [-1, -1] for o, s in zip(offs, seq)])
  token_types = enc.get("token_type_ids")
  ids = np.asarray(enc["input_ids"], np.int32)
  return {"input_ids": ids, "attention_mask": np.asarray(enc["attention_mask"], np.int32),
          "token_type_ids": np.asarray(token_types if token_types is not None else np.zeros_like(ids), np.int32),
          "start": np.asarray(starts, np.int32), "end": np.asarray(ends, np.int32),
          "example_index": np.asarray(enc["overflow_to_sample_mapping"], np.int32),
          "offsets": np.asarray(offsets, np.int32)}


def best_spans(start_logits, end_logits, features: dict, contexts: list[str], n_best: int = 20,
               max_answer_tokens: int = 30) -> list[str]:
  """Highest-scoring valid span (start <= end, inside the context, at most max_answer_tokens) per
  example, over all of its windows: the n_best starts x n_best ends of each window are scored by
  start_logit + end_logit. Returns one answer string per context ('' if no valid span)."""
  best = [(-np.inf, "") for _ in contexts]
  for f in range(len(start_logits)):
    index = int(features["example_index"][f])
    offsets = features["offsets"][f]
    top_starts = np.argsort(start_logits[f])[::-1][:n_best]
    top_ends = np.argsort(end_logits[f])[::-1][:n_best]
    for s in top_starts:
      for e in top_ends:
        if offsets[s][0] < 0 or offsets[e][0] < 0 or e < s or e - s + 1 > max_answer_tokens:
          continue
        score = float(start_logits[f][s] + end_logits[f][e])
        if score > best[index][0]:
          best[index] = (score, contexts[index][offsets[s][0]:offsets[e][1]])
  return [text for _, text in best]


def crop_keep_counts(num_distractors: int, num_crops: int, rng: np.random.Generator) -> list[int]:
  """Distractor counts of the views: all for view 0, then `num_crops` distinct smaller counts in
  descending order (sampled), so each view keeps a prefix of the previous view's distractors."""
  if num_crops > num_distractors:
    raise ValueError(f"{num_crops} crops need at least as many distractors; this example has {num_distractors}")
  smaller = sorted(rng.choice(num_distractors, size=num_crops, replace=False).tolist(), reverse=True)
  return [num_distractors] + smaller
