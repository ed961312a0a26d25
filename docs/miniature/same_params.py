"""Whether two make reproduce workdirs trained bitwise the same params (same_params.txt holds its output for
the e3c09f5 run's workdir against 3fc9ea2's).

    python docs/miniature/same_params.py <workdir A> <workdir B> stage1 seed0/plain seed0/tga
"""
import sys

import jax
import numpy as np

from tga_jax.train import load_params

a_dir, b_dir, runs = sys.argv[1], sys.argv[2], sys.argv[3:]
for run in runs:
  a = jax.tree.leaves(load_params(f"{a_dir}/align/{run}"))
  b = jax.tree.leaves(load_params(f"{b_dir}/align/{run}"))
  same = len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
  diff = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))
  print(run, "bitwise equal" if same else "DIFFER", "max abs diff", diff, flush=True)
