"""Contrastive pretraining of the miniature world's vision tower against frozen MiniLM caption embeddings.

    python -m tga_jax.miniature.vision_pretrain --out runs/miniature/vision [--steps N --batch B --seed S]

A small CLIP-architecture ViT (64 x 64 images, 8 x 8 patches) plus CLIP's visual projection to 384 is
trained with InfoNCE (learnable temperature) so that an image's embedding lands on the MiniLM-L6
sentence embedding (mean pooling + L2 norm) of its caption. The text side stays frozen: captions are
embedded once and cached in DIR/caption_embeddings.npz. Every step renders a fresh batch (train-split
variants and phrasings only), so the data never repeats.

Writes DIR as an HF CLIPVisionModelWithProjection folder (config.json, model.safetensors,
preprocessor_config.json) that `tga_jax.weights.clip.load_clip_vision(DIR)` loads, and DIR/gate.json
with the gate metric: top-1 caption retrieval among the 37 canonical captions on held-out renders
(unseen palette x background pairs), which must reach 0.9. A rerun with the same arguments and an
existing gate.json does nothing (the `make reproduce` cache).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import ctypes
import dataclasses
import json
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tga_jax.models.clip import ClipConfig
from tga_jax.weights.clip import load_clip_vision, load_visual_projection, save_clip_vision
from tga_jax.models.image_config import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageProcessingConfig
from tga_jax.miniature import world
from tga_jax.models.siglip import vision_tower

TEXT_MODEL = "all-minilm-l6-v2"
EMBED_DIM = 384  # MiniLM-L6's sentence embedding size
GATE = 0.9
# CLIP starts at 1 / 0.07; MiniLM's captions of different concepts sit close together (mean cosine 0.38,
# up to 0.69), so a sharper start gives the 37-way choice usable gradients from the first steps.
INIT_SCALE = 30.0


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
  """Everything that decides the result (the cache key of gate.json)."""
  steps: int = 1200
  batch: int = 64
  seed: int = 0
  hidden: int = 128
  layers: int = 4
  heads: int = 4
  image_size: int = 64
  patch: int = 8
  lr: float = 2e-3
  weight_decay: float = 0.05
  eval_per_concept: int = 20


def tower_config(c: PretrainConfig) -> ClipConfig:
  """The ViT: CLIP's architecture at a small size; LLaVA features from the penultimate layer."""
  return ClipConfig(hidden_size=c.hidden, intermediate_size=4 * c.hidden, num_layers=c.layers, num_heads=c.heads,
                    image_size=c.image_size, patch_size=c.patch, feature_layer=-2)


def processor(image_size: int) -> ImageProcessingConfig:
  """CLIP's preprocessing at the render size (no resize, OpenAI mean/std), saved beside the weights."""
  return ImageProcessingConfig(size=image_size, crop_size=image_size, aspect="pad")


def to_pixels(images: np.ndarray) -> np.ndarray:
  """uint8[N, S, S, 3] -> float32[N, S, S, 3], normalised as `processor` does (its resize is the identity
  at the render size, so this skips PIL)."""
  scaled = (np.asarray(images).astype(np.float64) / 255).astype(np.float32)
  return (scaled - np.asarray(OPENAI_CLIP_MEAN, np.float32)) / np.asarray(OPENAI_CLIP_STD, np.float32)


# ---------------------------------------------------------------- frozen text side


def embed_texts(texts: list[str], batch: int = 128) -> np.ndarray:
  """float32[N, 384]: sentence-transformers embeddings of all-MiniLM-L6-v2 (mean pooling + L2 norm)."""
  from transformers import AutoTokenizer

  import comploss_jax
  from comploss_jax.encoder_params import resolve_model_dir

  module, params = comploss_jax.load_encoder(TEXT_MODEL)
  tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(TEXT_MODEL))

  @jax.jit
  def run(ids, mask, types):
    hidden, _ = module.apply({"params": params}, ids, mask, types)
    pooled = comploss_jax.mean_pool(hidden, mask)
    return pooled / jnp.linalg.norm(pooled, axis=-1, keepdims=True)

  out = []
  for start in range(0, len(texts), batch):
    chunk = list(texts[start:start + batch])
    # Pad the chunk and the length to fixed sizes so one compilation serves every chunk.
    enc = tokenizer(chunk + [""] * (batch - len(chunk)), padding="max_length", truncation=True, max_length=48,
                    return_tensors="np")
    out.append(np.asarray(run(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]))[: len(chunk)])
  return np.concatenate(out).astype(np.float32)


