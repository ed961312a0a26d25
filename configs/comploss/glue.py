"""GLUE with the paper's per-task settings (c, target, learning rate, epochs; max length 128).

    python -m comploss_jax.train --config=configs/comploss/glue.py:task=rte --workdir=runs/rte
    python -m comploss_jax.train --config=configs/comploss/glue.py:task=sst2,c=0 \\
        --config.data.glue_dir=path/to/glue_data --config.model=path/to/bert-base-cased --workdir=runs/sst2

Without data.glue_dir the public tfds `glue/<task>` builder downloads the data. Arg string: task,
c (-1 = the paper's c for the task; 0 = baseline), seed, seeds (for sweep()).
"""
from configs.comploss.common import base_config, parse

# The paper's settings (spec §4), kept here because configs import nothing from the packages.
PAPER = {"cola": (4, "ultra", 1e-5, 10), "sst2": (2, "ultra", 1e-5, 10), "mrpc": (1, "ultra", 1e-5, 10),
         "stsb": (4, "first", 1e-5, 10), "qqp": (2, "first", 1e-5, 10), "mnli": (3, "first", 2e-5, 3),
         "qnli": (4, "ultra", 2e-5, 3), "rte": (1, "first", 1e-5, 10)}


def get_config(arg: str = ""):
  a = parse(arg, task="rte", c=-1, seed=42, seeds=3)
  if a["task"] not in PAPER:
    raise ValueError(f"task={a['task']!r}: expected one of {sorted(PAPER)}")
  c, target, lr, epochs = PAPER[a["task"]]
  config = base_config(
      trainer="comploss_jax.train", task=a["task"], model="all-minilm-l6-v2", seed=a["seed"], epochs=epochs,
      n_drop=c if a["c"] < 0 else a["c"], target=target, learning_rate=lr, batch_size=32,
      data=dict(bbc_dir="", glue_dir="", max_length=128, train_size=0, subset_seed=-1))
  config.optimizer.weight_decay = 0.01
  return config


def sweep(arg: str = ""):
  a = parse(arg, task="rte", c=-1, seed=42, seeds=3)
  c = PAPER[a["task"]][0] if a["c"] < 0 else a["c"]
  return [{"_variant": "baseline" if n == 0 else f"cmploss_c{n}", "seed": seed, "cmp.n_drop": n}
          for n in (0, c) for seed in range(42, 42 + a["seeds"])]
