"""Tiny comparative-loss run: BBC News, 32 training articles, MiniLM-L6 read to 32 tokens, c=1.

    python -m comploss_jax.train --config=configs/comploss/tiny.py --workdir=runs/comploss_tiny

Seconds on a 2-core machine (4 steps of 8 articles); used by the multi-host test and the notebook.
Arg string: c (dropout submodels; 0 = baseline), seed, train_size, epochs.
"""
from configs.comploss.common import base_config, parse


def get_config(arg: str = ""):
  a = parse(arg, c=1, seed=0, train_size=32, epochs=1)
  config = base_config(
      trainer="comploss_jax.train", task="bbc", model="all-minilm-l6-v2", seed=a["seed"], epochs=a["epochs"],
      n_drop=a["c"], learning_rate=2e-4, batch_size=8,
      data=dict(bbc_dir="", glue_dir="", max_length=32, train_size=a["train_size"], subset_seed=-1))
  config.log_every = 1
  config.eval_batch_size = 64
  return config


def sweep(arg: str = ""):
  """Baseline vs CmpLoss c=1, two seeds."""
  return [{"_variant": "baseline" if c == 0 else f"cmploss_c{c}", "seed": seed, "cmp.n_drop": c}
          for c in (0, 1) for seed in (0, 1)]