def caption_bank(path: str) -> dict:
  """The caption texts and their MiniLM embeddings, computed once and cached at `path` (.npz).

  Keys: concepts [37], captions [37] (canonical) + embeddings float32[37, 384] (the retrieval index),
  train_captions / train_embeddings and heldout_captions / heldout_embeddings (every phrasing).
  """
  want = {"captions": [world.canonical_caption(c) for c in world.CONCEPT_IDS],
          "train_captions": world.all_captions("train"), "heldout_captions": world.all_captions("heldout")}
  if os.path.exists(path):
    with np.load(path) as f:
      cached = {k: f[k] for k in f.files}
    if all(k in cached and list(cached[k]) == v for k, v in want.items()):
      return cached
  embeddings = embed_texts(want["captions"] + want["train_captions"] + want["heldout_captions"])
  n, m = len(want["captions"]), len(want["train_captions"])
  bank = {"concepts": np.asarray(world.CONCEPT_IDS), **{k: np.asarray(v) for k, v in want.items()},
          "embeddings": embeddings[:n], "train_embeddings": embeddings[n:n + m],
          "heldout_embeddings": embeddings[n + m:]}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  np.savez(path, **bank)
  return bank


# ---------------------------------------------------------------- image side


def sincos_positions(cfg: ClipConfig, scale: float = 0.5) -> np.ndarray:
  """float32[1 + P, D]: 2-D sine-cosine position embeddings (MoCo v3's init; the class token's row is 0).

  A learned-from-scratch position table makes a small ViT spend its first hundreds of steps discovering
  the patch grid; starting from the grid's geometry it learns shapes sooner. Still a learned parameter.
  """
  g, d = cfg.grid, cfg.hidden_size
  quarter = d // 4
  omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
  y, x = np.mgrid[0:g, 0:g].reshape(2, -1).astype(np.float64)
  parts = [np.sin(np.outer(x, omega)), np.cos(np.outer(x, omega)), np.sin(np.outer(y, omega)),
           np.cos(np.outer(y, omega))]
  table = np.zeros((g * g, d))
  table[:, :4 * quarter] = np.concatenate(parts, axis=1)
  return (scale * np.concatenate([np.zeros((1, d)), table])).astype(np.float32)


def init_params(cfg: ClipConfig, key: jax.Array) -> dict:
  """{'tower': ViT params, 'projection': float[D, 384], 'logit_scale': float[] (log of the initial scale)}."""
  k1, k2 = jax.random.split(key)
  pixels = jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.num_channels), jnp.float32)
  tower = nn.meta.unbox(vision_tower(cfg, name=None).init(k1, pixels)["params"])
  tower = {**tower, "position_embedding": jnp.asarray(sincos_positions(cfg))}
  projection = jax.random.normal(k2, (cfg.hidden_size, EMBED_DIM), jnp.float32) * cfg.hidden_size ** -0.5
  return {"tower": tower, "projection": projection, "logit_scale": jnp.asarray(np.log(INIT_SCALE), jnp.float32)}


def encode(params: dict, cfg: ClipConfig, pixels: jax.Array) -> jax.Array:
  """float32[B, S, S, 3] normalised pixels -> float32[B, 384] unit image embeddings (pooled CLS @ projection)."""
  pooled, _ = vision_tower(cfg, name=None).apply({"params": params["tower"]}, pixels)
  embeds = pooled @ params["projection"]
  return embeds / jnp.linalg.norm(embeds, axis=-1, keepdims=True)


