"""Text retrieval for TGA: a ScaNN index over caption embeddings, queried with image embeddings.

    index = TextIndex.build(text_embeddings, texts, RetrievalConfig())
    neighbours, scores = index.search(image_embeddings, k=1)
    index.save(dir); index = TextIndex.load(dir)

Embeddings are L2-normalised, so the dot product is the cosine of any dual encoder (CLIP's image and
text towers by default). Below `exact_below` texts the index is brute force; above it, ScaNN's tree
+ anisotropic hashing + exact reordering. ScaNN's numpy API needs no TensorFlow. Retrieval runs on
the host, outside jit: its neighbour texts enter the model through the data pipeline.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
import scann


@dataclasses.dataclass(frozen=True)
class RetrievalConfig:
  """ScaNN parameters. num_leaves = 0 picks ~sqrt(N); reorder re-scores that many candidates exactly."""
  num_leaves: int = 0
  leaves_to_search_fraction: float = 0.05
  dims_per_block: int = 2
  anisotropic_threshold: float = 0.2
  reorder: int = 100
  exact_below: int = 20_000
  training_sample_size: int = 100_000


def normalize(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class TextIndex:
  """Nearest texts by cosine. `texts[i]` is the text of row i of the indexed embeddings."""

  def __init__(self, searcher, texts: list[str], config: RetrievalConfig, exact: bool):
    self.searcher, self.texts, self.config, self.exact = searcher, texts, config, exact

  @classmethod
  def build(cls, embeddings: np.ndarray, texts: list[str], config: RetrievalConfig = RetrievalConfig(),
            max_k: int = 100) -> "TextIndex":
    """embeddings float[N, D] (one per text)."""
    embeddings = normalize(embeddings)
    if len(embeddings) != len(texts):
      raise ValueError(f"{len(embeddings)} embeddings for {len(texts)} texts: they must pair one to one")
    n = len(texts)
    builder = scann.scann_ops_pybind.builder(embeddings, max(1, min(max_k, n)), "dot_product")
    exact = n < config.exact_below
    if exact:
      searcher = builder.score_brute_force().build()
    else:
      leaves = config.num_leaves or int(math.sqrt(n))
      searcher = (builder.tree(num_leaves=leaves,
                               num_leaves_to_search=max(1, int(leaves * config.leaves_to_search_fraction)),
                               training_sample_size=min(n, config.training_sample_size))
                  .score_ah(config.dims_per_block, anisotropic_quantization_threshold=config.anisotropic_threshold)
                  .reorder(config.reorder).build())
    return cls(searcher, list(texts), config, exact)

  def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """queries float[Q, D] -> (indices int[Q, k], cosine scores float[Q, k]), best first."""
    idx, scores = self.searcher.search_batched(normalize(queries), final_num_neighbors=k)
    return np.asarray(idx, np.int64), np.asarray(scores, np.float32)

  def search_texts(self, queries: np.ndarray, k: int = 1) -> list[list[str]]:
    idx, _ = self.search(queries, k)
    return [[self.texts[i] for i in row] for row in idx]

  def save(self, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    self.searcher.serialize(directory)
    with open(os.path.join(directory, "texts.jsonl"), "w") as f:
      for text in self.texts:
        f.write(json.dumps(text) + "\n")
    with open(os.path.join(directory, "index.json"), "w") as f:
      json.dump({"exact": self.exact, "size": len(self.texts), "config": dataclasses.asdict(self.config)}, f)

  @classmethod
  def load(cls, directory: str) -> "TextIndex":
    meta_path = os.path.join(directory, "index.json")
    if not os.path.exists(meta_path):
      raise FileNotFoundError(f"{directory}: no index.json; build an index with TextIndex.build(...).save(dir)")
    with open(meta_path) as f:
      meta = json.load(f)
    with open(os.path.join(directory, "texts.jsonl")) as f:
      texts = [json.loads(line) for line in f]
    if len(texts) != meta["size"]:
      raise ValueError(f"{directory}/texts.jsonl has {len(texts)} texts, index.json says {meta['size']}")
    searcher = scann.scann_ops_pybind.load_searcher(directory)
    return cls(searcher, texts, RetrievalConfig(**meta["config"]), meta["exact"])


def exact_search(corpus: np.ndarray, queries: np.ndarray, k: int, chunk: int = 128) -> np.ndarray:
  """Brute-force top-k indices by cosine (the ground truth recall is measured against). Queries go
  in chunks so the score matrix stays small (chunk x N floats)."""
  corpus, queries = normalize(corpus), normalize(queries)
  out = []
  for start in range(0, len(queries), chunk):
    scores = queries[start:start + chunk] @ corpus.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
    out.append(np.take_along_axis(top, order, axis=1))
  return np.concatenate(out)


def recall_at_k(approximate: np.ndarray, exact: np.ndarray) -> float:
  """Share of the exact top-k found in the approximate top-k (int[Q, k] each)."""
  k = exact.shape[1]
  hits = sum(len(set(a[:k]) & set(e)) for a, e in zip(approximate, exact))
  return hits / exact.size


def leak_guard(retrieved: str, caption: str) -> str:
  """If retrieval returned the image's own caption, keep only its first half (by words) so the
  model cannot copy the answer it is trained to produce (spec §4)."""
  if retrieved.strip().lower() != caption.strip().lower():
    return retrieved
  words = retrieved.split()
  return " ".join(words[: max(1, len(words) // 2)])
