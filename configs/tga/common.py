"""Fields shared by the TGA configs."""
import ml_collections

from configs.common import parse  # noqa: F401  (re-exported for the config files)

# Rules: batch over data x fsdp; weights split over fsdp on the model dimension and over tensor on
# heads / MLP width / vocabulary; the scanned 'layers' axis is never split.
RULES = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"),
         ("kv_heads", "tensor"), ("vocab", "tensor"), ("layers", None), ("head_dim", None))
# Mesh sizes for the targets named in the README: a TPU v4-32 / v5e-32 slice (fsdp inside a host's
# chips, data across hosts) and one 8-GPU node (fsdp over NVLink).
MESHES = {"cpu": {"data": -1, "fsdp": 1, "tensor": 1}, "tpu_pod": {"data": -1, "fsdp": 8, "tensor": 1},
          "gpu8": {"data": 1, "fsdp": 8, "tensor": 1}}


# LoRA targets of the LVLM's LLaMA: q/k/v/gate/up/down kernels are [D, ...out] (1 input axis); o is
# [heads, head_dim, D] (2). Layers are stacked under nn.scan: one factor pair per layer.
LORA_TARGETS = ("llm/layers/attn/(q|k|v|o)/kernel", "llm/layers/mlp/(gate|up|down)/kernel")
LORA_INPUT_AXES = (("llm/layers/attn/o/kernel", 2), (".*", 1))


def base_config(*, stage, seed, weight, layers, template, lr, batch_size, total_steps, mesh, model, data):
  config = ml_collections.ConfigDict()
  config.trainer = "tga_jax.train"
  config.stage = stage
  config.seed = seed
  config.mesh = MESHES[mesh]
  config.rules = RULES
  config.model = model
  # buckets: each batch is cut to the smallest of these lengths that holds its longest sequence
  # (one compiled shape per bucket); () pads every batch to max_length.
  data.setdefault("buckets", ())
  data.setdefault("caption_buckets", ())
  # target_buckets: the loss's logits at the target positions only, padded to the smallest of these counts
  # that holds a batch's longest answer (one compiled shape each); () computes them at every position.
  data.setdefault("target_buckets", ())
  config.data = dict(json="", image_dir="", tfds_dir="", heldout_fraction=0.1, template=template,
                     caption_template=template if template != "plain" else "vicuna_v1", use_retrieved=True,
                     retrieved_dropout=0.0, no_retrieved_pattern="", **data)
  config.tga = dict(weight=weight if stage == 2 else 0.0, schedule="constant", form="paper", layers=tuple(layers),
                    lm_weight=1.0)
  config.init_from = ""
  config.batch_size = batch_size
  config.total_steps = total_steps
  config.log_every = 5
  config.peak_flops_per_device = 0.0  # MFU's peak; 0: trainkit/plan.py's table by device kind
  config.eval_every = max(total_steps // 4, 1)
  config.eval_batches = 4
  config.progress_bar = True
  config.optimizer = dict(name="adamw", learning_rate=lr, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8,
                          schedule="cosine", warmup_fraction=0.03, final_lr_fraction=0.0, schedule_steps=0,
                          decay_fraction=0.2,
                          clip_norm=1.0, trainable=(".*",), lr_groups=(), grad_accum_steps=1)
  config.checkpoint = dict(every=max(total_steps // 2, 1), keep=2, use_async=True)
  # LoRA on the LLM (trainkit/lora.py): rank 0 = off. With rank > 0 the LLM's own weights stay frozen,
  # its attention and MLP projections train through rank-`rank` factors, merged into params on export.
  config.lora = dict(rank=0, alpha=0.0, targets=LORA_TARGETS, input_axes=LORA_INPUT_AXES, stack_axes=("layers",))
  return config