def image_embeddings(params: dict, cfg: ClipConfig, images, batch: int = 256) -> np.ndarray:
  """uint8[N, S, S, 3] renders -> float32[N, 384] unit embeddings, comparable with MiniLM caption
  embeddings by dot product (the queries of the image -> text retrieval)."""
  images = np.asarray(images)
  fn = _encoder_fn(cfg)
  out = []
  for start in range(0, len(images), batch):
    chunk = to_pixels(images[start:start + batch])
    pad = batch - len(chunk)  # one shape, one compilation
    chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], np.float32)])
    out.append(np.asarray(fn(params, chunk))[: batch - pad])
  return np.concatenate(out) if out else np.zeros((0, EMBED_DIM), np.float32)


_ENCODERS: dict = {}


def _encoder_fn(cfg: ClipConfig):
  if cfg not in _ENCODERS:
    _ENCODERS[cfg] = jax.jit(lambda p, x: encode({"tower": p["tower"], "projection": p["projection"]}, cfg, x))
  return _ENCODERS[cfg]


def load_pretrained(folder: str) -> tuple[ClipConfig, dict]:
  """(cfg, {'tower', 'projection'}) from a folder this module wrote (ready for `image_embeddings`)."""
  module, tower = load_clip_vision(folder)
  return module.config, {"tower": tower, "projection": load_visual_projection(folder)}


def patch_features(params: dict, cfg: ClipConfig, images, batch: int = 256) -> np.ndarray:
  """uint8[N, S, S, 3] -> float32[N, P, D]: the tower's LLaVA features (penultimate layer, CLS dropped),
  what the LVLM's projector reads."""
  images = np.asarray(images)
  if cfg not in _FEATURES:
    _FEATURES[cfg] = jax.jit(lambda t, x: vision_tower(cfg, name=None).apply({"params": t}, x)[1]["features"])
  out = []
  for start in range(0, len(images), batch):
    chunk = to_pixels(images[start:start + batch])
    pad = batch - len(chunk)
    chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], np.float32)])
    out.append(np.asarray(_FEATURES[cfg](params["tower"], chunk))[: batch - pad])
  return np.concatenate(out)


_FEATURES: dict = {}


def feature_probe_top1(params: dict, cfg: ClipConfig, train: list[dict], test: list[dict]) -> float:
  """Nearest-class-mean accuracy of mean-pooled patch features (train renders' class means, test renders
  classified by cosine): whether the features the LVLM sees carry concept identity, not only the CLS."""
  def pooled(records):
    f = patch_features(params, cfg, np.stack([r["image"] for r in records])).mean(axis=1)
    f = f - f.mean(axis=0)  # centre: the shared component (background statistics) says nothing
    return f / np.linalg.norm(f, axis=1, keepdims=True)

  labels = lambda records: np.asarray([world.CONCEPT_IDS.index(r["concept"]) for r in records])
  f_train, y_train = pooled(train), labels(train)
  means = np.stack([f_train[y_train == k].mean(axis=0) for k in range(len(world.CONCEPT_IDS))])
  means /= np.linalg.norm(means, axis=1, keepdims=True)
  return retrieval_top1(pooled(test), means, labels(test))


def retrieval_top1(embeds: np.ndarray, text_embeds: np.ndarray, labels: np.ndarray) -> float:
  """Fraction of rows whose nearest text (dot product over unit vectors) is their label's."""
  return float(np.mean(np.argmax(embeds @ text_embeds.T, axis=1) == labels))


# ---------------------------------------------------------------- training


def contrastive_loss(params: dict, cfg: ClipConfig, pixels, caption_embeds, concepts, canonical):
  """InfoNCE of images against their captions' frozen embeddings, plus against the canonical captions.

  Args:
    pixels: float32[B, S, S, 3]; caption_embeds: float32[B, 384] (unit); concepts: int32[B];
    canonical: float32[C, 384] (unit): the 37 canonical captions.
  In-batch, every caption of the same concept is a positive (targets spread evenly over them), so two
  renders of one concept are never pushed apart; the canonical term is the gate's own retrieval task.
  """
  img = encode(params, cfg, pixels)
  scale = jnp.exp(jnp.minimum(params["logit_scale"], np.log(100.0)))  # CLIP caps the scale at 100
  same = (concepts[:, None] == concepts[None, :]).astype(jnp.float32)
  targets = same / same.sum(axis=1, keepdims=True)
  logits = scale * img @ caption_embeds.T
  i2t = optax.softmax_cross_entropy(logits, targets).mean()
  t2i = optax.softmax_cross_entropy(logits.T, targets).mean()
  canon_logits = scale * img @ canonical.T
  canon = optax.softmax_cross_entropy_with_integer_labels(canon_logits, concepts).mean()
  accuracy = jnp.mean(jnp.argmax(canon_logits, axis=1) == concepts)
  return (i2t + t2i) / 2 + canon, {"i2t": i2t, "canon": canon, "acc": accuracy, "scale": scale}


