"""ScaNN text index: exact and approximate paths, save/load, recall against exact search, leak guard."""
import numpy as np
import pytest

from tga_jax.retrieval import RetrievalConfig, TextIndex, exact_search, leak_guard, recall_at_k


def clustered(n=30_000, d=32, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(300, d))
  x = centres[rng.integers(0, 300, n)] + 0.3 * rng.normal(size=(n, d))
  return x.astype(np.float32)


def test_exact_index_finds_each_text_and_round_trips(tmp_path):
  x = clustered(500)
  texts = [f"caption {i}" for i in range(500)]
  index = TextIndex.build(x, texts)
  assert index.exact
  idx, scores = index.search(x[:20], k=3)
  assert np.array_equal(idx[:, 0], np.arange(20)) and np.allclose(scores[:, 0], 1.0, atol=1e-5)
  index.save(str(tmp_path))
  loaded = TextIndex.load(str(tmp_path))
  assert loaded.search_texts(x[:2], k=1) == [["caption 0"], ["caption 1"]]


def test_scann_recall_against_exact_search():
  x = clustered()
  queries = x[:200] + 0.05 * np.random.default_rng(1).normal(size=(200, 32)).astype(np.float32)
  index = TextIndex.build(x, [str(i) for i in range(len(x))], RetrievalConfig(exact_below=10_000))
  assert not index.exact
  approx, _ = index.search(queries, k=10)
  assert recall_at_k(approx, exact_search(x, queries, k=10)) >= 0.9


def test_bad_inputs_and_leak_guard(tmp_path):
  with pytest.raises(ValueError, match="3 embeddings for 2 texts"):
    TextIndex.build(np.ones((3, 4)), ["a", "b"])
  with pytest.raises(FileNotFoundError, match="no index.json"):
    TextIndex.load(str(tmp_path))
  assert leak_guard("A red gun on a table", "a red gun on a table ") == "A red gun"
  assert leak_guard("A knife", "A red gun on a table") == "A knife"
