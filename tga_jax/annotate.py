"""The offline retrieval step (spec §4): annotate a LLaVA JSON with `retrieved_caption` per image.

    python -m tga_jax.annotate --data=llava.json --clip=path/to/clip --corpus=captions.jsonl \\
        --out=llava_annotated.json --index=runs/index [--k=1] [--image-dir=...]

Texts of the corpus (a .jsonl with 'caption' or 'text' per line, or a .txt with one per line) are
embedded with CLIP's text tower into a ScaNN index (built once and saved under --index); each record's
image is embedded with the vision tower and its nearest text becomes `retrieved_caption`, after the
leak guard against the record's own `image_caption`. Records without an image pass through; records
whose image is missing, unreadable, not a path, or outside --image-dir (after symlinks) are counted by
reason, logged with their id and left unannotated. A report (counts, recall@k of
the index against exact search on these queries, build time) is printed and written beside --out.
The same `Retriever` serves inference, where TGA must retrieve too.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np
from absl import logging
from PIL import Image

from tga_jax.weights.clip import load_clip
from tga_jax.data.image_processing import preprocess_images
from tga_jax.models.image_config import ImageProcessingConfig
from tga_jax.retrieval import RetrievalConfig, TextIndex, exact_search, leak_guard, recall_at_k
from trainkit.paths import OutsideRoot, inside_root


class Retriever:
  """CLIP dual encoder + a TextIndex: images -> nearest corpus texts (host side, batched, jitted)."""

  def __init__(self, clip_dir: str, batch_size: int = 64, tokenizer: str | None = None):
    from transformers import AutoTokenizer
    self.module, self.params = load_clip(clip_dir)
    self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or clip_dir)
    self.processing = ImageProcessingConfig.from_folder(clip_dir, aspect="crop",
                                                        image_size=self.module.vision_config.image_size)
    self.batch_size = batch_size
    self._image = jax.jit(lambda p, x: self.module.apply({"params": p}, x, method="encode_image")[0])
    self._text = jax.jit(lambda p, i, m: self.module.apply({"params": p}, i, m, method="encode_text")[0])
    self.index: TextIndex | None = None

  def embed_texts(self, texts: list[str]) -> np.ndarray:
    out = []
    length = self.module.text_config.max_position_embeddings
    for start in range(0, len(texts), self.batch_size):
      chunk = texts[start:start + self.batch_size]
      enc = self.tokenizer(chunk + [""] * (self.batch_size - len(chunk)), padding="max_length", truncation=True,
                           max_length=length, return_tensors="np")
      out.append(np.asarray(self._text(self.params, enc["input_ids"], enc["attention_mask"]))[: len(chunk)])
    return np.concatenate(out)

  def embed_images(self, images: list[np.ndarray]) -> np.ndarray:
    out = []
    for start in range(0, len(images), self.batch_size):
      chunk = images[start:start + self.batch_size]
      pixels = preprocess_images(chunk, self.processing)
      pad = self.batch_size - len(chunk)
      pixels = np.concatenate([pixels, np.zeros((pad,) + pixels.shape[1:], pixels.dtype)])
      out.append(np.asarray(self._image(self.params, pixels))[: len(chunk)])
    return np.concatenate(out)

  def build_index(self, texts: list[str], config: RetrievalConfig = RetrievalConfig()) -> TextIndex:
    self.index = TextIndex.build(self.embed_texts(texts), texts, config)
    return self.index

  def retrieve(self, images: list[np.ndarray], k: int = 1) -> list[list[str]]:
    if self.index is None:
      raise ValueError("no index: call build_index(texts) or set .index = TextIndex.load(dir)")
    return self.index.search_texts(self.embed_images(images), k)


def read_corpus(path: str) -> list[str]:
  with open(path) as f:
    if path.endswith(".jsonl"):
      texts = []
      for n, line in enumerate(f, 1):
        if line.strip():
          item = json.loads(line)
          if "caption" not in item and "text" not in item:
            raise ValueError(f"{path}:{n}: expected a 'caption' or 'text' field, got keys {sorted(item)}")
          texts.append(item.get("caption", item.get("text")))
      return texts
    return [line.strip() for line in f if line.strip()]


def annotate(records: list[dict], retriever: Retriever, image_dir: str, k: int = 1) -> dict:
  """Adds `retrieved_caption` in place; returns counts and the query embeddings' recall report.

  A record whose image is not a path (or a list of paths), lies outside `image_dir` (after symlinks), or
  cannot be read is counted under its reason in `unreadable_images`, logged with its id, and left unannotated.
  """
  todo, images, skipped = [], [], {}

  def skip(reason, index, record, detail):
    skipped[reason] = skipped.get(reason, 0) + 1
    logging.warning("record %s: %s; left unannotated", record.get("id", f"#{index}"), detail)

  for index, record in enumerate(records):
    if not isinstance(record, dict) or not record.get("image"):
      continue
    image = record["image"][0] if isinstance(record["image"], list) else record["image"]
    if not isinstance(image, str):
      skip("bad image field", index, record, f"'image' must be a path or a list of paths, found {record['image']!r}")
      continue
    try:
      path = inside_root(image_dir, image, "image")
    except OutsideRoot as e:
      skip("image outside root", index, record, str(e))
      continue
    try:
      with Image.open(path) as im:
        images.append(np.asarray(im.convert("RGB"), np.uint8))
      todo.append(record)
    except (OSError, ValueError) as e:
      skip(type(e).__name__, index, record, f"image {path} unreadable ({e})")
  queries = retriever.embed_images(images) if images else np.zeros((0, 1), np.float32)
  guarded = 0
  if todo:
    neighbours = retriever.index.search_texts(queries, k)
    for record, texts in zip(todo, neighbours):
      retrieved = texts[0]
      caption = record.get("image_caption")
      safe = leak_guard(retrieved, caption if isinstance(caption, str) else "")
      guarded += safe != retrieved
      record["retrieved_caption"] = safe
  return {"annotated": len(todo), "unreadable_images": skipped, "leak_guarded": guarded, "queries": queries}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", required=True, help="LLaVA-format JSON to annotate")
  parser.add_argument("--clip", required=True, help="HF CLIPModel folder (both towers)")
  parser.add_argument("--corpus", required=True, help=".jsonl ('caption'/'text') or .txt corpus of texts")
  parser.add_argument("--out", required=True, help="where to write the annotated JSON")
  parser.add_argument("--index", default="", help="index folder: loaded if it exists, else built and saved")
  parser.add_argument("--image-dir", default="", help="image root (default: the JSON's folder)")
  parser.add_argument("--tokenizer", default="", help="text tokenizer folder (default: the CLIP folder)")
  parser.add_argument("--k", type=int, default=1)
  parser.add_argument("--exact-below", type=int, default=RetrievalConfig.exact_below)
  args = parser.parse_args(argv)

  with open(args.data) as f:
    records = json.load(f)
  if not isinstance(records, list):
    raise SystemExit(f"--data {args.data}: expected a JSON list of LLaVA records, got {type(records).__name__}")
  retriever = Retriever(args.clip, tokenizer=args.tokenizer or None)
  texts = read_corpus(args.corpus)
  start = time.perf_counter()
  if args.index and os.path.exists(os.path.join(args.index, "index.json")):
    retriever.index = TextIndex.load(args.index)
    corpus_embeddings = None
  else:
    corpus_embeddings = retriever.embed_texts(texts)
    retriever.index = TextIndex.build(corpus_embeddings, texts, RetrievalConfig(exact_below=args.exact_below))
    if args.index:
      retriever.index.save(args.index)
  build_seconds = time.perf_counter() - start
  report = annotate(records, retriever, args.image_dir or os.path.dirname(os.path.abspath(args.data)), args.k)
  queries = report.pop("queries")
  if corpus_embeddings is not None and len(queries):
    k = min(10, len(texts))
    approx, _ = retriever.index.search(queries, k)
    report[f"recall@{k}_vs_exact"] = recall_at_k(approx, exact_search(corpus_embeddings, queries, k))
  report.update(corpus=len(texts), index_exact=retriever.index.exact, index_seconds=round(build_seconds, 2))
  with open(args.out, "w") as f:
    json.dump(records, f, indent=1)
  with open(os.path.splitext(args.out)[0] + ".report.json", "w") as f:
    json.dump(report, f, indent=2)
  print(json.dumps(report, indent=2))
  return report


if __name__ == "__main__":
  main()