def make_optimizer(c: PretrainConfig) -> optax.GradientTransformation:
  warmup = max(1, c.steps // 20)
  schedule = optax.warmup_cosine_decay_schedule(0.0, c.lr, warmup, max(c.steps, warmup + 1), c.lr * 0.02)
  # No decay on norms, biases, embeddings' class token and the temperature: only matrices shrink.
  decay = lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=c.weight_decay, mask=decay))


def batch_arrays(rng: np.random.Generator, c: PretrainConfig, caption_rows: dict) -> tuple[np.ndarray, ...]:
  """One fresh training batch: (pixels float32[B, S, S, 3], caption row int32[B], concept int32[B])."""
  samples = world.render_batch(rng, c.batch, "train", c.image_size)
  pixels = to_pixels(np.stack([s["image"] for s in samples]))
  rows = np.asarray([caption_rows[s["caption"]] for s in samples], np.int32)
  concepts = np.asarray([world.CONCEPT_IDS.index(s["concept"]) for s in samples], np.int32)
  return pixels, rows, concepts


def evaluate(params: dict, cfg: ClipConfig, bank: dict, records: list[dict]) -> float:
  """Top-1 retrieval among the canonical captions on `records` (renders with a 'concept')."""
  embeds = image_embeddings(params, cfg, np.stack([r["image"] for r in records]))
  labels = np.asarray([world.CONCEPT_IDS.index(r["concept"]) for r in records])
  return retrieval_top1(embeds, np.asarray(bank["embeddings"]), labels)


def keep_freed_memory() -> None:
  """Stops glibc from handing XLA's per-step temporaries (megabytes each) back to the kernel.

  Otherwise every step maps them afresh and page-faults them in: measured here, about a quarter of the
  pretraining's CPU time went to the kernel. A no-op where glibc's mallopt is absent.
  """
  try:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: blocks up to 32 MiB come from the reusable heap
    libc.mallopt(-1, 1 << 30)   # M_TRIM_THRESHOLD: keep up to 1 GiB of freed heap
  except (OSError, AttributeError):
    pass


def _progress(total: int):
  try:
    import tqdm
    return tqdm.tqdm(total=total, unit="step", dynamic_ncols=True, desc="vision pretrain")
  except ImportError:  # pragma: no cover - tqdm ships with the project's requirements
    return None


