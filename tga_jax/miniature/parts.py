"""Stages 1-2 of the miniature reproduction: the parts every alignment shares. The vision tower
(pretrained against frozen MiniLM captions), the safety-tuned LLM (a text-only SFT of SmolLM2-135M-Instruct)
and the guided layer band, found on the safe LLM's states of text requests.
"""
from __future__ import annotations

import os

import numpy as np
from absl import logging

from tga_jax.miniature import requests as rq
from tga_jax.miniature.recipe import Scale, load_json, save_json


def build_vision(work: str, scale: Scale, seed: int) -> str:
  from tga_jax.miniature import vision_pretrain
  out = os.path.join(work, "vision")
  overrides = {} if scale.vision_steps is None else {"steps": scale.vision_steps}
  report = vision_pretrain.pretrain(out, vision_pretrain.PretrainConfig(seed=seed, **overrides))
  logging.info("vision tower: %s", {k: report[k] for k in report if "top1" in k})
  return out


def build_llm(work: str, scale: Scale, seed: int) -> str:
  from tga_jax.miniature import safety_sft
  out = os.path.join(work, "safe_llm")
  overrides = {} if scale.sft_steps is None else {"steps": scale.sft_steps}
  safety_sft.run(out, safety_sft.SftArgs(seed=seed, **overrides))
  return out


def choose_band(work: str, llm_dir: str, width: int = 9, threshold: float = 0.9) -> dict:
  """The guided band, found two ways on the safe LLM's last-position states of text requests, both
  [first, first + width - 1]:
  - the probe band (the default 'first'/'last'): first = the first layer (>= 1) where a linear probe
    separates toxic from benign requests;
  - 'algorithm1': first = the median over toxic requests of the paper's Algorithm 1 activation layer
    (logit lens, the first l >= 2 whose largest probability gain D_l is a refusal token).
  Only the shared templates are used (the same wording for every concept), so the probe reads content,
  not wording."""
  path = os.path.join(work, "band.json")
  if os.path.exists(path) and "algorithm1" in load_json(path):
    return load_json(path)
  import jax
  import jax.numpy as jnp
  from tga_jax import load_llm
  from tga_jax.safety import analysis
  from tga_jax.data.conversation import tokenize_conversation
  from tga_jax.data.tokenizer import load_tokenizer
  module, params = load_llm(llm_dir)
  tokenizer = load_tokenizer(llm_dir)
  rows = [r for r in rq.requests("train", "text", include_generic=False) if r["template_id"].startswith("shared")]
  rng = np.random.default_rng(0)
  toxic = [r for r in rows if r["toxic"]]
  benign = [r for r in rows if not r["toxic"]]
  n = min(len(toxic), len(benign), 64)
  chosen = [toxic[i] for i in rng.permutation(len(toxic))[:n]] + [benign[i] for i in rng.permutation(len(benign))[:n]]
  tokens = [tokenize_conversation([{"role": "user", "content": [("text", r["text"])]}], tokenizer, "chat_template",
                                  image_token_id=-1, tokens_per_image=0, add_generation_prompt=True, pad=False)
            for r in chosen]
  length = -(-max(t.length for t in tokens) // 16) * 16
  ids = np.zeros((len(tokens), length), np.int32)
  mask = np.zeros_like(ids)
  for i, t in enumerate(tokens):  # left padding: the last column is every row's last real token
    ids[i, length - t.length:] = t.input_ids[:t.length]
    mask[i, length - t.length:] = 1
  fn = jax.jit(lambda p, x, m: module.apply({"params": p}, x, m, output_hidden_states=True)[1]["hidden_states"][:, :, -1])
  states = np.concatenate([np.asarray(fn(params, ids[s:s + 32], mask[s:s + 32])) for s in range(0, len(ids), 32)],
                          axis=1)
  labels = np.r_[np.ones(n, int), np.zeros(n, int)]
  accuracy = analysis.probe_accuracies(states, labels)
  first = max(1, analysis.first_layer_at(accuracy, threshold))
  layers = module.config.num_layers
  band = {"first": first, "last": min(first + width - 1, layers), "threshold": threshold,
          "probe_accuracy": accuracy, "requests": 2 * n}
  # Algorithm 1 on the toxic requests (the first n rows), a few at a time: the lens logits of every
  # layer are [L+1, rows, vocab].
  refusal_ids = analysis.refusal_token_ids(tokenizer)
  lens = jax.jit(lambda p, s: analysis.safety_layers(
      jnp.moveaxis(analysis.lens_logits(module.config, p, s), 0, 1), refusal_ids)["activation"])
  activation = np.concatenate([np.asarray(lens(params, states[:, s:min(s + 8, n)])) for s in range(0, n, 8)])
  first_alg1 = max(1, int(np.median(activation)))
  band["algorithm1"] = {"first": first_alg1, "last": min(first_alg1 + width - 1, layers),
                        "activation_layers": np.bincount(activation, minlength=layers + 1).tolist()}
  save_json(path, band)
  return band
