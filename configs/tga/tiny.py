"""Tiny TGA run: random tiny CLIP + projector + LLaMA (SmolLM2's tokenizer) on procedural data.

    python -m tga_jax.train --config=configs/tga/tiny.py:stage=1 --workdir=runs/tiny/s1
    python -m tga_jax.train --config=configs/tga/tiny.py:stage=2,weight=1.0 --config.init_from=runs/tiny/s1 \\
        --workdir=runs/tiny/s2

Both stages take a few minutes on a 2-core machine. Arg string: stage, weight (lambda; 0 = plain
LLaVA baseline), seed, steps.
"""
from configs.tga.common import base_config, parse


def get_config(arg: str = ""):
  a = parse(arg, stage=1, weight=1.0, seed=0, steps=40)
  model = dict(kind="random", tokenizer="smollm2-135m-instruct", path="", vision_path="", llm_path="", projector="",
               projector_type="mlp2x_gelu",
               vision=dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, image_size=32,
                           patch_size=8),
               llm=dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_layers=4, num_heads=4,
                        num_kv_heads=2, head_dim=16, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                        remat_policy="none"))
  return base_config(
      stage=a["stage"], seed=a["seed"], weight=a["weight"], layers=(1, 2, 3), template="vicuna_v1",
      lr=1e-3 if a["stage"] == 1 else 2e-4, batch_size=8, total_steps=a["steps"], mesh="cpu", model=model,
      data=dict(max_length=96, caption_max_length=48, buckets=(64, 96), caption_buckets=(32, 48),
                procedural=dict(n=96, seed=a["seed"], image_size=32, refusals=8)))


def sweep(arg: str = ""):
  """lambda x the guided layer band (stage 2)."""
  return [{"_variant": f"w{w}_l{band[0]}-{band[-1]}", "tga.weight": w, "tga.layers": band}
          for w in (0.0, 0.5, 1.0) for band in ((1, 2), (1, 2, 3))]
