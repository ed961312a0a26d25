"""Demo run of the trainkit runtime: a residual MLP classifying scikit-learn's 8x8 digits.

    python launch/demo.py --config=configs/demo/digits.py --workdir=runs/demo
    python launch/demo.py --config=configs/demo/digits.py:fsdp=1,tensor=1 --config.total_steps=500

The arg string (after ':') sets mesh sizes: `data`, `fsdp`, `tensor` (e.g. ':data=2,fsdp=2,tensor=2').
"""
import ml_collections


def get_config(arg: str = ""):
  mesh = {"data": -1, "fsdp": 2, "tensor": 2}
  for item in filter(None, arg.split(",")):
    key, value = item.split("=")
    if key not in mesh:
      raise ValueError(f"config arg {key!r}: expected one of {sorted(mesh)}")
    mesh[key] = int(value)

  config = ml_collections.ConfigDict()
  config.seed = 0
  config.mesh = mesh
  config.rules = (
      ("batch", ("data", "fsdp")),
      ("embed", "fsdp"),
      ("mlp", "tensor"),
      ("classes", None),
  )
  config.model = dict(width=128, mlp_width=512, depth=2, dropout=0.1, num_classes=10)
  config.data = dict(test_size=297, split_seed=0)
  config.batch_size = 64
  config.total_steps = 200
  config.log_every = 10
  config.peak_flops_per_device = 0.0  # MFU's peak; 0: trainkit/plan.py's table by device kind
  config.eval_every = 50
  config.optimizer = dict(
      name="adamw", learning_rate=3e-3, weight_decay=1e-4, b1=0.9, b2=0.999, eps=1e-8,
      schedule="cosine", warmup_steps=20, final_lr_fraction=0.0, clip_norm=1.0,
      trainable=(".*",), grad_accum_steps=1)
  config.checkpoint = dict(every=50, keep=3, use_async=True)
  return config


def sweep():
  """Grid for launch/sweep.py: one run per learning rate."""
  return [{"optimizer.learning_rate": lr} for lr in (1e-3, 3e-3, 1e-2)]
