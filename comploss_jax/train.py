"""Comparative-loss training on trainkit: classification/regression tasks (BBC News, GLUE).

    python -m comploss_jax.train --config=configs/comploss/bbc.py --workdir=runs/bbc
    python -m comploss_jax.train --config=configs/comploss/glue.py:task=rte --config.data.glue_dir=glue_data

Trains from a pretrained encoder, evaluates on dev every epoch, keeps the best-on-dev params
(`<workdir>/best/`), and writes `<workdir>/results.json`: their dev scores under "dev" (the split
the best epoch was selected on, named by "selected_on"; optimistic) and, only for tasks with a
held-out labelled test split (BBC), their test scores under "test". GLUE's test labels are hidden,
so GLUE reports dev only.
`config.cmp.n_drop = 0` is the plain baseline; n_drop = c trains on the comparative loss over the
full model and c nested-dropout submodels, all in one vmapped, jitted, sharded step. For single-text
tasks, `config.cmp.n_crop` adds CmpCrop submodels: views of each training text that keep a nested,
shrinking subset of its sentences or paragraphs (`config.data.crop_unit`; see crop_views.py).
`config.model_layers` (where a config has it) > 0 keeps only the checkpoint's first layers.
"""
from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

import trainkit
from comploss_jax import datasets
from comploss_jax.ablation import submodel_batch_size
from comploss_jax.crop_views import classification_crop_views
from comploss_jax.encoder_params import load_encoder, resolve_model_dir
from comploss_jax.features import encode_classification, stratified_subset
from comploss_jax.heads import SequenceClassifier, classification_losses, with_encoder_params
from comploss_jax.metrics import classification_metrics
from comploss_jax.submodels import CmpSettings, make_loss_fn
from comploss_jax.tasks import get_task
from trainkit.distributed import process_0_first


def load_splits(task, data_cfg) -> dict:
  """{split: random-access source} from the task's tfds builder (prepared once under tfds_dir)."""
  kwargs = dict(data_dir=data_cfg.tfds_dir or None, file_format=datasets.FILE_FORMAT)
  if task.builder == "bbc":
    builder = datasets.BbcNews(source_dir=data_cfg.get("bbc_dir") or None, **kwargs)
  elif data_cfg.get("glue_dir"):
    builder = datasets.GlueFromFiles(source_dir=data_cfg.glue_dir, config=task.name, **kwargs)
  else:
    import tensorflow_datasets as tfds  # the public glue/* builder (downloads the data)
    builder = tfds.builder(f"glue/{task.name}", **kwargs)
  return datasets.prepared(builder)


def records_of(source) -> list[dict]:
  return [source[i] for i in range(len(source))]


def settings_from(cmp_cfg) -> CmpSettings:
  return CmpSettings(n_drop=cmp_cfg.n_drop, n_crop=cmp_cfg.get("n_crop", 0), target=cmp_cfg.target, temperature=cmp_cfg.temperature,
                     ranking=cmp_cfg.ranking, mode=cmp_cfg.mode, primary=cmp_cfg.primary, weight=cmp_cfg.weight,
                     skip_above=cmp_cfg.get("skip_above"), remat=cmp_cfg.remat)


def subset_seed(config) -> int:
  """The seed of the training subset: data.subset_seed, or the run's seed when it is negative (the
  default), so that each seed of a sweep trains on its own articles (baseline and CmpLoss runs of
  one seed still share theirs: their difference stays paired)."""
  seed = config.data.get("subset_seed", -1)
  return config.seed if seed < 0 else seed


def training_subset(labels: np.ndarray, size: int | None, seed: int, stratified: bool) -> np.ndarray:
  """Sorted indices of `size` training examples drawn with `seed` (all when size is None):
  class-stratified for classification, uniform for regression (no classes to stratify by)."""
  if stratified:
    return stratified_subset(labels, size, seed)
  if size is None or size >= len(labels):
    return np.arange(len(labels))
  return np.sort(np.random.default_rng(seed).permutation(len(labels))[:size])


class BestKeeper:
  """Tracks the best dev score; saves those params to `<workdir>/best` (survives a resume)."""

  def __init__(self, workdir: str, metric: str):
    self.directory = os.path.join(os.path.abspath(workdir), "best")
    self.record_path = os.path.join(workdir, "best.json")
    self.metric = metric
    self.best = json.load(open(self.record_path)) if os.path.exists(self.record_path) else None
    self._checkpointer = ocp.StandardCheckpointer()

  def offer(self, step: int, scores: dict, params) -> bool:
    if self.best is not None and scores[self.metric] <= self.best["dev"][self.metric]:
      return False
    self._checkpointer.save(self.directory, params, force=True)
    self._checkpointer.wait_until_finished()
    self.best = {"step": step, "dev": scores}
    if jax.process_index() == 0:
      with open(self.record_path, "w") as f:
        json.dump(self.best, f, indent=2)
    return True

  def restore(self, params_like):
    return self._checkpointer.restore(self.directory, params_like)


