"""The miniature safety-transfer alignment (issue 10): the pretrained small vision tower + the
safety-tuned SmolLM2-135M-Instruct, composed with a fresh projector, trained on procedural concepts.
`python -m tga_jax.miniature.reproduce` writes the parts and the data under --workdir and runs this
config for every stage, seed and variant; by hand:

    python -m tga_jax.train --config=configs/tga/miniature.py:stage=1,root=runs/miniature \\
        --workdir=runs/miniature/align/stage1
    python -m tga_jax.train --config=configs/tga/miniature.py:stage=2,weight=1.0,root=runs/miniature \\
        --config.init_from=runs/miniature/align/stage1 --workdir=runs/miniature/align/seed0/tga

Arg string: stage, weight (lambda; 0 = plain LLaVA-style), retrieved (1: "Retrieved Text: r." in the
prompt), form ('paper' or 'reference'), band ('first-last' guided layers; hidden-state indices, 0 =
embeddings), seed, steps, batch, lr (0: 1e-2 in both stages), root (the reproduction's
workdir), mesh ('cpu', 'tpu_pod', 'gpu8'), schedule and schedule_steps (stage 1's learning-rate schedule
and its length when the run stops before it ends; 0 = steps), decay (the decaying fraction of a 'wsd' schedule).
Both stages train the projector only (the LLM and the tower stay frozen) in the plain/tga variants: the
question is where the images land in the frozen LLM's hidden space, and the LLM keeps exactly the text
safety it was given. The *_lora variants also train the LLM in stage 2 (LoRA, as the paper's stage 2
trains the LLM); their text DSR through the LVLM says what that costs the text safety.
On an accelerator raise steps/batch and the data sizes in tga_jax.miniature.reproduce (--scale).
"""
import os
import re

from configs.tga.common import base_config, parse
from tga_jax.miniature.recipe import NAMING_QUESTIONS


STAGE2_LR = 1e-2  # the projector's stage-2 rate (see get_config)
LORA_LR = 2e-5    # the LLM's LoRA factors in the *_lora variants (see VARIANTS)


def get_config(arg: str = ""):
  a = parse(arg, stage=1, weight=0.0, retrieved=0, form="paper", band="8-16", seed=0, steps=80, batch=8,
            lr=0.0, root="runs/miniature", mesh="cpu", schedule="wsd", schedule_steps=0,
            decay=0.25)
  # Stage 1 moves a fresh projector far in few steps: at 1e-3 its caption loss stays above 5 after 120
  # steps, at 1e-2 it reaches ~2. Stage 2 teaches the chat format to name what the image shows: at 3e-4 plain
  # named 37% of held-out benign renders, at 1e-3 72-75%, at 3e-3 83% (seed 0; docs/miniature/levers); from
  # the warmup-stable-decay stage 1, plain named 56.7% at 1e-3, 73.3% at 3e-3, 81.7% at 1e-2 (stage2_lr_lambda.json).
  lr = a["lr"] or (1e-2 if a["stage"] == 1 else STAGE2_LR)
  first, _, last = a["band"].partition("-")
  root = a["root"]
  model = dict(kind="compose", tokenizer=os.path.join(root, "safe_llm"), llm_path=os.path.join(root, "safe_llm"),
               vision_path=os.path.join(root, "vision"), path="", projector="", projector_type="mlp2x_gelu",
               # The tower's last layer with its CLS token (the contrastively trained summary; the
               # penultimate patch features LLaVA reads carry the concept only weakly in so small a
               # tower), patches pooled 2x2: 1 + 16 image tokens.
               feature_layer=-1, feature_strategy="full", image_pool=2, vision=dict(image_size=64), llm=dict())
  config = base_config(
      stage=a["stage"], seed=a["seed"], weight=a["weight"], layers=tuple(range(int(first), int(last or first) + 1)),
      template="chat_template", lr=lr, batch_size=a["batch"], total_steps=a["steps"], mesh=a["mesh"],
      # Stage-1 records (17 image tokens + a caption of 6-19 tokens) are 24-38 tokens long: without the short
      # buckets every stage-1 batch paid for 64. Stage-2 chat records are 60-112.
      # The LM head runs on the target positions only (a stage-1 caption is <= 20 of them, a stage-2 answer
      # <= 40 of 60-112): 1.21x per step at [8, 80] (bench/results/target_logits.txt).
      model=model, data=dict(max_length=112, caption_max_length=32, buckets=(32, 40, 48, 64, 80, 96, 112),
                             caption_buckets=(16, 32), target_buckets=(16, 24, 32, 48, 64)))
  config.data.json = os.path.join(root, "data", f"stage{a['stage']}.json")
  config.tga.form = a["form"]
  config.data.use_retrieved = bool(a["retrieved"])
  config.data.heldout_fraction = 0.05
  config.trainable = ("projector/.*",)
  config.optimizer.weight_decay = 0.0
  config.eval_every = a["steps"]
  config.eval_batches = 2
  config.checkpoint.every = a["steps"]
  if a["stage"] == 1:
    # Warmup-stable-decay: the peak rate, then a linear decay over the last quarter. A cosine decay over 240
    # steps left the projector unfitted (held-out caption loss 1.70 against 0.64, gate 28% against 77% at a
    # constant rate); the constant rate's gate wandered between 75% and 80% from 240 to 480 steps; the
    # decay took it from 71.7% (step 300) to 81.7% (step 420) in one run (docs/miniature/levers/stage1.json).
    # `schedule_steps` (the last stage-1 step) keeps a decaying schedule exact when the run pauses at gates.
    config.optimizer.schedule = a["schedule"]
    config.optimizer.warmup_steps = 10
    config.optimizer.schedule_steps = a["schedule_steps"]
    config.optimizer.decay_fraction = a["decay"]
  return config