def pretrain(out: str, c: PretrainConfig = PretrainConfig(), progress: bool = True) -> dict:
  """Trains (unless gate.json under `out` already records these arguments), saves, evaluates; returns
  the gate report (also written to out/gate.json)."""
  gate_path = os.path.join(out, "gate.json")
  args = dataclasses.asdict(c)
  if os.path.exists(gate_path):
    with open(gate_path) as f:
      report = json.load(f)
    same_world = report.get("world_version", world.WORLD_VERSION) == world.WORLD_VERSION
    if report.get("args") == args and same_world and os.path.exists(os.path.join(out, "model.safetensors")):
      print(f"vision pretrain: cached at {out} (held-out top-1 {report['heldout_top1']:.3f})", flush=True)
      return report
  os.makedirs(out, exist_ok=True)
  keep_freed_memory()
  start, cpu_start = time.time(), time.process_time()
  bank = caption_bank(os.path.join(out, "caption_embeddings.npz"))
  caption_rows = {str(t): i for i, t in enumerate(bank["train_captions"])}
  train_embeds = jnp.asarray(bank["train_embeddings"])
  canonical = jnp.asarray(bank["embeddings"])
  cfg = tower_config(c)
  params = init_params(cfg, jax.random.PRNGKey(c.seed))
  optimizer = make_optimizer(c)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, pixels, rows, concepts):
    grad_fn = jax.value_and_grad(contrastive_loss, has_aux=True)
    (loss, metrics), grads = grad_fn(params, cfg, pixels, train_embeds[rows], concepts, canonical)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, {"loss": loss, **metrics}

  rng = np.random.default_rng([c.seed, 7])
  bar = _progress(c.steps) if progress else None
  # Render the next batch on a thread while the current step runs (PIL and numpy release the GIL).
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    pending = pool.submit(batch_arrays, rng, c, caption_rows)
    metrics = {}
    for i in range(c.steps):
      pixels, rows, concepts = pending.result()
      pending = pool.submit(batch_arrays, rng, c, caption_rows)
      params, opt_state, metrics = step(params, opt_state, pixels, rows, concepts)
      if bar is not None:
        if i % 10 == 0 or i == c.steps - 1:
          bar.set_postfix(loss=f"{float(metrics['loss']):.3f}", acc=f"{float(metrics['acc']):.2f}",
                          scale=f"{float(metrics['scale']):.1f}")
        bar.update(1)
    pending.cancel()
  if bar is not None:
    bar.close()
  train_s = time.time() - start
  # Evaluation renders are seeded apart from the training stream.
  heldout_records = world.make_split(c.eval_per_concept, "heldout", seed=10_000 + c.seed, image_size=c.image_size)
  train_records = world.make_split(c.eval_per_concept, "train", seed=10_000 + c.seed, image_size=c.image_size)
  heldout = evaluate(params, cfg, bank, heldout_records)
  train = evaluate(params, cfg, bank, train_records)
  probe = feature_probe_top1(params, cfg, train_records, heldout_records)
  save_clip_vision(out, cfg, params["tower"], np.asarray(params["projection"]), processor(c.image_size))
  report = {"heldout_top1": heldout, "train_top1": train, "gate": GATE, "passed": heldout >= GATE,
            "feature_probe_heldout_top1": probe, "num_concepts": len(world.CONCEPT_IDS), "world_version": world.WORLD_VERSION, "eval_per_concept": c.eval_per_concept,
            "final_loss": float(metrics.get("loss", float("nan"))), "train_seconds": round(train_s, 1),
            "wall_seconds": round(time.time() - start, 1),
            # CPU seconds over all threads: on a shared machine wall time overstates the cost.
            "cpu_seconds": round(time.process_time() - cpu_start, 1), "cpu_count": os.cpu_count(), "text_model": TEXT_MODEL,
            "params": int(sum(np.size(x) for x in jax.tree.leaves(params["tower"]))), "args": args}
  with open(gate_path, "w") as f:
    json.dump(report, f, indent=1)
  verdict = "PASS" if report["passed"] else "FAIL"
  print(f"vision pretrain: held-out top-1 {heldout:.3f}, train top-1 {train:.3f} (gate {GATE}: {verdict}), "
        f"patch-feature probe {probe:.3f} "
        f"in {report['wall_seconds']:.0f} s -> {out}", flush=True)
  return report


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="output folder (HF CLIPVisionModelWithProjection + gate.json)")
  defaults = PretrainConfig()
  for field in dataclasses.fields(PretrainConfig):
    parser.add_argument(f"--{field.name.replace('_', '-')}", type=field.type if callable(field.type) else
                        type(getattr(defaults, field.name)), default=getattr(defaults, field.name))
  parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs, CI)")
  parser.add_argument("--require-gate", action="store_true", help="exit 1 when the gate is not reached")
  a = parser.parse_args(argv)
  c = PretrainConfig(**{f.name: getattr(a, f.name) for f in dataclasses.fields(PretrainConfig)})
  report = pretrain(a.out, c, progress=not a.no_progress)
  return 1 if a.require_gate and not report["passed"] else 0


if __name__ == "__main__":
  sys.exit(main())
