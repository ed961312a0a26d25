"""SQuAD v1.1 extractive QA (max length 384 here, stride 128; the paper: 512/128, batch 12, c=2 ultra).

    python -m comploss_jax.train_qa --config=configs/comploss/squad.py --config.data.source_dir=squad \\
        --config.model=path/to/bert-base-uncased --workdir=runs/squad

data.source_dir holds train-v1.1.json and dev-v1.1.json; empty = the public tfds `squad/v1.1`.
Arg string: c (dropout submodels; 0 = baseline), seed, seeds.
"""
from configs.comploss.common import base_config, parse


def get_config(arg: str = ""):
  a = parse(arg, c=2, seed=42, seeds=3)
  return base_config(
      trainer="comploss_jax.train_qa", task="squad", model="all-minilm-l6-v2", seed=a["seed"], epochs=2,
      n_drop=a["c"], learning_rate=3e-5, batch_size=12,
      data=dict(source_dir="", max_length=384, stride=128, train_size=0, eval_size=0, n_best=20,
                max_answer_tokens=30))


def sweep(arg: str = ""):
  a = parse(arg, c=2, seed=42, seeds=3)
  return [{"_variant": "baseline" if n == 0 else f"cmploss_c{n}", "seed": s, "cmp.n_drop": n}
          for n in (0, a["c"]) for s in range(42, 42 + a["seeds"])]
