"""Where does safety act? The layer-wise analysis of spec §2: logit lens, Algorithm 1, cosines, attention.

    ids = refusal_token_ids(tokenizer)                        # K, from phrases ("Sorry", "I", "cannot", ...)
    layers = safety_layers(lens_logits, ids, top_k=1)         # Algorithm 1 on float[..., L+1, V]
    stats = forward_stats(module.config, params, input_ids, attention_mask, pixel_values, span_mask, ids)

Layers are counted as transformers counts hidden states: 0 is the embeddings, l in 1..L the output of
decoder layer l (the last one after the final norm). The logit lens reads every state at the last
real position through the final norm and the LM head, p_l = softmax(logits_l), D_l = p_l - p_{l-1}.
  activation layer (Algorithm 1): the first l >= 2 whose argmax of D_l is a refusal id, 1 if none;
    the reference code's variant asks for a refusal id among the top 5 of D_l (top_k=5).
  end layer: the last l at which a refusal id is the top-1 of p_l, -1 if none.
  probe layer: the first l at which a linear probe on the last position's state separates toxic
    from benign inputs (cross-validated accuracy >= a threshold): where the harm is decodable,
    which can be many layers before the logit lens shows any refusal token.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tga_jax.guidance import cosine
from tga_jax.models.llama import LlamaConfig, RMSNorm
from tga_jax.models.lvlm import LlavaLVLM, LvlmConfig

# Words that open a refusal. The paper names "Sorry" and "I"; the rest are the other usual first words
# of an aligned model's refusal ("I cannot", "As an AI", "I apologize", "Unfortunately").
DEFAULT_REFUSAL_PHRASES = ("Sorry", "I", "cannot", "apologize", "unable", "As", "Unfortunately")


def refusal_token_ids(tokenizer, phrases=DEFAULT_REFUSAL_PHRASES) -> tuple[int, ...]:
  """K: for each phrase, its token id as it starts a text and after a space (BPE and SentencePiece give a
  word different ids in the two places), sorted and deduplicated. A variant that splits into several
  tokens contributes nothing (its first piece, e.g. 'un' of 'unable', is no refusal), unless no variant
  of the phrase is a single token: then the first token of each variant stands for it."""
  ids = set()
  for phrase in phrases:
    if not phrase.strip():
      raise ValueError(f"refusal phrase {phrase!r} is empty")
    word = phrase.strip()
    variants = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in (word, " " + word)]
    if not all(variants):
      raise ValueError(f"refusal phrase {phrase!r} encodes to no token with {type(tokenizer).__name__}")
    single = [v[0] for v in variants if len(v) == 1]
    ids.update(int(i) for i in (single or [v[0] for v in variants]))
  return tuple(sorted(ids))


def safety_layers(logits, refusal_ids, top_k: int = 1) -> dict:
  """Algorithm 1 on a logit-lens stack.

  Args:
    logits: float[..., L+1, V], the lens logits of layers 0..L (any leading batch axes).
    refusal_ids: the token ids K.
    top_k: 1 (the paper's Algorithm 1) or the reference's 5: the activation layer's D_l must hold a
      K id among its top_k entries.
  Returns:
    'activation' int32[...]: first l >= 2 whose top_k of D_l meets K, else 1;
    'end' int32[...]: last l whose argmax of p_l is in K, else -1;
    'refusal_prob' float32[..., L+1]: the probability mass p_l puts on K.
  """
  probs = jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  k_ids = jnp.asarray(refusal_ids, jnp.int32)
  diff = probs[..., 1:, :] - probs[..., :-1, :]  # row i is D_{i+1}
  _, top = jax.lax.top_k(diff, top_k)
  hit = jnp.isin(top, k_ids).any(-1)  # [..., L]
  layers = jnp.arange(1, probs.shape[-2], dtype=jnp.int32)
  hit = hit & (layers >= 2)
  activation = jnp.where(hit.any(-1), layers[jnp.argmax(hit, axis=-1)], 1)
  top1 = jnp.isin(jnp.argmax(probs, axis=-1), k_ids)  # [..., L+1]
  all_layers = jnp.arange(probs.shape[-2], dtype=jnp.int32)
  end = jnp.max(jnp.where(top1, all_layers, -1), axis=-1)
  refusal_prob = jnp.take(probs, k_ids, axis=-1).sum(-1)
  return {"activation": activation.astype(jnp.int32), "end": end.astype(jnp.int32), "refusal_prob": refusal_prob}


def lens_logits(llm: LlamaConfig, llm_params, states):
  """The logit lens: float[L+1, ..., D] per-layer states -> float32[L+1, ..., V] logits.

  States 0..L-1 go through the final norm first; state L already is the final norm's output (norming
  it twice would rescale it by the norm's weights again).
  """
  norm = RMSNorm(llm.rms_norm_eps, jnp.dtype(llm.param_dtype))
  normed = norm.apply({"params": llm_params["final_norm"]}, states[:-1])
  normed = jnp.concatenate([normed, states[-1:].astype(normed.dtype)], axis=0).astype(jnp.float32)
  if llm.tie_word_embeddings:
    return jnp.einsum("l...d,vd->l...v", normed, llm_params["embedding"].astype(jnp.float32))
  return jnp.einsum("l...d,dv->l...v", normed, llm_params["lm_head"]["kernel"].astype(jnp.float32))


def last_position(states, attention_mask):
  """float[L+1, B, T, D], right-padded int/bool[B, T] -> float[L+1, B, D] at each row's last real token."""
  last = jnp.sum(attention_mask.astype(jnp.int32), axis=-1) - 1
  return states[:, jnp.arange(states.shape[1]), last]


def span_attention(last_attention, span_mask):
  """float32[L, B, H, T] (the last position's attention per decoder layer), bool[B, T]
  -> float32[L, B]: the attention mass on the span, summed over heads."""
  return jnp.einsum("lbht,bt->lb", last_attention, span_mask.astype(jnp.float32))


def span_cosines(image_means, caption_means):
  """float[L+1, B, D] mean image-token states (image run), float[L+1, B, D] mean caption states
  (text run) -> float32[L+1, B] per-layer cosines (0 for a sample with an empty span)."""
  return cosine(image_means, caption_means)


@functools.partial(jax.jit, static_argnames=("config", "refusal_ids", "top_ks"))
def forward_stats(params, input_ids, attention_mask, pixel_values, span_mask, *, config: LvlmConfig,
                  refusal_ids: tuple[int, ...], top_ks: tuple[int, ...] = (1, 5)) -> dict:
  """One analysis forward pass over a right-padded batch (jitted; only small arrays come back).

  Args:
    input_ids, attention_mask: int32[B, T]; pixel_values: float32[B, M, S, S, 3] or None (text run);
    span_mask: bool[B, T], the text span (image tokens in the image run, the caption in the text run).
  Returns:
    'activation/top<k>' int32[B] per k in top_ks, 'end' int32[B], 'refusal_prob' float32[L+1, B],
    'span_means' float32[L+1, B, D], 'attention' float32[L, B] (last position -> span, heads summed),
    'last_states' float32[L+1, B, D] (the last real position's hidden states, for the linear probe).
  """
  module = LlavaLVLM(config)
  _, aux = module.apply({"params": params}, input_ids, pixel_values, attention_mask, output_hidden_states=True,
                        output_last_attention=True, segment_masks={"span": span_mask})
  last = last_position(aux["hidden_states"], attention_mask)  # [L+1, B, D]
  logits = jnp.moveaxis(lens_logits(config.llm, params["llm"], last), 0, 1)  # [B, L+1, V]
  out = {}
  for k in top_ks:
    layers = safety_layers(logits, refusal_ids, top_k=k)
    out[f"activation/top{k}"] = layers["activation"]
  out["end"] = layers["end"]
  out["refusal_prob"] = layers["refusal_prob"].T
  out["span_means"] = aux["segment_means"]["span"]
  out["attention"] = span_attention(aux["last_attention"], span_mask)
  out["last_states"] = last
  return out


def probe_accuracies(states: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> list[float]:
  """float[L+1, N, D] last-position states, int[N] labels (1 = toxic) -> per-layer accuracy of a
  logistic-regression probe, cross-validated over `folds` stratified folds (each layer on its own,
  features standardised within the training folds)."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.model_selection import StratifiedKFold, cross_val_score
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler
  labels = np.asarray(labels).astype(int)
  folds = min(folds, int(np.bincount(labels).min()))
  if folds < 2:
    raise ValueError(f"the probe needs >= 2 samples of each class; got counts {np.bincount(labels).tolist()}")
  splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
  accuracies = []
  for layer in np.asarray(states, np.float32):
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    accuracies.append(float(cross_val_score(probe, layer, labels, cv=splitter).mean()))
  return accuracies


def first_layer_at(accuracies, threshold: float) -> int:
  """The first layer whose probe accuracy reaches threshold; -1 if none does."""
  return next((l for l, a in enumerate(accuracies) if a >= threshold), -1)


def summarise(image: dict, text: dict, top_ks=(1, 5)) -> dict:
  """Dataset-level numbers from the per-sample stats of both runs (host numpy, N samples).

  image / text: forward_stats outputs concatenated over batches on the sample axis.
  Returns JSON-ready lists: 'cosine' [L+1] (mean over samples of cos(I_l, C_l)), 'attention'
  {run: [L]} and 'refusal_prob' {run: [L+1]} (means over samples), 'activation_layer' {run: {top<k>:
  {mean, per_sample}}}, 'end_layer' {run: {mean (over the samples that have one; None if none), found
  (how many have one), per_sample (-1: none)}}.
  """
  cos = np.asarray(span_cosines(image["span_means"], text["span_means"]))  # [L+1, N]
  out = {"num_samples": int(cos.shape[1]), "num_layers": int(cos.shape[0] - 1),
         "cosine": cos.mean(axis=1).tolist(), "attention": {}, "refusal_prob": {}, "activation_layer": {},
         "end_layer": {}}
  for run, stats in (("text", text), ("image", image)):
    # Averaged over samples (the reference keeps only the last sample's attention).
    out["attention"][run] = np.asarray(stats["attention"]).mean(axis=1).tolist()
    out["refusal_prob"][run] = np.asarray(stats["refusal_prob"]).mean(axis=1).tolist()
    out["activation_layer"][run] = {
        f"top{k}": _mean_and_list(stats[f"activation/top{k}"]) for k in top_ks}
    ends = np.asarray(stats["end"]).astype(int)
    found = ends[ends >= 0]
    # -1 means "no layer ever ranks a refusal id first"; averaging it in would read as a layer.
    out["end_layer"][run] = {"mean": float(found.mean()) if found.size else None, "found": int(found.size),
                             "per_sample": ends.tolist()}
  return out


def _mean_and_list(values) -> dict:
  values = np.asarray(values).astype(int)
  return {"mean": float(values.mean()) if values.size else float("nan"), "per_sample": values.tolist()}