def train(config, workdir: str) -> dict:
  """Runs (or resumes) one training run; returns and writes `results.json`."""
  os.makedirs(workdir, exist_ok=True)
  task = get_task(config.task)
  model_dir = resolve_model_dir(config.model)
  from transformers import AutoTokenizer
  tokenizer = AutoTokenizer.from_pretrained(model_dir)
  # model_layers > 0: a shallower model made of the checkpoint's first layers (0: all of them).
  encoder, encoder_params = load_encoder(config.model, num_layers=config.get("model_layers", 0) or None)
  model = SequenceClassifier(encoder.config, task.num_labels)

  # Process 0 builds the tfds dataset first: hosts sharing tfds_dir must not write it concurrently.
  splits = process_0_first(lambda: load_splits(task, config.data), "comploss data")
  train_records = records_of(splits[task.train_split])
  labels = np.asarray([r["label"] for r in train_records])
  keep = training_subset(labels, config.data.train_size or None, subset_seed(config), task.num_labels > 1)
  encode = lambda recs: encode_classification(tokenizer, recs, task.text_keys, config.data.max_length)  # noqa: E731
  train_arrays = encode([train_records[i] for i in keep])
  dev_arrays = encode(records_of(splits[task.dev_split]))
  test_arrays = encode(records_of(splits[task.test_split])) if task.test_split else None

  def per_example(params, inputs, rng, power):
    logits, _ = model.apply({"params": params}, inputs["input_ids"], inputs["attention_mask"],
                            inputs["token_type_ids"], deterministic=False, dropout_power=power,
                            rngs={"dropout": rng})
    return classification_losses(logits, inputs["labels"])

  predict = jax.jit(lambda p, x: model.apply({"params": p}, x["input_ids"], x["attention_mask"],
                                             x["token_type_ids"])[0])

  def evaluate(params, arrays) -> dict:
    logits = predict_in_batches(predict, params, arrays, config.eval_batch_size)
    pred = logits[:, 0] if task.num_labels == 1 else logits.argmax(-1)
    return classification_metrics(pred, arrays["labels"], task.metrics)

  n_crop = config.cmp.get("n_crop", 0)
  if n_crop:  # CmpCrop: nested views that drop sentences/paragraphs, drawn once with the run's seed
    views = classification_crop_views(tokenizer, [train_records[i] for i in keep], task.text_keys,
                                      config.data.max_length, n_crop, np.random.default_rng(config.seed),
                                      config.data.get("crop_unit", "sentence"))
    if not np.array_equal(views["input_ids"][:, 0], train_arrays["input_ids"]):
      raise AssertionError("view 0 of the cropped inputs differs from the plain encoding")
    keys = ("input_ids", "attention_mask", "token_type_ids")
    examples = [{"labels": views["labels"][i], "views": {k: views[k][i] for k in keys}} for i in range(len(keep))]
  else:
    examples = [{k: v[i] for k, v in train_arrays.items()} for i in range(len(keep))]
  return fit(config, workdir, model, encoder_params, per_example, examples, dev_arrays, test_arrays, evaluate,
             task.select, {"task": task.name, "train_size": len(keep), "layers": encoder.config.num_hidden_layers,
                           "max_length": config.data.max_length})


def predict_in_batches(predict, params, arrays: dict, size: int, keys=("input_ids", "attention_mask", "token_type_ids")):
  """Runs a jitted predict over fixed-size chunks (the last one padded) and concatenates outputs.

  Each chunk is split over the batch axes of the params' mesh (so devices share the work instead of
  each computing all of it) and the outputs are gathered to every host as numpy (works multi-host).
  """
  outputs = []
  n = len(arrays[keys[0]])
  place = _chunk_placer(params, size)
  for start in range(0, n, size):
    chunk = {k: arrays[k][start:start + size] for k in keys}
    pad = size - len(chunk[keys[0]])
    chunk = {k: place(np.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1))) for k, v in chunk.items()}
    out = multihost_utils.process_allgather(predict(params, chunk), tiled=True)
    outputs.append(jax.tree.map(lambda x: np.asarray(x)[: size - pad], out))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)


