"""BBC News topic classification (5 classes) with MiniLM-L6: baseline vs comparative loss.

    python -m comploss_jax.train --config=configs/comploss/bbc.py:train_size=128,c=2 --workdir=runs/bbc
    python launch/sweep.py --config=configs/comploss/bbc.py:train_size=128 --workdir=runs/bbc_sweep

Arg string: train_size (training examples, stratified; 0 = all 1,558), c (dropout submodels;
0 = baseline), seed, epochs.
"""
import ml_collections


def parse(arg: str, **defaults):
  values = dict(defaults)
  for item in filter(None, arg.split(",")):
    key, value = item.split("=")
    if key not in values:
      raise ValueError(f"config arg {key!r}: expected one of {sorted(values)}")
    values[key] = type(values[key])(value)
  return values


def get_config(arg: str = ""):
  a = parse(arg, train_size=128, c=0, seed=0, epochs=8)
  config = ml_collections.ConfigDict()
  config.task = "bbc"
  config.model = "all-minilm-l6-v2"
  config.seed = a["seed"]
  config.mesh = {"data": -1, "fsdp": 1, "tensor": 1}
  config.rules = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"),
                  ("vocab", "tensor"))
  config.data = dict(tfds_dir="", bbc_dir="", glue_dir="", max_length=64, train_size=a["train_size"],
                     subset_seed=0)
  config.cmp = dict(n_drop=a["c"], target="ultra", temperature=1.0, ranking="hinge", mode="cmp", primary="max",
                    weight=1.0, remat=False, keep_compute_fixed=False)
  config.batch_size = 16
  config.eval_batch_size = 64
  config.epochs = a["epochs"]
  config.total_steps = -1  # -1: epochs x steps per epoch
  config.log_every = 5
  config.eval_every = -1  # -1: once per epoch
  config.progress_bar = True
  config.optimizer = dict(name="adamw", learning_rate=1e-4, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8,
                          schedule="linear", warmup_fraction=0.06, final_lr_fraction=0.0, clip_norm=1.0,
                          trainable=(".*",), grad_accum_steps=1)
  config.checkpoint = dict(every=1000, keep=1, use_async=True)
  return config


def sweep():
  """Seeds x {baseline, CmpLoss c=2}: the grid launch/sweep.py expands."""
  return [{"seed": seed, "cmp.n_drop": c} for c in (0, 2) for seed in range(3)]
