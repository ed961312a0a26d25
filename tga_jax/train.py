"""Two-stage LLaVA-style training with Text-Guided Alignment, on trainkit.

    python -m tga_jax.train --config=configs/tga/tiny.py:stage=1 --workdir=runs/tiny/stage1
    python -m tga_jax.train --config=configs/tga/tiny.py:stage=2,weight=1.0 \\
        --config.init_from=runs/tiny/stage1 --workdir=runs/tiny/stage2_tga

Stage 1 (plain template, captions as targets) trains the projector only; stage 2 (the config's
template, "Retrieved Text: {r}. <image>\\n{question}") trains the projector and the LLM, starting from
stage 1's exported params. The loss is L_LM + lambda(t) * L_guide (tga_jax.guidance); lambda = 0 is
the plain-LLaVA baseline on identical data. The caption pass (text-only "Describe this scene:
{caption}", no gradient) runs inside the same jitted step only when lambda > 0; the eval hook always
measures cos(I_j, C_j) and cos(R_j, C_j) at the guided layers on the held-out split.
At the end the params are exported to `<workdir>/params` (stage 2's `init_from` reads them).
"""
from __future__ import annotations

import dataclasses
import json
import os
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging

import trainkit
from trainkit.distributed import process_0_first
from tga_jax.data import llava as llava_data
from tga_jax.data import procedural
from tga_jax.models.clip import ClipConfig
from tga_jax.guidance import guidance_loss, guidance_weight
from tga_jax.models.image_config import ImageProcessingConfig
from tga_jax.models.llama import LlamaConfig
from tga_jax.weights.llm import load_llm
from tga_jax.models.lvlm import LLAVA_IMAGE_TOKEN_INDEX, LlavaLVLM, LvlmConfig
from tga_jax.weights import architectures, gguf_io
from tga_jax.weights import clip as clip_weights
from tga_jax.weights import llama as llama_weights
from tga_jax.weights import lvlm as lvlm_weights
from tga_jax.weights.known_models import resolve_model_path
from tga_jax.weights.lvlm import compose_lvlm, load_lvlm, trainable_patterns
from tga_jax.models.projector import ProjectorConfig
from tga_jax.data.tokenizer import load_tokenizer


def build_model(model_cfg):
  """(module, params or None, tokenizer). kinds:
  'random': tiny random CLIP tower + projector + LLaMA (config fields `vision`, `llm`);
  'llm': a pretrained LLM (`llm`: any load_llm path) with a random `vision` tower and projector;
  'compose': CLIP folder + LLM + optional projector safetensors; 'llava': a llava-hf folder (`path`)."""
  tokenizer = load_tokenizer(model_cfg.tokenizer or model_cfg.llm_path or model_cfg.path)
  kind = model_cfg.kind
  runtime = {"dtype": model_cfg.get("dtype", "float32"), "remat_policy": model_cfg.get("remat_policy", "none")}
  if kind == "llava":
    module, params = load_lvlm(model_cfg.path, **runtime)
    return module, params, tokenizer
  if kind == "compose":
    module, params = compose_lvlm(model_cfg.vision_path, model_cfg.llm_path, model_cfg.projector or None,
                                  model_cfg.projector_type, image_pool=model_cfg.get("image_pool", 1),
                                  feature_layer=model_cfg.get("feature_layer", -2),
                                  feature_strategy=model_cfg.get("feature_strategy", "default"), **runtime)
    return module, params, tokenizer
  if kind == "random":
    llm_cfg, llm_params = LlamaConfig(**model_cfg.llm), None
  elif kind == "llm":
    llm_module, llm_params = load_llm(model_cfg.llm_path)
    llm_cfg = llm_module.config
  else:
    raise ValueError(f"model.kind={kind!r}: expected 'random', 'llm', 'compose' or 'llava'")
  module = _tower_and_llm(model_cfg, llm_cfg)
  return module, ({"llm": llm_params} if llm_params is not None else None), tokenizer


def _tower_and_llm(model_cfg, llm_cfg: LlamaConfig) -> LlavaLVLM:
  """The 'random' and 'llm' kinds: a random `vision` tower (config fields) and projector before `llm_cfg`."""
  vision = ClipConfig(**model_cfg.vision)
  image_processing = ImageProcessingConfig(size=vision.image_size, crop_size=vision.image_size)
  projector = ProjectorConfig(model_cfg.projector_type, vision.hidden_size, llm_cfg.hidden_size)
  return LlavaLVLM(LvlmConfig(vision=vision, projector=projector, llm=llm_cfg, image_processing=image_processing))


