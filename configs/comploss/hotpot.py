"""HotpotQA distractor: question + 10 paragraphs, comparative loss over dropout and/or crop submodels.

    python -m comploss_jax.train_qa --config=configs/comploss/hotpot.py:c_drop=1,c_crop=1 \\
        --config.data.source_dir=hotpot --workdir=runs/hotpot

data.source_dir holds hotpot_train_v1.1.json and hotpot_dev_distractor_v1.json. The paper uses
Longformer-base at 2048 tokens; any BERT-family encoder here reads max_length tokens.
data.paragraph_tokens caps each paragraph's text (the answer's paragraph keeps the answer) and
data.question_tokens the question (0: no cap); the reference uses 256 and 160 at 2048 tokens. 40 is
sized so that 10 capped paragraphs with short titles and a ~20-token question come to about 480 of
MiniLM's 512 tokens (an estimate, not measured on the data); when a view does not fit, the answer's
paragraph, then the other supporting ones, then the distractors get the room (comploss_jax/hotpot.py).
Arg string: c_drop, c_crop (submodels of each kind), seed, seeds.
"""
from configs.comploss.common import base_config, parse


def get_config(arg: str = ""):
  a = parse(arg, c_drop=0, c_crop=1, seed=42, seeds=3)
  return base_config(
      trainer="comploss_jax.train_qa", task="hotpot", model="all-minilm-l6-v2", seed=a["seed"], epochs=3,
      n_drop=a["c_drop"], n_crop=a["c_crop"], learning_rate=3e-5, batch_size=8,
      data=dict(source_dir="", max_length=512, paragraph_tokens=40, question_tokens=64, train_size=0, eval_size=0,
                n_best=20, max_answer_tokens=30))


def sweep(arg: str = ""):
  a = parse(arg, c_drop=0, c_crop=1, seed=42, seeds=3)
  grid = [("baseline", 0, 0), (f"cmploss_d{a['c_drop']}_c{a['c_crop']}", a["c_drop"], a["c_crop"])]
  return [{"_variant": name, "seed": s, "cmp.n_drop": d, "cmp.n_crop": c} for name, d, c in grid
          for s in range(42, 42 + a["seeds"])]
