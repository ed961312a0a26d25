"""LLaVA-format data: JSON + image folder -> a tfds builder (array_record, TF-free) -> grain examples.

    builder = LlavaJson(json_path="data/llava.json", data_dir="tfds")   # image paths relative to the JSON
    sources = prepared(builder)                                          # {'train': ..., 'validation': ...}
    parse = make_parse(tokenizer, lvlm_config, ExampleSpec(template="llava_llama_2", stage=2))
    iterator = trainkit.make_train_iterator(sources["train"], parse=parse, ...)

A record is {"id", "image" (path, or a list of paths; optional), "conversations": [{"from", "value"}],
and for TGA "image_caption" / "retrieved_caption"}. Records are stored as they are plus a `problem`
text (empty when fine): a missing or undecodable image, an image path outside the image folder (after
symlinks: '../x', '/etc/x'), an 'image' that is no path, a caption that is no string, `<image>` without an
image or the reverse, an empty conversation or a malformed turn. The parse step raises trainkit.BadRecord
for them, so each run counts, logs (with the id) and skips them, and its summary.json reports the counts.
A null caption is no caption (never the text "None"). A file with no records, or none usable, fails the
build with an error naming it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import zlib

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from tga_jax.data.conversation import IMAGE, caption_messages, llava_record_to_messages, tokenize_conversation
from tga_jax.models.lvlm import LvlmConfig
from tga_jax.data.lvlm_batch import make_lvlm_batch
from trainkit.data import BadRecord, LocalBuilderMessages
from trainkit.paths import OutsideRoot, inside_root

FILE_FORMAT = "array_record"


ROLES = ("human", "gpt")
TEXT_FIELDS = ("image_caption", "retrieved_caption")


def _image_paths(record) -> list[str] | None:
  """The record's image paths ([] without an image), or None when 'image' is neither a path nor a list of them."""
  image = record.get("image")
  if image is None:
    return []
  paths = [image] if isinstance(image, str) else image
  if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
    return None
  return paths


def record_problem(record, image_dir: str) -> tuple[str, list[np.ndarray]]:
  """('' or the reason the record is unusable, decoded uint8 images).

  The reason starts with its kind ('missing image: ...'), which the run's skip counts group by. Image paths
  must stay inside `image_dir` after symlinks ('../x', '/etc/x' or a symlink out is 'image outside root').
  """
  if not isinstance(record, dict):
    return f"not an object: a record must be a JSON object, found {type(record).__name__}", []
  turns = record.get("conversations")
  if not isinstance(turns, list) or not turns or not all(isinstance(t, dict) and t.get("value") for t in turns):
    return "empty conversation: 'conversations' must be a non-empty list of {from, value}", []
  for i, turn in enumerate(turns):
    if turn.get("from") not in ROLES or not isinstance(turn.get("value"), str):
      return (f"bad turn: conversations[{i}] must have 'from' in {ROLES} and a string 'value', found "
              f"from={turn.get('from')!r}, value of type {type(turn.get('value')).__name__}"), []
  for key in TEXT_FIELDS:
    if record.get(key) is not None and not isinstance(record[key], str):
      return f"bad {key}: '{key}' must be a string (or absent), found {record[key]!r}"[:300], []
  paths = _image_paths(record)
  if paths is None:
    return f"bad image field: 'image' must be a path or a list of paths, found {record.get('image')!r}"[:300], []
  placeholders = sum(t["value"].count(IMAGE) for t in turns)
  if placeholders != len(paths):
    return f"image count: {placeholders} <image> placeholder(s) but {len(paths)} image(s)", []
  images = []
  for path in paths:
    try:
      full = inside_root(image_dir, path, "image")
    except OutsideRoot as e:
      return f"image outside root: {e}", []
    if not os.path.exists(full):
      return f"missing image: {path}", []
    try:
      with Image.open(full) as im:
        images.append(np.asarray(im.convert("RGB"), np.uint8))
    except Exception as e:  # PIL raises several types for corrupt files
      return f"undecodable image: {path} ({type(e).__name__})", []
  return "", images


