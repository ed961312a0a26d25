"""The comparative-loss trainers' steps on abstract arguments, for ahead-of-time plans (`python -m
trainkit.plan` finds `plan_step` here for configs whose trainer is comploss_jax.train or .train_qa):

    python -m trainkit.plan --config=configs/comploss/glue.py:task=rte --target=v5e:2x2
    python -m trainkit.plan --config=configs/comploss/tiny.py --target=cpu:8 --nosearch
    python -m trainkit.plan --config=configs/comploss/squad.py --target=v4:2x2x1
    python -m trainkit.plan --config=configs/comploss/hotpot.py:c_drop=1,c_crop=1 --target=cpu:8

The encoder's shapes come from its config.json alone (no safetensors read); the step is built from the
trainer's own pieces: settings_from, the task's head and per-example loss (classification, or span
extraction as train_qa's), make_loss_fn, make_optimizer and make_train_step, as `comploss_jax.train.fit`
assembles them.
"""
from __future__ import annotations

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import trainkit
from comploss_jax.encoder import EncoderConfig
from comploss_jax.encoder_params import resolve_model_dir
from comploss_jax.heads import SequenceClassifier, SpanExtractor, classification_losses
from comploss_jax.submodels import make_loss_fn
from comploss_jax.tasks import get_task
from comploss_jax.train import settings_from
from comploss_jax.train_qa import span_per_example

# Without data, a config's total_steps = -1 (epochs x steps per epoch) has no value yet; the schedule it
# shapes changes neither the memory nor the FLOPs of a step.
PLANNED_STEPS = 1000


def classification_per_example(model: SequenceClassifier):
  """(params, inputs, rng, dropout power) -> per-example losses float[B]: the trainer's per-example loss
  (comploss_jax.train.train defines the same one: dropout on, nested to `power`)."""
  def per_example(params, inputs, rng, power):
    logits, _ = model.apply({"params": params}, inputs["input_ids"], inputs["attention_mask"],
                            inputs["token_type_ids"], deterministic=False, dropout_power=power,
                            rngs={"dropout": rng})
    return classification_losses(logits, inputs["labels"])
  return per_example


def encoder_config(config) -> EncoderConfig:
  """The encoder's config from `config.model`'s config.json, cut to `config.model_layers` layers if set."""
  model_dir = resolve_model_dir(config.model)
  path = os.path.join(model_dir, "config.json")
  with open(path) as f:
    cfg = EncoderConfig.from_hf(json.load(f), path)
  layers = config.get("model_layers", 0)
  return dataclasses.replace(cfg, num_hidden_layers=layers) if layers else cfg


def plan_step(config, mesh, global_batch: int) -> trainkit.PlannedStep:
  """The step of `config.trainer` (comploss_jax.train or .train_qa) for `mesh` with a batch of `global_batch`
  examples (each with its 1 + n_crop views when config.cmp.n_crop > 0, or always for HotpotQA) at
  data.max_length tokens."""
  settings = settings_from(config.cmp)
  length = int(config.data.max_length)
  keys = ("input_ids", "attention_mask", "token_type_ids")
  n_crop = config.cmp.get("n_crop", 0)
  inputs = lambda *lead: {k: jax.ShapeDtypeStruct((*lead, length), np.int32) for k in keys}  # noqa: E731
  if config.trainer == "comploss_jax.train":
    task = get_task(config.task)
    model = SequenceClassifier(encoder_config(config), task.num_labels)
    per_example, what = classification_per_example(model), f"task {task.name}"
    label = {"labels": jax.ShapeDtypeStruct((), np.float32 if task.num_labels == 1 else np.int32)}
    example = {**label, "views": inputs(1 + n_crop)} if n_crop else {**label, **inputs()}
  elif config.trainer == "comploss_jax.train_qa":
    model = SpanExtractor(encoder_config(config))
    hotpot = config.task == "hotpot"
    per_example, what = span_per_example(model, with_validity=hotpot), f"span extraction ({config.task})"
    span = lambda *lead: {k: jax.ShapeDtypeStruct(lead, np.int32) for k in ("start", "end")}  # noqa: E731
    # HotpotQA's pipeline always yields views (pass-dependent paragraph order); SQuAD's windows are flat.
    example = {"views": {**inputs(1 + n_crop), **span(1 + n_crop)}} if hotpot else {**inputs(), **span()}
  else:
    raise ValueError(f"trainer {config.trainer!r} is not a comparative-loss trainer: comploss_jax.plan plans "
                     f"comploss_jax.train and comploss_jax.train_qa")

  def init(rng):
    ids = jnp.zeros((1, length), jnp.int32)
    return model.init(rng, ids, ids, ids)["params"]

  abstract = nn.meta.unbox(jax.eval_shape(init, jax.random.PRNGKey(0)))
  total_steps = config.total_steps if config.total_steps > 0 else PLANNED_STEPS
  tx, schedule, trainable = trainkit.make_optimizer(config.optimizer, total_steps, abstract)
  state, shardings = trainkit.abstract_train_state(init, tx, mesh, config.rules)
  sharding = trainkit.batch_sharding(mesh, config.rules)
  step = trainkit.make_train_step(make_loss_fn(per_example, settings), tx, shardings, sharding,
                                  mesh=mesh, rules=config.rules, schedule=schedule, trainable=trainable,
                                  grad_accum_steps=config.optimizer.grad_accum_steps)
  batch = jax.tree.map(lambda s: jax.ShapeDtypeStruct((global_batch,) + s.shape, s.dtype, sharding=sharding), example)
  cfg = model.config
  count = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))  # noqa: E731
  info = {"model": f"{cfg.model_type} encoder {cfg.num_hidden_layers}x{cfg.hidden_size}, {what}, "
                   f"{settings.num_submodels} submodels (n_drop={settings.n_drop}, n_crop={settings.n_crop})",
          "params": count(state.params), "trainable_params": count(
              [x for x, t in zip(jax.tree.leaves(state.params), jax.tree.leaves(trainable)) if t]),
          "tokens_per_example": length * (1 + n_crop), "submodels": settings.num_submodels}
  return trainkit.PlannedStep(step=step, state=state, batch=batch, info=info)