def model_architecture(model_cfg) -> LlavaLVLM:
  """The module build_model returns, from configuration alone: no weights read, no tokenizer (what
  the planner, trainkit/plan.py, compiles). For 'compose' and 'llava', a path that exists gives its
  config.json (a GGUF file its metadata); an unset or absent one falls back to the named architecture
  in `model.architecture` ({'vision': ..., 'llm': ...}, tga_jax/weights/architectures.py)."""
  kind = model_cfg.kind
  runtime = {"dtype": model_cfg.get("dtype", "float32"), "remat_policy": model_cfg.get("remat_policy", "none")}
  named = dict(model_cfg.get("architecture", None) or {})
  if kind == "random":
    return _tower_and_llm(model_cfg, LlamaConfig(**model_cfg.llm))
  if kind == "llm":
    return _tower_and_llm(model_cfg, _llm_architecture(model_cfg.llm_path, named.get("llm"), {}))
  if kind == "llava":
    config_path = os.path.join(model_cfg.path, "config.json")
    if not os.path.exists(config_path):
      raise FileNotFoundError(f"model.path={model_cfg.path!r}: no config.json to plan from")
    with open(config_path) as f:
      hf = json.load(f)
    return LlavaLVLM(lvlm_weights.config_from_hf(hf, config_path, model_cfg.path, **runtime))
  if kind != "compose":
    raise ValueError(f"model.kind={kind!r}: expected 'random', 'llm', 'compose' or 'llava'")
  # As compose_lvlm builds it: the tower takes the matmul dtype only, the LLM the dtype and remat policy.
  tower = {"dtype": runtime["dtype"], "feature_layer": model_cfg.get("feature_layer", -2),
           "feature_strategy": model_cfg.get("feature_strategy", "default")}
  if model_cfg.vision_path and os.path.isdir(model_cfg.vision_path):
    with open(os.path.join(model_cfg.vision_path, "config.json")) as f:
      hf = json.load(f)
    # A CLIPModel's config holds the tower's under vision_config (as load_clip_vision reads it).
    hf = hf.get("vision_config", hf) if hf.get("model_type") in ("clip", "siglip") else hf
    vision = clip_weights.vision_config_from_hf(hf, model_cfg.vision_path, **tower)
  elif named.get("vision"):
    vision = architectures.vision_config(named["vision"], **tower)
  else:
    raise FileNotFoundError(f"model.vision_path={model_cfg.vision_path!r} is not a folder here and "
                            f"model.architecture names no vision tower ({sorted(architectures.VISION)})")
  llm = _llm_architecture(model_cfg.llm_path, named.get("llm"), runtime)
  kind_of_projector = model_cfg.projector_type or "mlp2x_gelu"
  projector = ProjectorConfig(kind_of_projector, vision.hidden_size, llm.hidden_size, True, dtype=runtime["dtype"])
  processing = ImageProcessingConfig(size=vision.image_size, crop_size=vision.image_size)
  return LlavaLVLM(LvlmConfig(vision, projector, llm, LLAVA_IMAGE_TOKEN_INDEX, False, processing,
                              int(model_cfg.get("image_pool", 1))))


def _llm_architecture(path: str, name: str | None, runtime: dict) -> LlamaConfig:
  """An LLM's config from its folder's config.json or GGUF metadata, else from a named architecture."""
  if path:
    try:
      resolved = resolve_model_path(path)
    except OSError:  # not here (a hub repo id offline included): the named architecture stands in
      resolved = None
    if resolved and os.path.isdir(resolved):
      with open(os.path.join(resolved, "config.json")) as f:
        return llama_weights.config_from_hf(json.load(f), resolved, **runtime)
    if resolved and gguf_io.is_gguf(resolved):
      return llama_weights.config_from_hf(gguf_io.read_gguf(resolved)[0], resolved, **runtime)
  if name:
    return architectures.llm_config(name, **runtime)
  raise FileNotFoundError(f"model.llm_path={path!r} is not here and model.architecture names no LLM "
                          f"({sorted(architectures.LLM)})")


