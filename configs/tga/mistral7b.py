"""The paper's setting: CLIP ViT-L/14-336 + Mistral-7B-Instruct-v0.2 (llava_llama_2 template), guided
layers 10-18, the reference scripts' learning rates, batch sizes and lengths (spec §6).

    python -m tga_jax.train --config=configs/tga/mistral7b.py:stage=1,mesh=tpu_pod \\
        --config.model.vision_path=clip-vit-large-patch14-336 --config.model.llm_path=Mistral-7B-Instruct-v0.2 \\
        --config.data.json=blip_laion_cc_sbu_558k.json --config.data.image_dir=llava_pretrain/images --workdir=gs://...
    python -m tga_jax.train --config=configs/tga/mistral7b.py:stage=2,mesh=tpu_pod --config.init_from=<stage 1> \\
        --config.data.json=llava_v1_5_mix665k_annotated.json --config.data.image_dir=... --workdir=...

Batch sizes are global: the reference's per-device 32 (stage 1) and 4 (stage 2) on 8 GPUs. bf16 matmuls,
full remat of the decoder layers. Arg string: stage, weight, seed, mesh ('tpu_pod' or 'gpu8').
"""
from configs.tga.common import base_config, parse

# One epoch of LCS-558K at 256 / of mix-665K at 32 per step.
STEPS = {1: 558_128 // 256, 2: 665_298 // 32}


def get_config(arg: str = ""):
  a = parse(arg, stage=1, weight=1.0, seed=0, mesh="tpu_pod")
  model = dict(kind="compose", tokenizer="", path="", vision_path="", llm_path="", projector="",
               projector_type="mlp2x_gelu", vision=dict(image_size=336), llm=dict(), dtype="bfloat16",
               remat_policy="nothing_saveable",
               # The shapes of the weights the paths above name, for `python -m trainkit.plan` (which
               # compiles the step ahead of time without them): tga_jax/weights/architectures.py.
               architecture=dict(vision="clip-vit-large-patch14-336", llm="mistral-7b-instruct-v0.2"))
  config = base_config(
      stage=a["stage"], seed=a["seed"], weight=a["weight"], layers=tuple(range(10, 19)), template="llava_llama_2",
      lr=1e-3 if a["stage"] == 1 else 2e-6, batch_size=256 if a["stage"] == 1 else 32,
      total_steps=STEPS[a["stage"]], mesh=a["mesh"], model=model,
      data=dict(max_length=2048 if a["stage"] == 1 else 1200, caption_max_length=128, buckets=(512, 1024, 1536, 2048),
                procedural=dict(n=0, seed=0, image_size=336, refusals=0)))
  config.data.heldout_fraction = 0.002
  config.checkpoint.every = 500
  config.eval_every = 500
  config.log_every = 10
  return config


def sweep(arg: str = ""):
  return [{"_variant": f"w{w}_l{band[0]}-{band[-1]}", "tga.weight": w, "tga.layers": band}
          for w in (0.0, 1.0) for band in (tuple(range(10, 19)), tuple(range(8, 17)))]
