"""Evaluation metrics of the paper's tasks, in numpy (host side, after prediction).

GLUE: accuracy, binary F1, Matthews correlation, Pearson/Spearman. SQuAD v1.1: exact match and
token F1 with the official answer normalisation, max over the gold answers. HotpotQA: answer,
supporting-fact and joint EM/F1/precision/recall as the official hotpot_evaluate_v1.py defines them.
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
  all gold examples.

  A question without a prediction scores 0 on both, as in the official script, which skips it. (It
  is not scored as the empty answer: that would give EM 1 against a gold answer that normalises to
  the empty string, e.g. "The".)
  """
  em = f1 = 0.0
  for qid, answers in golds.items():
    if qid not in predictions:
      continue
    pred = predictions[qid]
    em += max(exact_match(pred, a) for a in answers)
    f1 += max(token_f1(pred, a) for a in answers)
  n = max(len(golds), 1)
  return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}


# --- HotpotQA (the official hotpot_evaluate_v1.py's definitions) ---

# Normalised answers that are labels rather than text: partial token overlap with them means nothing.
HOTPOT_SPECIAL_ANSWERS = ("yes", "no", "noanswer")


def hotpot_answer_f1(prediction: str, gold: str) -> tuple[float, float, float]:
  """(F1, precision, recall) of one answer, as the official script.

  Unlike SQuAD's F1, when either side normalises to yes/no/noanswer and the two differ, all three
  are 0: a prediction "yes no" (a span over the "yes no" prefix) against gold "yes" scores 0, not
  2/3. No token in common (including both sides empty) also gives 0.
  """
  pred, gold = normalize_answer(prediction), normalize_answer(gold)
  if pred != gold and (pred in HOTPOT_SPECIAL_ANSWERS or gold in HOTPOT_SPECIAL_ANSWERS):
    return 0.0, 0.0, 0.0
  pred_tokens, gold_tokens = pred.split(), gold.split()
  same = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
  if same == 0:
    return 0.0, 0.0, 0.0
  precision, recall = same / len(pred_tokens), same / len(gold_tokens)
  return 2 * precision * recall / (precision + recall), precision, recall


def hotpot_supporting_facts(prediction, gold) -> tuple[float, float, float, float]:
  """(EM, F1, precision, recall) of one example's supporting facts, as the official script.

  Facts are (title, sentence index) pairs compared as sets (duplicates count once). EM is 1 when
  the sets are equal (so also when both are empty); precision of an empty prediction is 0.
  """
  pred, gold = {tuple(f) for f in prediction}, {tuple(f) for f in gold}
  tp = len(pred & gold)
  fp, fn = len(pred - gold), len(gold - pred)
  precision = tp / (tp + fp) if tp + fp else 0.0
  recall = tp / (tp + fn) if tp + fn else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return float(fp + fn == 0), f1, precision, recall


def hotpot_scores(answers: dict[str, str], golds: dict[str, str], supporting: dict | None = None,
                  gold_supporting: dict | None = None) -> dict[str, float]:
  """HotpotQA metrics as fractions (as the official script prints them), averaged over all gold ids.

  answers/golds: {id: answer}. Returns 'em', 'f1', 'prec', 'recall'. With supporting-fact
  predictions ({id: [[title, sentence index], ...]}) and their golds, also 'sp_*' and 'joint_*':
  joint precision = answer precision x sp precision, joint recall likewise, joint F1 from those,
  joint EM = EM x sp EM. As in the official script, an id missing from a prediction dict scores 0
  on that part and 0 on the joint metrics.
  """
  with_sp = supporting is not None
  if with_sp and gold_supporting is None:
    raise ValueError("supporting-fact predictions need gold_supporting to be scored against")
  keys = ["em", "f1", "prec", "recall"]
  if with_sp:
    keys += [f"{part}_{name}" for part in ("sp", "joint") for name in ("em", "f1", "prec", "recall")]
  totals = dict.fromkeys(keys, 0.0)
  for qid, gold in golds.items():
    answer = sp = None
    if qid in answers:
      f1, prec, recall = hotpot_answer_f1(answers[qid], gold)
      answer = (exact_match(answers[qid], gold), f1, prec, recall)
      for name, value in zip(("em", "f1", "prec", "recall"), answer):
        totals[name] += value
    if with_sp and qid in supporting:
      sp = hotpot_supporting_facts(supporting[qid], gold_supporting[qid])
      for name, value in zip(("sp_em", "sp_f1", "sp_prec", "sp_recall"), sp):
        totals[name] += value
    if answer is not None and sp is not None:
      prec, recall = answer[2] * sp[2], answer[3] * sp[3]
      totals["joint_em"] += answer[0] * sp[0]
      totals["joint_f1"] += 2 * prec * recall / (prec + recall) if prec + recall else 0.0
      totals["joint_prec"] += prec
      totals["joint_recall"] += recall
  n = max(len(golds), 1)
  return {name: total / n for name, total in totals.items()}