def example_shapes(config, lvlm_cfg: LvlmConfig) -> dict[str, jax.ShapeDtypeStruct]:
  """The shape and dtype of each array one parsed training example holds (tga_jax.data.llava.make_parse
  with this trainer's ExampleSpec: one image slot, lengths max_length / caption_max_length)."""
  length, caption = config.data.max_length, config.data.caption_max_length
  size, channels = lvlm_cfg.vision.image_size, lvlm_cfg.vision.num_channels
  shape = {"input_ids": ((length,), np.int32), "attention_mask": ((length,), np.int32),
           "loss_mask": ((length,), np.bool_), "retrieved_mask": ((length,), np.bool_),
           "pixel_values": ((1, size, size, channels), np.float32), "image_counts": ((), np.int32),
           "caption_ids": ((caption,), np.int32), "caption_attention_mask": ((caption,), np.int32),
           "caption_mask": ((caption,), np.bool_)}
  return {k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in shape.items()}


def prepare_data(config, workdir: str) -> str:
  """The training JSON: config.data.json, or procedural data generated once into <workdir>/data."""
  if config.data.json:
    return config.data.json
  directory = os.path.join(workdir, "data")
  path = os.path.join(directory, "data.json")
  if not os.path.exists(path):
    p = config.data.procedural
    records = procedural.make_records(p.n, seed=p.seed, image_size=p.image_size)
    retrieved = procedural.same_scene_retrieval(records, p.seed) if config.stage == 2 else None
    extra = procedural.text_refusal_records(p.refusals, p.seed) if config.stage == 2 else None
    procedural.write_llava_dataset(directory, records, config.stage, p.seed, extra=extra, retrieved=retrieved)
  return path


def lm_loss(logits, input_ids, loss_mask, target_index=None, target_valid=None):
  """Mean next-token cross-entropy over the target tokens (loss_mask[t]: token t is predicted from t-1).

  logits: float[B, T, V]; or, with target_index int[B, K] (llava_data.target_positions), float[B, K, V] at
  those positions only, target_valid bool[B, K] marking the real entries: the same loss.
  """
  if target_index is not None:
    targets = jnp.take_along_axis(input_ids, target_index + 1, axis=1)
    per_token = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                                jnp.where(target_valid, targets, 0))
    return (per_token * target_valid).sum() / jnp.maximum(target_valid.sum(), 1)
  mask = loss_mask[:, 1:]
  targets = jnp.where(mask, input_ids[:, 1:], 0)
  per_token = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1].astype(jnp.float32), targets)
  return (per_token * mask).sum() / jnp.maximum(mask.sum(), 1)


def make_loss_fn(module: LlavaLVLM, tga_cfg, total_steps: int, always_guide_metrics: bool = False):
  """trainkit loss_fn(params, batch, rng, step) -> (lm_weight * L_LM + lambda(t) * L_guide, metrics).
  lm_weight (default 1) = 0 trains on the guidance term alone (an ablation and a test of it)."""
  layers = tuple(int(j) for j in tga_cfg.layers)
  guided = tga_cfg.weight > 0 or always_guide_metrics
  # The caption pass needs hidden states up to the deepest guided layer only: it runs the LLM's first
  # layers (hidden state j is layer j's output while j < the layer count; the last one is the final norm's).
  llm = module.config.llm
  keep = min(llm.num_layers, max(layers, default=llm.num_layers) + 1)
  caption_module = module if keep == llm.num_layers else LlavaLVLM(
      dataclasses.replace(module.config, llm=dataclasses.replace(llm, num_layers=keep)))

  def loss_fn(params, batch, rng, step):
    del rng  # the LVLM has no dropout
    logits, aux = module.apply({"params": params}, batch["input_ids"], batch["pixel_values"],
                               batch["attention_mask"], output_hidden_states=guided,
                               logits_at=batch.get("target_index"))
    lm = lm_loss(logits, batch["input_ids"], batch["loss_mask"], batch.get("target_index"), batch.get("target_valid"))
    metrics = {"lm_loss": lm}
    if not guided:
      return lm, metrics
    # The caption pass: the same LLM on the caption alone, a fixed target (no gradient).
    _, caption_aux = caption_module.apply({"params": first_layers(jax.lax.stop_gradient(params), keep)},
                                          batch["caption_ids"], None, batch["caption_attention_mask"],
                                          output_hidden_states=True)
    guide, cos = guidance_loss(aux["hidden_states"], aux["image_mask"], batch["retrieved_mask"],
                               caption_aux["hidden_states"], batch["caption_mask"], layers, form=tga_cfg.form,
                               step=step, total_steps=total_steps)
    weight = guidance_weight(tga_cfg.schedule, tga_cfg.weight, step, total_steps)
    metrics.update(cos, guide_loss=guide, guide_weight=weight)
    return tga_cfg.get("lm_weight", 1.0) * lm + weight * guide, metrics

  return loss_fn


