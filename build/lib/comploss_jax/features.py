"""Tokenised model inputs from dataset records (host side, numpy)."""
from __future__ import annotations

import numpy as np


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def encode_classification(tokenizer, records, text_keys, max_length: int) -> dict[str, np.ndarray]:
  """Records (dicts with the text keys and 'label') -> int32[N, max_length] inputs and labels[N].

  Regression labels stay float32; class labels int32.
  """
  columns = [[_text(r[k]) for r in records] for k in text_keys]
  enc = tokenizer(*columns, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
  labels = np.asarray([r["label"] for r in records])
  out = {"input_ids": enc["input_ids"].astype(np.int32), "attention_mask": enc["attention_mask"].astype(np.int32),
         "token_type_ids": enc.get("token_type_ids", np.zeros_like(enc["input_ids"])).astype(np.int32)}
  out["labels"] = labels.astype(np.float32 if labels.dtype.kind == "f" else np.int32)
  return out


def stratified_subset(labels: np.ndarray, size: int | None, seed: int) -> np.ndarray:
  """Indices of a class-stratified random subset of `size` examples (all when size is None).

  Each class gets round(size * share) examples (largest remainders fill the rest), so small
  training sets keep the class balance of the full split.
  """
  n = len(labels)
  if size is None or size >= n:
    return np.arange(n)
  rng = np.random.default_rng(seed)
  classes, counts = np.unique(labels, return_counts=True)
  quota = size * counts / n
  take = np.floor(quota).astype(int)
  for i in np.argsort(-(quota - take))[: size - take.sum()]:
    take[i] += 1
  chosen = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
  return np.sort(np.concatenate(chosen))