def _chunk_placer(params, size: int):
  """x (the same host array on every process) -> a global array split over the mesh's batch axes;
  identity when the params live on no mesh or `size` does not divide over the batch shards."""
  sharding = getattr(jax.tree.leaves(params)[0], "sharding", None)
  if not isinstance(sharding, jax.sharding.NamedSharding):
    return lambda x: x
  batch = trainkit.batch_sharding(sharding.mesh)
  axes = batch.spec[0] if isinstance(batch.spec[0], tuple) else (batch.spec[0],)
  shards = int(np.prod([batch.mesh.shape[a] for a in axes if a is not None]))
  if size % shards:
    return lambda x: x
  return lambda x: jax.make_array_from_callback(x.shape, batch, lambda index: x[index])


def fit(config, workdir, model, encoder_params, per_example, examples, dev, test, evaluate, select, info,
        make_data=None) -> dict:
  """The part every comparative-loss task shares: optimizer, sharded state from the pretrained
  encoder, the chain's loss in a trainkit step, the loop with per-epoch dev evaluation and
  best-on-dev params, then results.json: "dev" (the selection split's scores of the best params),
  "selected_on" ('dev/<select>') and, when `test` (held-out arrays) is not None, "test".

  examples: a sequence of training examples (dicts of arrays; `examples[0]` gives the input shapes).
  make_data: batch_size -> the checkpointable training iterator, for inputs drawn anew on every pass
  (HotpotQA's views); None: trainkit.make_train_iterator over `examples` with the run's seed."""
  settings = settings_from(config.cmp)
  batch_size = submodel_batch_size(config.batch_size, settings.num_submodels, config.cmp.keep_compute_fixed)
  steps_per_epoch = max(len(examples) // batch_size, 1)
  if config.total_steps <= 0:
    config.total_steps = steps_per_epoch * config.epochs
  if config.eval_every <= 0:
    config.eval_every = steps_per_epoch
  logging.info("%s: %d training examples; %d steps of %d (c=%d)", info, len(examples), config.total_steps,
               batch_size, settings.num_submodels - 1)

  mesh = trainkit.make_mesh(config.mesh)
  sample = jax.tree.map(lambda x: x[None], examples[0])
  sample = sample.get("views", sample)
  sample = {k: v[:, 0] if v.ndim == 3 else v for k, v in sample.items()}  # view 0 of a [1, V, L] input
  init = lambda r: model.init(r, sample["input_ids"], sample["attention_mask"], sample["token_type_ids"])["params"]  # noqa: E731
  abstract = nn.meta.unbox(jax.eval_shape(init, jax.random.PRNGKey(0)))
  tx, schedule, trainable = trainkit.make_optimizer(config.optimizer, config.total_steps, abstract)
  fresh = jax.tree.map(np.asarray, nn.meta.unbox(jax.jit(init)(jax.random.PRNGKey(config.seed))))
  state, shardings = trainkit.create_train_state(init, tx, mesh, config.rules, config.seed,
                                                 params=with_encoder_params(fresh, encoder_params))
  batch_sharding = trainkit.batch_sharding(mesh, config.rules)
  step = trainkit.make_train_step(make_loss_fn(per_example, settings), tx, shardings, batch_sharding, mesh=mesh,
                                  rules=config.rules, schedule=schedule, trainable=trainable,
                                  grad_accum_steps=config.optimizer.grad_accum_steps)
  if make_data is not None:
    data = make_data(batch_size)
  else:
    data = trainkit.make_train_iterator(examples, global_batch_size=batch_size, seed=config.seed)
  keeper = BestKeeper(workdir, select)

  def eval_fn(state) -> dict:
    scores = evaluate(state.params, dev)
    keeper.offer(int(state.step), scores, state.params)
    return scores

  state = trainkit.train_loop(config, workdir, state, shardings, step, data, batch_sharding, eval_fn=eval_fn,
                              progress_bar=config.progress_bar)
  best_params = keeper.restore(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                            state.params))
  results = {**info, "seed": config.seed, "n_drop": config.cmp.n_drop, "n_crop": config.cmp.get("n_crop", 0),
             "target": config.cmp.target, "steps": int(state.step), "best_step": keeper.best["step"],
             "selected_on": f"dev/{select}", "dev": keeper.best["dev"]}
  if test is not None:  # a held-out split, never seen by the selection
    results["test"] = evaluate(best_params, test)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=2)
  logging.info("results: %s", json.dumps(results))
  return results


if __name__ == "__main__":
  from trainkit import cli
  cli.run(train, "configs/comploss/bbc.py:train_size=128,c=2")