def first_layers(params: dict, keep: int) -> dict:
  """LVLM params with the LLM's layers cut to the first `keep` (stacked under 'layers' or one per layer)."""
  llm = dict(params["llm"])
  if "layers" in llm:
    llm["layers"] = jax.tree.map(lambda x: x[:keep], llm["layers"])
  else:
    llm = {k: v for k, v in llm.items() if not k.startswith("layers_") or int(k.split("_")[1]) < keep}
  return {**params, "llm": llm}


def load_params(directory: str):
  """Params exported by a finished run (`<workdir>/params`), as host arrays."""
  path = os.path.join(os.path.abspath(directory), "params")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: no exported params; init_from must name a finished stage-1 workdir")
  return jax.tree.map(np.asarray, ocp.StandardCheckpointer().restore(path))


def train(config, workdir: str) -> dict:
  os.makedirs(workdir, exist_ok=True)
  module, loaded, tokenizer = build_model(config.model)
  lvlm_cfg = module.config
  spec = llava_data.ExampleSpec(template=config.data.template, stage=config.stage, max_length=config.data.max_length,
                                caption_max_length=config.data.caption_max_length, max_images=1,
                                use_retrieved=config.stage == 2 and config.data.use_retrieved,
                                retrieved_dropout=config.data.retrieved_dropout,
                                no_retrieved_pattern=config.data.get("no_retrieved_pattern", ""),
                                caption_template=config.data.caption_template)

  def prepare():
    json_path = prepare_data(config, workdir)
    builder = llava_data.LlavaJson(json_path=json_path, image_dir=config.data.image_dir or None,
                                   heldout_fraction=config.data.heldout_fraction,
                                   data_dir=config.data.tfds_dir or os.path.join(workdir, "tfds"),
                                   file_format=llava_data.FILE_FORMAT)
    return llava_data.prepared(builder)

  sources = process_0_first(prepare, "tga data")  # the workdir is shared between hosts: one writer
  parse = llava_data.make_parse(tokenizer, lvlm_cfg, spec)
  skipped = trainkit.SkipCounter()
  buckets = tuple(config.data.get("buckets", ()))
  target_buckets = tuple(config.data.get("target_buckets", ()))
  if (buckets or target_buckets) and jax.process_count() > 1:
    logging.warning("data.buckets and data.target_buckets ignored with %d processes: hosts would pick "
                    "different shapes for one step", jax.process_count())
    buckets = target_buckets = ()
  transforms = []
  if buckets:
    transforms.append(llava_data.bucket_trimmer(buckets, tuple(config.data.get("caption_buckets", ()))))
  if target_buckets:  # after the trim: the target positions index the trimmed sequences
    transforms.append(llava_data.target_positions(target_buckets))
  data = trainkit.make_train_iterator(sources["train"], global_batch_size=config.batch_size, seed=config.seed,
                                      parse=parse, skip_counter=skipped, batch_transform=transforms)
  sample = jax.tree.map(lambda x: x[None], _first_good(sources["train"], parse))

  mesh = trainkit.make_mesh(config.mesh)
  init_base = lambda r: module.init(r, sample["input_ids"], sample["pixel_values"], sample["attention_mask"])["params"]  # noqa: E731
  parts = training_parts(config, module, init_base)
  lora, use_lora = parts.lora, parts.use_lora
  params = None
  if config.init_from:
    params = load_params(config.init_from)
  elif loaded is not None:
    # Only the parts `loaded` lacks are initialised ('compose' loads all three: none). The jitted init returns
    # just those, so XLA prunes the rest: no compile time or random draws for params replaced anyway, and
    # each kept part gets the same values as from the whole init (flax derives each module's key from its path).
    missing = lambda r: {k: v for k, v in init_base(r).items() if k not in loaded}  # noqa: E731
    fresh = jax.tree.map(np.asarray, nn.meta.unbox(jax.jit(missing)(jax.random.PRNGKey(config.seed))))
    params = {**fresh, **loaded}
  if use_lora and params is not None:
    params = trainkit.attach_lora(params, init_base, lora, jax.random.PRNGKey(config.seed))
  state, shardings = trainkit.create_train_state(parts.init, parts.tx, mesh, config.rules, config.seed, params=params)
  batch_sharding = trainkit.batch_sharding(mesh, config.rules)
  step = make_step(config, parts, shardings, mesh)
  eval_fn = make_eval_fn(module, config, sources, parse, mesh) if "validation" in sources else None
  state = trainkit.train_loop(config, workdir, state, shardings, step, data, batch_sharding, eval_fn=eval_fn,
                              skip_counter=skipped, progress_bar=config.progress_bar)
  export = os.path.join(os.path.abspath(workdir), "params")
  checkpointer = ocp.StandardCheckpointer()
  # LoRA is merged on export: <workdir>/params is a plain LVLM param tree whatever trained.
  checkpointer.save(export, trainkit.merged_lora_params(state.params, lora) if use_lora else state.params, force=True)
  checkpointer.wait_until_finished()
  return trainkit.update_summary(workdir, exported_params=export)


