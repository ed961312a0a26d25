"""Benchmark (not a test): the stage-2 train step with TGA vs lambda = 0 (plain LLaVA) on the SmolLM2
config -- the overhead of the caption pass and the hidden-state reads (target <= 1.35x).

    python bench/tga_step.py [--batch 8 --repeats 3]

Both steps are the same trainkit step (projector + LLM trained, AdamW) on the same batch of procedural
LLaVA data; TGA adds the text-only caption pass (no gradient) and the guidance loss over layers 10-18.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

import trainkit  # noqa: E402
from bench.common import timeit  # noqa: E402
from configs.tga import smollm  # noqa: E402
from tga_jax.data import llava as llava_data  # noqa: E402
from tga_jax import train as tga_train  # noqa: E402
from tga_jax.weights.lvlm import trainable_patterns  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  config = smollm.get_config("stage=2")
  config.data.procedural.n = args.batch
  module, loaded, tokenizer = tga_train.build_model(config.model)
  workdir = tempfile.mkdtemp()
  path = tga_train.prepare_data(config, workdir)
  source = llava_data.prepared(llava_data.LlavaJson(json_path=path, data_dir=os.path.join(workdir, "tfds"),
                                                    file_format=llava_data.FILE_FORMAT))["train"]
  spec = llava_data.ExampleSpec(template=config.data.template, stage=2, max_length=config.data.max_length,
                                caption_max_length=config.data.caption_max_length, use_retrieved=True,
                                caption_template=config.data.caption_template)
  parse = llava_data.make_parse(tokenizer, module.config, spec)
  examples = [parse(source[i]) for i in range(len(source))][: args.batch]
  batch = jax.tree.map(lambda *xs: np.stack(xs), *examples)
  mesh = trainkit.make_mesh({"data": -1})
  init = lambda r: module.init(r, batch["input_ids"][:1], batch["pixel_values"][:1], batch["attention_mask"][:1])["params"]  # noqa: E731
  abstract = nn.meta.unbox(jax.eval_shape(init, jax.random.PRNGKey(0)))
  config.optimizer.trainable = trainable_patterns(2)
  fresh = jax.tree.map(np.asarray, nn.meta.unbox(jax.jit(init)(jax.random.PRNGKey(0))))
  params = {**fresh, **loaded}
  tokens = int(batch["attention_mask"].sum())
  print(f"SmolLM2-135M + {module.config.vision.num_layers}-layer {module.config.vision.hidden_size}-d vision tower; "
        f"batch {args.batch} x {batch['input_ids'].shape[1]} tokens ({tokens} real); device {jax.devices()[0].platform}")
  times = {}
  for name, weight in (("lambda=0 (LLaVA)", 0.0), ("TGA lambda=1", 1.0)):
    config.tga.weight = weight
    tx, schedule, trainable = trainkit.make_optimizer(config.optimizer, 100, abstract)
    state, shardings = trainkit.create_train_state(init, tx, mesh, config.rules, 0, params=params)
    step = trainkit.make_train_step(tga_train.make_loss_fn(module, config.tga, 100), tx, shardings,
                                    trainkit.batch_sharding(mesh, config.rules), mesh=mesh, rules=config.rules,
                                    schedule=schedule, trainable=trainable)
    data = trainkit.to_global(batch, trainkit.batch_sharding(mesh, config.rules))
    holder = {"state": state}

    def run():
      holder["state"], metrics = step(holder["state"], data)
      jax.block_until_ready(metrics)

    times[name] = timeit(run, repeats=args.repeats)
    print(f"{name:<18} {times[name]:7.2f} s/step  {tokens / times[name]:7.0f} tokens/s")
  ratio = times["TGA lambda=1"] / times["lambda=0 (LLaVA)"]
  print(f"TGA / plain = {ratio:.2f}x (target <= 1.35x)")


if __name__ == "__main__":
  main()
