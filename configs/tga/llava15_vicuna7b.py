"""LLaVA-1.5 setting: CLIP ViT-L/14-336 + Vicuna-7B-v1.5 (vicuna_v1 template) on LLaVA data, with TGA.

    python -m tga_jax.train --config=configs/tga/llava15_vicuna7b.py:stage=2,mesh=gpu8 \\
        --config.model.vision_path=clip-vit-large-patch14-336 --config.model.llm_path=vicuna-7b-v1.5 \\
        --config.model.tokenizer=vicuna-7b-v1.5 --config.init_from=<stage-1 workdir> \\
        --config.data.json=llava_v1_5_mix665k_annotated.json --config.data.image_dir=... --workdir=...

LLaVA-1.5's own learning rates (1e-3 stage 1, 2e-5 stage 2). Arg string: stage, weight, seed, mesh.
"""
from configs.tga.common import base_config, parse

STEPS = {1: 558_128 // 256, 2: 665_298 // 128}


def get_config(arg: str = ""):
  a = parse(arg, stage=1, weight=1.0, seed=0, mesh="gpu8")
  model = dict(kind="compose", tokenizer="", path="", vision_path="", llm_path="", projector="",
               projector_type="mlp2x_gelu", vision=dict(image_size=336), llm=dict(), dtype="bfloat16",
               remat_policy="nothing_saveable",
               # The shapes of the weights the paths above name, for `python -m trainkit.plan` (which
               # compiles the step ahead of time without them): tga_jax/weights/architectures.py.
               architecture=dict(vision="clip-vit-large-patch14-336", llm="vicuna-7b-v1.5"))
  config = base_config(
      stage=a["stage"], seed=a["seed"], weight=a["weight"], layers=tuple(range(10, 19)), template="vicuna_v1",
      lr=1e-3 if a["stage"] == 1 else 2e-5, batch_size=256 if a["stage"] == 1 else 128,
      total_steps=STEPS[a["stage"]], mesh=a["mesh"], model=model,
      data=dict(max_length=2048, caption_max_length=128, buckets=(512, 1024, 1536, 2048),
                procedural=dict(n=0, seed=0, image_size=336, refusals=0)))
  config.data.heldout_fraction = 0.002
  config.checkpoint.every = 500
  config.eval_every = 500
  return config


def sweep(arg: str = ""):
  return [{"_variant": f"w{w}", "tga.weight": w} for w in (0.0, 0.5, 1.0)]