def training_parts(config, module: LlavaLVLM, init_base) -> types.SimpleNamespace:
  """What the train step is made of, shared by train() and plan_step() (so the planner compiles this
  trainer's own step): init (with LoRA factors when config.lora.rank > 0: params {'base', 'lora'}, the loss
  sees them merged), the optimizer over the stage's trainable params, its schedule and mask, the loss.
  init_base: rng -> the LVLM's boxed params."""
  lora = config.get("lora", None)
  use_lora = trainkit.lora_enabled(lora)
  init = trainkit.with_lora(init_base, lora) if use_lora else init_base
  abstract = nn.meta.unbox(jax.eval_shape(init, jax.random.PRNGKey(0)))
  config.optimizer.trainable = trainable_for(config, use_lora)
  tx, schedule, trainable = trainkit.make_optimizer(config.optimizer, config.total_steps, abstract)
  loss_fn = make_loss_fn(module, config.tga, config.total_steps)
  if use_lora:
    loss_fn = trainkit.lora_loss_fn(loss_fn, lora)
  return types.SimpleNamespace(init=init, tx=tx, schedule=schedule, trainable=trainable, loss_fn=loss_fn,
                               lora=lora, use_lora=use_lora)


def make_step(config, parts, shardings, mesh):
  """The jitted, donated train step over `mesh` (trainkit.make_train_step with this trainer's parts)."""
  return trainkit.make_train_step(parts.loss_fn, parts.tx, shardings, trainkit.batch_sharding(mesh, config.rules),
                                  mesh=mesh, rules=config.rules, schedule=parts.schedule, trainable=parts.trainable,
                                  grad_accum_steps=config.optimizer.grad_accum_steps)


def plan_step(config, mesh, global_batch: int) -> trainkit.PlannedStep:
  """This trainer's train step for `mesh` on abstract arguments (trainkit/plan.py compiles it ahead of
  time): the model from model_architecture (no weights read), the state from jax.eval_shape, a batch of
  `global_batch` examples at the longest shapes the data pipeline yields (max_length: bucketing only
  ever cuts batches shorter)."""
  module = model_architecture(config.model)
  shapes = example_shapes(config, module.config)

  def init_base(rng):
    x = {k: jnp.zeros((1,) + s.shape, s.dtype) for k, s in shapes.items()}
    return module.init(rng, x["input_ids"], x["pixel_values"], x["attention_mask"])["params"]

  parts = training_parts(config, module, init_base)
  state, shardings = trainkit.abstract_train_state(parts.init, parts.tx, mesh, config.rules)
  sharding = trainkit.batch_sharding(mesh, config.rules)
  batch = {k: jax.ShapeDtypeStruct((global_batch,) + s.shape, s.dtype, sharding=sharding) for k, s in shapes.items()}
  cfg = module.config
  count = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))  # noqa: E731
  trained = jax.tree.leaves(jax.tree.map(lambda x, t: x if t else None, state.params, parts.trainable))
  info = {"model": f"LVLM: vision {cfg.vision.num_layers}x{cfg.vision.hidden_size} @ {cfg.vision.image_size}px, "
                   f"LLM {cfg.llm.num_layers}x{cfg.llm.hidden_size} ({cfg.llm.model_type}), {cfg.llm.dtype} matmuls, "
                   f"remat {cfg.llm.remat_policy}",
          "params": count(state.params), "trainable_params": count(trained),
          "tokens_per_example": int(config.data.max_length), "stage": int(config.stage),
          "tga_weight": float(config.tga.weight), "remat_policy": cfg.llm.remat_policy,
          "lora_rank": int(parts.lora.rank) if parts.use_lora else 0}
  return trainkit.PlannedStep(step=make_step(config, parts, shardings, mesh), state=state, batch=batch, info=info)


