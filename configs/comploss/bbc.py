"""BBC News topic classification (5 classes) with MiniLM-L6: baseline vs comparative loss.

    python -m comploss_jax.train --config=configs/comploss/bbc.py:train_size=128,c=2 --workdir=runs/bbc
    python launch/sweep.py --config=configs/comploss/bbc.py:train_size=128 --workdir=runs/bbc_sweep

Arg string: train_size (training examples, class-stratified; 0 = all 1,558), c (dropout submodels;
0 = baseline), c_crop (CmpCrop submodels: nested views of each article without some of its
sentences or paragraphs, `crop` = sentence | paragraph), seed, epochs, seeds (how many seeds sweep()
runs), max_length (tokens of each article read: the headline and first sentences carry the topic;
256 and more read most of an article), layers (0 = all of the model's layers; n keeps its first n).
data.subset_seed: -1 (default) draws the training subset with the run's seed, so each seed trains on
its own articles (a seed's baseline and CmpLoss runs share them); >= 0 fixes one subset for all seeds.
"""
from configs.comploss.common import base_config, parse

ARGS = dict(train_size=128, c=0, c_crop=0, crop="sentence", seed=0, epochs=10, seeds=3, max_length=48, layers=0)


def get_config(arg: str = ""):
  a = parse(arg, **ARGS)
  config = base_config(
      trainer="comploss_jax.train", task="bbc", model="all-minilm-l6-v2", seed=a["seed"], epochs=a["epochs"],
      n_drop=a["c"], n_crop=a["c_crop"], learning_rate=2e-4, batch_size=16,
      data=dict(bbc_dir="", glue_dir="", max_length=a["max_length"], train_size=a["train_size"], subset_seed=-1,
                crop_unit=a["crop"]))
  config.model_layers = a["layers"]
  return config


def sweep(arg: str = ""):
  """Seeds x {baseline, CmpLoss c=2} at the same budget (same steps, batch and learning rate)."""
  seeds = parse(arg, **ARGS)["seeds"]
  return [{"_variant": "baseline" if c == 0 else f"cmploss_c{c}", "seed": seed, "cmp.n_drop": c}
          for c in (0, 2) for seed in range(seeds)]