class LlavaJson(LocalBuilderMessages, tfds.core.GeneratorBasedBuilder):
  """One LLaVA JSON file; `heldout_fraction` of the ids (by hash, stable) form a 'validation' split."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, json_path: str, image_dir: str | None = None, heldout_fraction: float = 0.0, **kwargs):
    self._json_path = json_path
    self._image_dir = image_dir or os.path.dirname(os.path.abspath(json_path))
    self._heldout = heldout_fraction
    stem = re.sub(r"[^a-z0-9_]", "_", os.path.splitext(os.path.basename(json_path))[0].lower())
    digest = hashlib.sha1(f"{os.path.abspath(json_path)}:{os.path.getmtime(json_path)}:{heldout_fraction}".encode())
    kwargs.setdefault("config", tfds.core.BuilderConfig(name=f"{stem}_{digest.hexdigest()[:8]}"))
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description="A LLaVA-format JSON dataset with its images (uint8, stored zlib-compressed).",
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(), "conversations": tfds.features.Text(),  # JSON of the turns
            "images": tfds.features.Sequence(tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8,
                                                                  encoding=tfds.features.Encoding.ZLIB)),
            "image_caption": tfds.features.Text(), "retrieved_caption": tfds.features.Text(),
            "problem": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    with open(self._json_path) as f:
      try:
        records = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f"{self._json_path}: not valid JSON ({e})") from e
    if not isinstance(records, list):
      raise ValueError(f"{self._json_path}: expected a JSON list of records, got {type(records).__name__}")
    if not records:
      raise ValueError(f"{self._json_path}: the list of records is empty; a dataset needs at least one record")
    heldout = [self._is_heldout(r, i) for i, r in enumerate(records)]
    splits = {"train": self._generate_examples([(i, r) for i, r in enumerate(records) if not heldout[i]])}
    if self._heldout > 0 and any(heldout):  # a tiny file may hash no id into the held-out fraction
      splits["validation"] = self._generate_examples([(i, r) for i, r in enumerate(records) if heldout[i]])
    return splits

  def _is_heldout(self, record, index) -> bool:
    key = str(record.get("id", index)) if isinstance(record, dict) else str(index)
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < self._heldout

  def _generate_examples(self, items):
    """Every record, each with its `problem` ('' when usable); a split with no usable record is an error
    naming the file (a run could never draw a batch from it)."""
    usable, kinds = 0, {}
    for index, record in items:
      problem, images = record_problem(record, self._image_dir)
      ok = isinstance(record, dict)
      rid = str(record.get("id", f"#{index}")) if ok else f"#{index}"
      if problem:
        kinds[problem.split(":")[0]] = kinds.get(problem.split(":")[0], 0) + 1
        logging.warning("%s: record %s will be skipped: %s", self._json_path, rid, problem)
      usable += not problem
      texts = {key: record.get(key) if ok and isinstance(record.get(key), str) else "" for key in TEXT_FIELDS}
      turns = record.get("conversations", []) if ok and not problem else []
      yield f"{index}", {"id": rid, "conversations": json.dumps(turns), "images": images, **texts,
                         "problem": problem}
    if items and not usable:
      raise ValueError(f"{self._json_path}: none of its {len(items)} record(s) is usable ({kinds}); the "
                       f"warnings above name each record and its problem")


def prepared(builder) -> dict:
  builder.download_and_prepare()
  return builder.as_data_source()


@dataclasses.dataclass(frozen=True)
class ExampleSpec:
  """How records become model inputs.

  stage 1: plain template, captions as targets, no retrieved text. stage 2: `template`, with
  "Retrieved Text: {r}. " before the image when `use_retrieved` (TGA trains and infers with it).
  retrieved_dropout: the fraction of image records trained without their retrieved text (picked by a hash
  of the record id, so the same records every epoch and on every host): the model must then read the
  image itself, and the guidance keeps only its image term for them.
  no_retrieved_pattern: a regular expression; image records whose first user turn matches it (re.search)
  train without their retrieved text, e.g. short naming questions, whose answer a retrieved caption
  would give away (the model then learns to name the object from the image, as it must without retrieval).
  caption_template: the text-only caption pass ("Describe this scene: {caption}") for C_j.
  """
  template: str = "plain"
  stage: int = 1
  max_length: int = 256
  caption_max_length: int = 64
  max_images: int = 1
  use_retrieved: bool = False
  retrieved_dropout: float = 0.0
  no_retrieved_pattern: str = ""
  caption_template: str = "vicuna_v1"
  system: str | None = None


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _dropped(record_id: str, fraction: float) -> bool:
  """Whether `record_id` falls in the `fraction` of records trained without retrieved text (crc32: a hash
  that is the same in every process, unlike Python's salted hash)."""
  return fraction > 0 and zlib.crc32(record_id.encode("utf-8")) / 2**32 < fraction


def _first_user_turn(conversations) -> str:
  first = conversations[0] if isinstance(conversations, list) and conversations else {}
  value = first.get("value") if isinstance(first, dict) and first.get("from") == "human" else None
  return value if isinstance(value, str) else ""


def make_parse(tokenizer, config: LvlmConfig, spec: ExampleSpec):
  """record (from LlavaJson's source) -> dict of fixed-shape numpy arrays; raises BadRecord."""
  if spec.caption_template == "plain":
    raise ValueError("caption_template='plain' drops the user's words, so the caption pass would be empty; "
                     "use the stage-2 template (e.g. 'vicuna_v1')")

  try:
    no_retrieved = re.compile(spec.no_retrieved_pattern) if spec.no_retrieved_pattern else None
  except re.error as e:
    raise ValueError(f"data.no_retrieved_pattern={spec.no_retrieved_pattern!r} is not a regular expression: {e}") from e

  def parse(record) -> dict:
    rid = _text(record["id"])
    problem = _text(record["problem"])
    if problem:
      raise BadRecord(f"{problem.split(':')[0]}: record {rid}: {problem}")
    images = list(record["images"])
    raw = {"id": rid, "conversations": json.loads(_text(record["conversations"]))}
    with_retrieved = (spec.use_retrieved and images and not _dropped(rid, spec.retrieved_dropout)
                      and not (no_retrieved and no_retrieved.search(_first_user_turn(raw["conversations"]))))
    retrieved = _text(record["retrieved_caption"]) if with_retrieved else None
    if with_retrieved and not retrieved:
      raise BadRecord(f"missing retrieved_caption: record {rid} has an image but no retrieved_caption; "
                      f"run python -m tga_jax.annotate first")
    template = "plain" if spec.stage == 1 else spec.template
    messages = llava_record_to_messages(raw, retrieved=retrieved, template=template)
    tokens = tokenize_conversation(messages, tokenizer, template, image_token_id=config.image_token_id,
                                   tokens_per_image=config.tokens_per_image, max_length=spec.max_length,
                                   system=spec.system)
    if tokens.num_images < len(images) and not tokens.truncated:
      raise BadRecord(f"image count: record {rid}: {len(images)} images, {tokens.num_images} placeholders")
    if not tokens.loss_mask.any():
      raise BadRecord(f"no target: record {rid}: truncation at max_length={spec.max_length} left no answer tokens")
    batch = make_lvlm_batch([(tokens, images[:tokens.num_images])], config, max_images=spec.max_images)
    caption = _text(record["image_caption"]) or ""
    cap = tokenize_conversation(caption_messages(caption or "."), tokenizer, spec.caption_template,
                                image_token_id=config.image_token_id, tokens_per_image=config.tokens_per_image,
                                max_length=spec.caption_max_length, system=spec.system)
    has_caption = bool(caption) and tokens.num_images > 0
    return {
        "input_ids": batch["input_ids"][0], "attention_mask": batch["attention_mask"][0],
        "loss_mask": batch["loss_mask"][0], "retrieved_mask": batch["segments"]["retrieved"][0],
        "pixel_values": batch["pixel_values"][0], "image_counts": batch["image_counts"][0],
        "caption_ids": cap.input_ids.astype(np.int32), "caption_attention_mask": cap.attention_mask.astype(np.int32),
        "caption_mask": cap.segment_masks(("caption",))["caption"] & has_caption,
    }

  return parse



SEQUENCE_KEYS = ("input_ids", "attention_mask", "loss_mask", "retrieved_mask")
CAPTION_KEYS = ("caption_ids", "caption_attention_mask", "caption_mask")


def bucket_trimmer(buckets: tuple[int, ...], caption_buckets: tuple[int, ...] = ()):
  """A batch transform: cut the right padding of a batch down to the smallest length bucket that
  holds its longest sequence (and likewise for the caption pass), so short batches do not pay for
  max_length. Each bucket is one compiled shape; every example keeps all its tokens.

  Multi-host: every host must pick the same bucket for a step, so use it with one process (or
  buckets equal to max_length) until the bucket is agreed across hosts.
  """
  def pick(lengths, choices, full):
    longest = int(lengths.max())
    return next((b for b in sorted(choices) if b >= longest), full)

  def trim(batch: dict) -> dict:
    out = dict(batch)
    if buckets:
      n = pick(batch["attention_mask"].sum(axis=1), buckets, batch["input_ids"].shape[1])
      out.update({k: batch[k][:, :n] for k in SEQUENCE_KEYS if k in batch})
    if caption_buckets:
      n = pick(batch["caption_attention_mask"].sum(axis=1), caption_buckets, batch["caption_ids"].shape[1])
      out.update({k: batch[k][:, :n] for k in CAPTION_KEYS if k in batch})
    return out

  return trim


def target_positions(buckets: tuple[int, ...]):
  """A batch transform for a loss over the target tokens only. Adds 'target_index' int32[B, K]: the
  positions whose next token is a target (loss_mask[t + 1]), in order, then position 0 as padding; and
  'target_valid' bool[B, K]: which entries are real. K is the smallest of `buckets` that holds the row with
  the most targets (the sequence length when none does); each K is one compiled shape. With them the
  language-model head and its softmax run on K positions per row instead of all T (`logits_at`).
  Apply it after `bucket_trimmer`. Multi-host: hosts must agree on K, as on the length bucket.
  """
  def add(batch: dict) -> dict:
    following = np.asarray(batch["loss_mask"][:, 1:], bool)  # position t predicts token t + 1
    length = following.shape[1]
    most = int(following.sum(axis=1).max())
    k = min(next((b for b in sorted(buckets) if b >= most), length), length)
    order = np.argsort(~following, axis=1, kind="stable")[:, :k]  # the targets first, in position order
    valid = np.take_along_axis(following, order, axis=1)
    return dict(batch, target_index=np.where(valid, order, 0).astype(np.int32), target_valid=valid)

  return add