def _first_good(source, parse):
  for i in range(len(source)):
    try:
      return parse(source[i])
    except trainkit.BadRecord:
      continue
  raise ValueError("no usable record in the training split (every record was bad); see the warnings above")


def trainable_for(config, use_lora: bool) -> tuple[str, ...]:
  """The trainable param regexes: config.trainable, else the stage's (LLaVA: projector, then projector +
  LLM). With LoRA the LLM's own weights stay frozen and its LoRA factors train instead (paths of the
  LVLM's params gain a 'base/' prefix)."""
  patterns = tuple(config.get("trainable", ()) or trainable_patterns(config.stage))
  if not use_lora:
    return patterns
  return trainkit.LORA_TRAINABLE + tuple(f"base/{p}" for p in patterns if not p.startswith("llm"))


def measured_only(metrics: dict, weight: float) -> dict:
  """Drops what an eval did not measure: cos_rc/* when no held-out example had a retrieved span (stage 1,
  or data.use_retrieved off), and guide_loss/guide_weight when the run does not train on guidance
  (lambda = 0); the cosines stay, as diagnostics of where the images land."""
  drop = {"retrieved_fraction"}
  if not metrics.get("retrieved_fraction", 0.0):
    drop |= {k for k in metrics if k.startswith("cos_rc/")}
  if not weight:
    drop |= {"guide_loss", "guide_weight"}
  return {k: v for k, v in metrics.items() if k not in drop}


def make_eval_fn(module, config, sources, parse, mesh):
  """state -> mean LM loss, guidance loss and per-layer cosines over the held-out split."""
  metrics_fn = make_loss_fn(module, config.tga, config.total_steps, always_guide_metrics=True)
  if trainkit.lora_enabled(config.get("lora", None)):
    metrics_fn = trainkit.lora_loss_fn(metrics_fn, config.lora)
  sharding = trainkit.batch_sharding(mesh, config.rules)

  @jax.jit
  def evaluate_batch(params, batch, step):
    _, metrics = metrics_fn(params, batch, None, step)
    return metrics

  examples = []
  for i in range(len(sources["validation"])):
    try:
      examples.append(parse(sources["validation"][i]))
    except trainkit.BadRecord:
      continue
  examples = examples[: config.eval_batches * config.batch_size]
  if not examples:
    raise ValueError("the held-out split has no usable record; raise data.heldout_fraction")
  # Fixed-size batches; the last one is filled up with repeats of the first examples (a slight
  # overweight of those, in exchange for one compiled shape on any number of devices).
  padded = [examples[i % len(examples)] for i in range(-(-len(examples) // config.batch_size) * config.batch_size)]
  batches = [jax.tree.map(lambda *xs: np.stack(xs), *padded[i:i + config.batch_size])
             for i in range(0, len(padded), config.batch_size)]
  logging.info("eval: %d held-out examples in %d batches", len(examples), len(batches))

  # Every host holds all eval batches; each passes on its own contiguous rows (see trainkit.data).
  local = config.batch_size // jax.process_count()
  mine = slice(jax.process_index() * local, (jax.process_index() + 1) * local)

  def eval_fn(state) -> dict:
    totals = {}
    with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(tuple(r) for r in config.rules)):
      for batch in batches:
        batch = jax.tree.map(lambda x: x[mine], batch)
        metrics = jax.device_get(evaluate_batch(state.params, trainkit.to_global(batch, sharding), state.step))
        for k, v in metrics.items():
          totals[k] = totals.get(k, 0.0) + float(v) / len(batches)
    return measured_only(totals, config.tga.weight)

  return eval_fn


if __name__ == "__main__":
  from trainkit import cli
  cli.run(train, "configs/tga/tiny.py:stage=1")
