"""Evaluation metrics of the paper's tasks, in numpy (host side, after prediction).

GLUE: accuracy, binary F1, Matthews correlation, Pearson/Spearman. SQuAD v1.1: exact match and
token F1 with the official answer normalisation, max over the gold answers.
"""
from __future__ import annotations

import collections
import re
import string

import numpy as np


def accuracy(pred, gold) -> float:
  return float(np.mean(np.asarray(pred) == np.asarray(gold)))


def f1_binary(pred, gold, positive: int = 1) -> float:
  pred, gold = np.asarray(pred) == positive, np.asarray(gold) == positive
  tp = np.sum(pred & gold)
  precision = tp / max(pred.sum(), 1)
  recall = tp / max(gold.sum(), 1)
  return float(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))


def matthews_corrcoef(pred, gold) -> float:
  """Binary MCC = (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)); 0 when undefined."""
  pred, gold = np.asarray(pred).astype(bool), np.asarray(gold).astype(bool)
  tp, tn = float(np.sum(pred & gold)), float(np.sum(~pred & ~gold))
  fp, fn = float(np.sum(pred & ~gold)), float(np.sum(~pred & gold))
  denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
  return float((tp * tn - fp * fn) / denom) if denom else 0.0


def pearson(x, y) -> float:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  x, y = x - x.mean(), y - y.mean()
  denom = np.sqrt((x * x).sum() * (y * y).sum())
  return float((x * y).sum() / denom) if denom else 0.0


def _ranks(x) -> np.ndarray:
  """Average ranks (ties share the mean of their positions), as scipy.stats.rankdata."""
  x = np.asarray(x)
  order = np.argsort(x, kind="mergesort")
  ranks = np.empty(len(x), np.float64)
  ranks[order] = np.arange(1, len(x) + 1)
  for value in np.unique(x):
    tied = x == value
    ranks[tied] = ranks[tied].mean()
  return ranks


def spearman(x, y) -> float:
  return pearson(_ranks(x), _ranks(y))


def classification_metrics(pred, gold, names: tuple[str, ...]) -> dict[str, float]:
  """The named metrics of a task: 'accuracy', 'f1', 'mcc', 'pearson', 'spearman', 'macro_f1'."""
  table = {"accuracy": accuracy, "f1": f1_binary, "mcc": matthews_corrcoef, "pearson": pearson,
           "spearman": spearman, "macro_f1": macro_f1}
  return {name: table[name](pred, gold) for name in names}


def macro_f1(pred, gold) -> float:
  classes = np.unique(np.concatenate([np.asarray(pred), np.asarray(gold)]))
  return float(np.mean([f1_binary(np.asarray(pred) == c, np.asarray(gold) == c, positive=True) for c in classes]))


# --- SQuAD v1.1 (the official evaluation script's definitions) ---

def normalize_answer(text: str) -> str:
  """Lower case, drop punctuation and the articles a/an/the, collapse whitespace."""
  text = text.lower()
  text = "".join(ch for ch in text if ch not in set(string.punctuation))
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
  return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
  pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
  common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
  same = sum(common.values())
  if same == 0:
    return 0.0
  precision, recall = same / len(pred_tokens), same / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: dict[str, str], golds: dict[str, list[str]]) -> dict[str, float]:
  """{'exact_match', 'f1'} in percent, each the max over an example's gold answers, averaged over
  all gold examples (a missing prediction scores 0, as in the official script)."""
  em = f1 = 0.0
  for qid, answers in golds.items():
    pred = predictions.get(qid, "")
    em += max(exact_match(pred, a) for a in answers)
    f1 += max(token_f1(pred, a) for a in answers)
  n = max(len(golds), 1)
  return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}
