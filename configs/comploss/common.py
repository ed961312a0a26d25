"""Fields shared by the comparative-loss configs (imported by path-loaded config files)."""
import ml_collections
from ml_collections import config_dict

from configs.common import parse  # noqa: F401  (re-exported for the config files)


def base_config(*, trainer, task, model, seed, epochs, n_drop, n_crop=0, target="ultra", learning_rate,
                batch_size, data):
  config = ml_collections.ConfigDict()
  config.trainer = trainer
  config.task = task
  config.model = model
  config.seed = seed
  config.mesh = {"data": -1, "fsdp": 1, "tensor": 1}
  config.rules = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"),
                  ("vocab", "tensor"))
  config.data = dict(tfds_dir="", **data)
  # Regulariser mode (mode="regulariser"): primary + weight * ranking; skip_above leaves the ranking
  # term out while the batch-mean primary loss is above it (the reference's schedule uses 1.1).
  # A float placeholder, so that the locked config takes --config.cmp.skip_above=1.1.
  config.cmp = dict(n_drop=n_drop, n_crop=n_crop, target=target, temperature=1.0, ranking="hinge", mode="cmp",
                    primary="max", weight=1.0, skip_above=config_dict.placeholder(float), remat=False,
                    keep_compute_fixed=False)
  config.batch_size = batch_size
  config.eval_batch_size = 64
  config.epochs = epochs
  config.total_steps = -1  # -1: epochs x steps per epoch
  config.log_every = 5
  config.peak_flops_per_device = 0.0  # MFU's peak; 0: trainkit/plan.py's table by device kind
  config.eval_every = -1  # -1: once per epoch
  config.progress_bar = True
  config.optimizer = dict(name="adamw", learning_rate=learning_rate, weight_decay=0.01, b1=0.9, b2=0.999,
                          eps=1e-8, schedule="linear", warmup_fraction=0.06, final_lr_fraction=0.0, clip_norm=1.0,
                          trainable=(".*",), grad_accum_steps=1)
  config.checkpoint = dict(every=1000, keep=1, use_async=True)
  return config
