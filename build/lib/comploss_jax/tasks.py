"""The paper's tasks: what each reads, how it is scored, and its per-task hyperparameters (spec §4)."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ClassificationTask:
  """A sentence(-pair) classification or regression task read from a tfds builder.

  text_keys: one or two text features; num_labels = 1 means regression (STS-B).
  metrics: reported on dev (and test); `select` picks the best dev checkpoint.
  test_split: a held-out labelled split scored once with the selected params, or None. GLUE's test
  labels are hidden, so GLUE has none: its dev split, which also selects the checkpoint, is
  reported as dev, never as test.
  """
  name: str
  builder: str  # 'bbc' or 'glue'
  num_labels: int
  text_keys: tuple[str, ...]
  metrics: tuple[str, ...]
  select: str
  train_split: str = "train"
  dev_split: str = "validation"
  test_split: str | None = None


def _glue(name, labels, keys, metrics, dev="validation"):
  return ClassificationTask(name, "glue", labels, keys, metrics, metrics[0], dev_split=dev, test_split=None)


TASKS = {
    "bbc": ClassificationTask("bbc", "bbc", 5, ("text",), ("accuracy", "macro_f1"), "accuracy", "train", "dev", "test"),
    "cola": _glue("cola", 2, ("sentence",), ("mcc", "accuracy")),
    "sst2": _glue("sst2", 2, ("sentence",), ("accuracy",)),
    "mrpc": _glue("mrpc", 2, ("sentence1", "sentence2"), ("accuracy", "f1")),
    "stsb": _glue("stsb", 1, ("sentence1", "sentence2"), ("pearson", "spearman")),
    "qqp": _glue("qqp", 2, ("question1", "question2"), ("accuracy", "f1")),
    "mnli": _glue("mnli", 3, ("premise", "hypothesis"), ("accuracy",), dev="validation_matched"),
    "qnli": _glue("qnli", 2, ("question", "sentence"), ("accuracy",)),
    "rte": _glue("rte", 2, ("sentence1", "sentence2"), ("accuracy",)),
}

def get_task(name: str) -> ClassificationTask:
  if name not in TASKS:
    raise ValueError(f"task={name!r}: expected one of {sorted(TASKS)} (or 'squad', 'hotpot')")
  return TASKS[name]
