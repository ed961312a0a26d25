"""Benchmark (not a test): ScaNN vs exact search over >= 1M 384-d vectors.

    python bench/retrieval.py [--n 1000000 --dim 384 --queries 2000]

Vectors: a clustered synthetic corpus (2,000 centres + Gaussian noise, L2-normalised), the shape of
sentence embeddings (no real 1M-caption corpus ships offline); the queries are perturbed corpus points. Prints the index build time, then queries/s
and recall@10 for exact brute force (numpy matmul, both cores) and for ScaNN at several search
widths (leaves searched, reorder depth), with the speed-up over exact.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tga_jax.retrieval import RetrievalConfig, TextIndex, exact_search, normalize, recall_at_k  # noqa: E402


def corpus(n: int, dim: int, noise: float, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(2000, dim)).astype(np.float32)
  out = np.empty((n, dim), np.float32)
  for start in range(0, n, 100_000):
    m = min(100_000, n - start)
    out[start:start + m] = centres[rng.integers(0, 2000, m)] + noise * rng.normal(size=(m, dim)).astype(np.float32)
  return normalize(out)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--n", type=int, default=1_000_000)
  parser.add_argument("--dim", type=int, default=384)
  parser.add_argument("--queries", type=int, default=2000)
  parser.add_argument("--leaves", type=int, default=250,
                      help="tree leaves (0: sqrt(n)); fewer, larger leaves gave the best recall per query here")
  parser.add_argument("--noise", type=float, default=0.35,
                      help="spread of each cluster relative to the centres (0.6: a much harder, flatter corpus)")
  args = parser.parse_args()
  x = corpus(args.n, args.dim, args.noise)
  rng = np.random.default_rng(1)
  q = normalize(x[rng.integers(0, args.n, args.queries)] + 0.1 * rng.normal(size=(args.queries, args.dim)))

  start = time.perf_counter()
  truth = exact_search(x, q, 10)
  exact_seconds = time.perf_counter() - start
  exact_qps = args.queries / exact_seconds
  print(f"corpus {args.n:,} x {args.dim} float32 (cluster noise {args.noise}); {args.queries} queries")
  print(f"exact (numpy matmul): {exact_qps:,.0f} queries/s (recall@10 = 1.000)")

  start = time.perf_counter()
  index = TextIndex.build(x, [""] * args.n, RetrievalConfig(num_leaves=args.leaves, exact_below=0, leaves_to_search_fraction=0.02,
                                                             reorder=200), max_k=10)
  print(f"ScaNN build (tree {args.leaves or int(np.sqrt(args.n))} leaves + AH + reorder): "
        f"{time.perf_counter() - start:.1f} s")
  print(f"{'leaves searched':>16} {'reorder':>8} {'queries/s':>10} {'recall@10':>10} {'x exact':>8}")
  for leaves, reorder in ((5, 200), (10, 400), (20, 1000), (40, 1000), (80, 1000), (160, 2000)):
    start = time.perf_counter()
    idx, _ = index.searcher.search_batched(q, leaves_to_search=leaves, pre_reorder_num_neighbors=reorder,
                                           final_num_neighbors=10)
    seconds = time.perf_counter() - start
    qps = args.queries / seconds
    print(f"{leaves:>16} {reorder:>8} {qps:>10,.0f} {recall_at_k(np.asarray(idx), truth):>10.3f} "
          f"{qps / exact_qps:>8.1f}")


if __name__ == "__main__":
  main()