def sweep(arg: str = ""):
  """The stage-2 variants of the reproduction: lambda = 0, TGA, its ablations and levers, both with LoRA."""
  # tga_alg1_band's layers come from the reproduction's band.json, which a sweep does not have.
  return [{"_variant": name, **fields} for name, fields in VARIANTS.items() if "_band" not in fields]


# LoRA's factors train at LORA_LR (an lr group scales the projector's stage-2 rate).
LORA = {"lora.rank": 8, "lora.alpha": 16.0, "optimizer.lr_groups": (("lora/.*", LORA_LR / STAGE2_LR),)}

# Stage-2 instructions whose first turn is a short naming question (NAMING_QUESTIONS).
NAMING = "|".join(re.escape(q) for q in NAMING_QUESTIONS)

# TGA as the reproduction runs it: lambda = 0.25 and the retrieved text in the prompt, except that every naming
# question ("What object is shown here?" -> "It is a kite.") and half of the other image records (the same
# half every epoch) train without it. With the caption in every prompt (the paper's literal recipe,
# `tga_rt_always`) the name is a copy and the model never learns to read it from the image: it named 15.6%
# of held-out benign renders from the image alone; with only the naming questions bare 76.1%
# (`tga_naming_bare`, 3 seeds; docs/miniature/rt_always holds that run). Inference keeps both: '+rt' rows
# ask with the retrieved text, the others with the image alone.
# lambda = 0.25, the reference code's coefficient of its image-caption term ((1 - t)/4 at t = 0): at lambda = 1
# (`tga_w1`) the guidance cost naming from the image (seed 0, stage-2 lr 1e-2: 76.7% against plain's 81.7%;
# 0.25: 81.7%; docs/miniature/levers/stage2_lr_lambda.json).
TGA = {"tga.weight": 0.25, "data.use_retrieved": True, "data.no_retrieved_pattern": NAMING,
       "data.retrieved_dropout": 0.5}

# lambda = 0: LLaVA's alignment, no guidance and no retrieved text.
PLAIN = {"tga.weight": 0.0, "data.use_retrieved": False}

# name -> stage-2 overrides; 'tga.weight' is lambda. The ablations change one thing of TGA. reference_form is
# the reference code's loss made differentiable (as written there it has no gradient, which equals
# `retrieved_only`).
VARIANTS = {
    "plain": PLAIN,
    "tga": TGA,
    "tga_w1": {**TGA, "tga.weight": 1.0},
    "retrieved_only": {**TGA, "tga.weight": 0.0},
    "guide_only": {**TGA, "data.use_retrieved": False},
    "reference_form": {**TGA, "tga.form": "reference"},
    # TGA guiding the band that starts at the paper's Algorithm 1 activation layer (on text requests)
    # instead of the linear probe's first separating layer (keys starting with '_' are not config fields).
    "tga_alg1_band": {**TGA, "_band": "algorithm1"},
    # The retrieved text in every stage-2 prompt, as the paper trains.
    "tga_rt_always": {"tga.weight": 1.0, "data.use_retrieved": True},
    # Only the naming questions without it, or only half of the records (naming questions among them).
    "tga_naming_bare": {"tga.weight": 1.0, "data.use_retrieved": True, "data.no_retrieved_pattern": NAMING},
    "tga_rtdrop": {"tga.weight": 1.0, "data.use_retrieved": True, "data.retrieved_dropout": 0.5},
    # The stage-2 learning rate as a lever on naming: the projector at 3e-4, 1e-3 and 3e-3 instead of 1e-2.
    "plain_lr3e-4": {**PLAIN, "optimizer.learning_rate": 3e-4},
    "tga_lr3e-4": {**TGA, "optimizer.learning_rate": 3e-4},
    "plain_lr1e-3": {**PLAIN, "optimizer.learning_rate": 1e-3},
    "tga_lr1e-3": {**TGA, "optimizer.learning_rate": 1e-3},
    "plain_lr3e-3": {**PLAIN, "optimizer.learning_rate": 3e-3},
    "tga_lr3e-3": {**TGA, "optimizer.learning_rate": 3e-3},
    # The paper's stage 2 trains the LLM too: here through rank-8 LoRA on its attention and MLP
    # projections (the base weights stay frozen; the factors are merged on export), at a paper-like
    # rate for the LLM: 2e-5 (the paper fine-tunes everything at 2e-6). At the projector's stage-2 rate of the
    # time (1e-3), 40 steps of LoRA erased the text safety (docs/miniature/stage2_40steps, issue 16).
    "plain_lora": {**PLAIN, **LORA},
    "tga_lora": {**TGA, **LORA},
}
