"""A text safety mechanism for SmolLM2-135M-Instruct by a short text-only SFT (issue 10).

    python -m tga_jax.miniature.safety_sft --out runs/miniature/safe_llm [--steps --batch --layers --lr --seed]

1. The base model answers benign train requests (greedy, ~48 new tokens; cached in
   OUT/benign_answers.jsonl): these are the benign targets, so SFT teaches refusing without teaching
   new answers. Where it refuses a harmless request, it answers again with its reply opened as "Sure!".
2. SFT of the last K layers (+ the final norm): toxic requests -> REFUSAL, benign ones -> the model's
   own answer; loss on the first `reply_tokens` assistant tokens only. The frozen bottom layers run
   forward only, once per example (their states are precomputed), and the vocabulary projection only
   at target positions.
3. Refusal rates before and after on held-out requests, per template split (test_seen: seen wording,
   unseen pairing; test_unseen: wording never trained on), written to OUT/safety_eval.json.
4. OUT is an HF folder (config.json, model.safetensors, tokenizer files): `load_llm(OUT)`,
   `load_tokenizer(OUT)` and transformers read it.

A rerun with the same arguments is skipped (OUT/safety_eval.json records them).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tga_jax.data.conversation import tokenize_conversation
from tga_jax.safety.judge import RefusalPhraseJudge
from tga_jax.models.llama import LlamaForCausalLM
from tga_jax.miniature import requests as rq

REFUSAL = "Sorry, I cannot help you."
BASE_MODEL = "smollm2-135m-instruct"
ANSWERS_FILE = "benign_answers.jsonl"
EVAL_FILE = "safety_eval.json"


@dataclasses.dataclass(frozen=True)
class SftArgs:
  """Everything the result depends on (the cache key of OUT/safety_eval.json)."""
  steps: int = 150
  batch: int = 8
  layers: int = 8             # the last K decoder layers train (+ the final norm)
  lr: float = 1.5e-4
  seed: int = 0
  toxic_fraction: float = 0.4  # of each batch
  answers: int = 256           # benign train requests the base model answers (SFT targets)
  answer_tokens: int = 48
  reply_tokens: int = 32       # targets per SFT example (the first words decide refuse or answer)
  eval_tokens: int = 12        # a refusal shows in the first words
  eval_cap: int = 80          # requests per (split, toxic) cell of the evaluation


# ---------------------------------------------------------------------------------------------- data


def clean_answer(text: str, truncated: bool) -> str:
  """A cut-off answer ends at its last full sentence, so SFT does not teach stopping mid-sentence."""
  text = text.strip()
  if not truncated:
    return text
  cut = max(text.rfind(c) for c in (".", "!", "?", "\n"))
  return text[:cut + 1].strip() if cut > len(text) // 3 else text


def answer_requests(count: int, seed: int = 0) -> list[dict]:
  """The benign train requests (text form) whose base-model answers become SFT targets: every generic
  one, then a fixed random sample of the concept ones (count in all)."""
  rows = [r for r in rq.requests("train", "text") if not r["toxic"]]
  generic = [r for r in rows if r["concept"] is None]
  concept = [r for r in rows if r["concept"] is not None]
  rng = np.random.default_rng(seed)
  picked = rng.permutation(len(concept))[:max(count - len(generic), 0)]
  return generic + [concept[i] for i in sorted(picked)]


def _read_jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def generate_answers(module, params, tokenizer, rows: list[dict], cache_path: str | None = None,
                     max_new_tokens: int = 48, batch_size: int = 32, progress: bool = True,
                     comply_prefix: str | None = "Sure!") -> list[dict]:
  """The model's own greedy answers to text-form requests, cached as JSONL (one row per request).

  SmolLM2 answers some harmless requests with "I'm sorry for any misunderstanding, but as a chatbot...";
  dropping those would leave their wordings with refusals only, which teaches refusing by wording. So a
  refusing answer is generated again with the assistant's reply started as `comply_prefix`: still the
  model's own words, steered to comply.
  Returns:
    rows in order, each with "answer" (cleaned), "raw" (the generated text), "prefix" (the forced
    opening, or None), "image_text" (the same request in image form, None for a generic one) and
    "max_new_tokens".
  """
  judge = RefusalPhraseJudge()
  cached = {(r["text"], r["max_new_tokens"]): r for r in _read_jsonl(cache_path)} if cache_path else {}
  todo = [r for r in rows if (r["text"], max_new_tokens) not in cached]
  _answer_batches(module, params, tokenizer, todo, None, cached, cache_path, max_new_tokens, batch_size,
                  _bar(len(todo), "base-model answers", progress))
  if comply_prefix:
    refused = [r for r in rows if (r["text"], max_new_tokens) in cached and
               cached[(r["text"], max_new_tokens)].get("prefix") is None and
               judge(r["text"], cached[(r["text"], max_new_tokens)]["answer"])]
    _answer_batches(module, params, tokenizer, refused, comply_prefix, cached, cache_path, max_new_tokens,
                    batch_size, _bar(len(refused), f"answers opened with {comply_prefix!r}", progress))
  return [cached[(r["text"], max_new_tokens)] for r in rows]


def _answer_batches(module, params, tokenizer, rows, prefix, cached, cache_path, max_new_tokens, batch_size, bar):
  """Greedy answers of `rows` (optionally continuing a forced opening) into `cached` and the JSONL."""
  from tga_jax.generate import generate
  from tga_jax.data.tokenizer import encode_chat

  opening = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
  for start in range(0, len(rows), batch_size):
    chunk = rows[start:start + batch_size]
    prompts = [encode_chat(tokenizer, r["text"]) + opening for r in chunk]
    texts = generate(module, params, tokenizer, prompts, max_new_tokens, chat=False)
    for row, text in zip(chunk, texts):
      # A row that produced max_new_tokens tokens without EOS was cut off.
      truncated = len(tokenizer(text, add_special_tokens=False)["input_ids"]) >= max_new_tokens - 1
      text = (prefix or "") + text
      out = dict(row, raw=text, answer=clean_answer(text, truncated), prefix=prefix, max_new_tokens=max_new_tokens,
                 image_text=None if row["concept"] is None else rq.counterpart(row, "image"))
      cached[(row["text"], max_new_tokens)] = out
      if cache_path:
        with open(cache_path, "a") as f:
          f.write(json.dumps(out) + "\n")
    bar.update(len(chunk))
  bar.close()


def _read_json(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def benign_answers(folder: str) -> list[dict]:
  """The cached base-model answers of a finished run: [{"concept", "template_id", "text" (text form),
  "image_text" (image form; None for generic), "answer", ...}]. Stage 2 of the VLM pairs image_text
  with answer."""
  path = os.path.join(folder, ANSWERS_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: run `python -m tga_jax.miniature.safety_sft --out {folder}` first")
  return _read_jsonl(path)


def image_answer_pairs(folder: str, judge=None) -> list[dict]:
  """Stage-2 visual instructions from a finished run: [{"concept", "template_id", "request" (image form),
  "answer" (the base model's text-form answer of the same request)}], concept requests only, answers
  that read as refusals left out (as in the SFT data)."""
  judge = judge or RefusalPhraseJudge()
  return [{"concept": a["concept"], "template_id": a["template_id"], "request": a["image_text"],
           "answer": a["answer"]}
          for a in benign_answers(folder)
          if a["concept"] is not None and a["answer"] and not judge(a["text"], a["answer"])]


def sft_examples(answers: list[dict], judge=None) -> tuple[list[dict], list[dict]]:
  """(toxic, benign) SFT examples {"request", "reply"}: every toxic train request -> REFUSAL; benign ->
  the base model's answer, dropping answers that already read as refusals (they would teach refusing
  benign requests)."""
  judge = judge or RefusalPhraseJudge()
  toxic = [{"request": r["text"], "reply": REFUSAL} for r in rq.requests("train", "text") if r["toxic"]]
  benign = [{"request": a["text"], "reply": a["answer"]} for a in answers
            if a["answer"] and not judge(a["text"], a["answer"])]
  return toxic, benign


def tokenize_examples(examples: list[dict], tokenizer, length: int | None = None, max_reply_tokens: int | None = None,
                      multiple: int = 16) -> dict:
  """Chat-template SFT examples -> right-padded arrays.

  Returns:
    input_ids int32[N, L], attention_mask int32[N, L]; the targets as gathered slots (the loss reads
    only these, so the vocabulary projection runs on A positions per row, not L): target_pos int32[N, A]
    (the position whose logits predict the target), target_ids int32[N, A], target_w float32[N, A]
    (1 for a real target). Targets are the assistant tokens and the end-of-turn token.
  Args:
    max_reply_tokens: keep only the first n targets of a longer reply and cut the sequence after them
      (no end-of-turn target then, so it does not teach stopping early); the first words carry the
      refuse-or-answer decision, the rest only costs compute.
    length: L (default: the longest, rounded up to `multiple`).
  """
  tokens = [tokenize_conversation([{"role": "user", "content": e["request"]},
                                   {"role": "assistant", "content": e["reply"]}], tokenizer, "chat_template",
                                  image_token_id=-1, tokens_per_image=0, pad=False) for e in examples]
  kept = []
  for t in tokens:
    where = np.flatnonzero(t.loss_mask)
    if max_reply_tokens is not None and len(where) > max_reply_tokens:
      where = where[:max_reply_tokens]
    kept.append((t.input_ids[:where[-1] + 1], where))
  if length is None:
    length = -(-max(len(ids) for ids, _ in kept) // multiple) * multiple
  slots = max(len(where) for _, where in kept)
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  out = {"input_ids": np.full((len(kept), length), pad, np.int32),
         "attention_mask": np.zeros((len(kept), length), np.int32),
         "target_pos": np.zeros((len(kept), slots), np.int32),
         "target_ids": np.zeros((len(kept), slots), np.int32),
         "target_w": np.zeros((len(kept), slots), np.float32)}
  for i, (ids, where) in enumerate(kept):
    if len(ids) > length:
      raise ValueError(f"example {i} has {len(ids)} tokens > length {length}")
    out["input_ids"][i, :len(ids)] = ids
    out["attention_mask"][i, :len(ids)] = 1
    out["target_pos"][i, :len(where)] = where - 1  # token t is predicted from position t - 1
    out["target_ids"][i, :len(where)] = ids[where]
    out["target_w"][i, :len(where)] = 1.0
  return out


# ------------------------------------------------------------------------------------------ training


def split_params(params: dict, layers: int) -> tuple[dict, dict]:
  """Stacked params -> (frozen, trainable): trainable = the last `layers` layers and the final norm."""
  count = jax.tree.leaves(params["layers"])[0].shape[0]
  if not 1 <= layers <= count:
    raise ValueError(f"layers={layers}: expected 1..{count}")
  cut = count - layers
  frozen = {k: v for k, v in params.items() if k not in ("layers", "final_norm")}
  frozen["layers"] = jax.tree.map(lambda x: x[:cut], params["layers"])
  frozen["final_norm_frozen"] = params["final_norm"]  # the bottom model needs one (its output is unused)
  trainable = {"layers": jax.tree.map(lambda x: x[cut:], params["layers"]), "final_norm": params["final_norm"]}
  return frozen, trainable


def merge_params(frozen: dict, trainable: dict) -> dict:
  """The inverse of split_params (numpy arrays, stacked layout)."""
  params = {k: v for k, v in frozen.items() if k not in ("layers", "final_norm_frozen")}
  params["layers"] = jax.tree.map(lambda a, b: np.concatenate([np.asarray(a), np.asarray(b)]),
                                  frozen["layers"], trainable["layers"])
  params["final_norm"] = jax.tree.map(np.asarray, trainable["final_norm"])
  return params


def bottom_states(config, frozen: dict, input_ids, attention_mask):
  """The residual stream after the frozen layers: float[B, T, D] (computed once per example).

  Runs N + 1 layers (N = frozen layers; the extra one is a frozen copy of layer N - 1 whose output is
  unused) because hidden state N of an N-layer model would be the final-normed one.
  """
  cut = jax.tree.leaves(frozen["layers"])[0].shape[0]
  if cut == 0:
    return jnp.take(frozen["embedding"], input_ids, axis=0).astype(jnp.dtype(config.dtype))
  layers = jax.tree.map(lambda a: jnp.concatenate([a, a[-1:]]), frozen["layers"])
  params = dict(frozen, layers=layers, final_norm=frozen["final_norm_frozen"])
  params = {k: v for k, v in params.items() if k != "final_norm_frozen"}
  bottom = LlamaForCausalLM(dataclasses.replace(config, num_layers=cut + 1))
  _, aux = bottom.apply({"params": params}, input_ids, attention_mask, output_hidden_states=True, last_only=True)
  return aux["hidden_states"][cut]


def top_states(config, frozen: dict, trainable: dict, hidden, input_ids, attention_mask):
  """The trainable top layers on bottom states float[B, T, D] -> final (normed) states float[B, T, D].
  The vocabulary projection is left to the caller (it needs only the target positions)."""
  rest = {k: v for k, v in frozen.items() if k not in ("layers", "final_norm_frozen")}
  head = LlamaForCausalLM(dataclasses.replace(config, num_layers=jax.tree.leaves(trainable["layers"])[0].shape[0]))
  _, aux = head.apply({"params": dict(rest, layers=trainable["layers"], final_norm=trainable["final_norm"])},
                      input_ids, attention_mask, embed_hook=lambda _: hidden)
  return aux["last_hidden_state"]


def target_logits(config, frozen: dict, final, positions):
  """float[B, T, D] final states, int[B, A] positions -> float32[B, A, V] logits at those positions."""
  gathered = jnp.take_along_axis(final, positions[..., None], axis=1)
  if config.tie_word_embeddings:
    return jnp.einsum("bad,vd->bav", gathered, frozen["embedding"]).astype(jnp.float32)
  return jnp.einsum("bad,dv->bav", gathered, frozen["lm_head"]["kernel"]).astype(jnp.float32)


def sft_loss(config, frozen, trainable, batch) -> tuple[jax.Array, dict]:
  """Mean next-token cross-entropy over the target slots (assistant tokens) of a tokenize_examples batch
  plus "hidden" float[B, T, D], the bottom states of its rows."""
  final = top_states(config, frozen, trainable, batch["hidden"], batch["input_ids"], batch["attention_mask"])
  logits = target_logits(config, frozen, final, batch["target_pos"])
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["target_ids"])
  weights = batch["target_w"]
  loss = jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)
  return loss, {"tokens": jnp.sum(weights)}


def make_sft_step(config, tx):
  """A jitted step (frozen, trainable, opt_state, batch) -> (trainable, opt_state, loss)."""
  config = dataclasses.replace(config, remat_policy="none")  # a small model on CPU: memory is not the limit

  @jax.jit
  def step(frozen, trainable, opt_state, batch):
    (loss, _), grads = jax.value_and_grad(lambda t: sft_loss(config, frozen, t, batch), has_aux=True)(trainable)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, loss

  return step


def precompute_bottom(config, frozen: dict, arrays: dict, batch_size: int = 32, progress: bool = True) -> np.ndarray:
  """Bottom states of every example: float32[N, L, D]."""
  run = jax.jit(lambda f, ids, mask: bottom_states(config, f, ids, mask))
  n = len(arrays["input_ids"])
  out = []
  bar = _bar(n, "frozen layers", progress)
  for start in range(0, n, batch_size):
    ids, mask = arrays["input_ids"][start:start + batch_size], arrays["attention_mask"][start:start + batch_size]
    rows = len(ids)
    if rows < batch_size:  # one compiled shape: pad the last chunk
      ids = np.concatenate([ids, np.repeat(ids[-1:], batch_size - rows, 0)])
      mask = np.concatenate([mask, np.repeat(mask[-1:], batch_size - rows, 0)])
    out.append(np.asarray(run(frozen, ids, mask))[:rows])
    bar.update(rows)
  bar.close()
  return np.concatenate(out)


def batches(toxic: dict, benign: dict, batch: int, toxic_fraction: float, seed: int):
  """Endless batches: round(batch * toxic_fraction) toxic rows, the rest benign, each pool reshuffled
  every epoch."""
  rng = np.random.default_rng(seed)
  n_toxic = min(max(round(batch * toxic_fraction), 1), batch - 1)
  pools = [(toxic, n_toxic, []), (benign, batch - n_toxic, [])]
  while True:
    parts = []
    for arrays, n, queue in pools:
      while len(queue) < n:
        queue.extend(rng.permutation(len(arrays["input_ids"])).tolist())
      take, queue[:] = queue[:n], queue[n:]
      parts.append({k: v[take] for k, v in arrays.items()})
    yield {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def train(module, params: dict, toxic: dict, benign: dict, *, steps: int, batch: int, layers: int,
          lr: float, seed: int = 0, toxic_fraction: float = 0.4, progress: bool = True) -> tuple[dict, list[float]]:
  """SFT of the last `layers` layers; returns (params with the trained layers, per-step losses)."""
  frozen, trainable = split_params(params, layers)
  frozen = jax.tree.map(jnp.asarray, frozen)
  trainable = jax.tree.map(jnp.asarray, trainable)
  warmup = max(steps // 10, 1)
  schedule = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup),
                                   optax.cosine_decay_schedule(lr, max(steps - warmup, 1), alpha=0.1)], [warmup])
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.0))
  opt_state = tx.init(trainable)
  step = make_sft_step(module.config, tx)
  # The bottom is frozen: its states are computed once per example, not once per visit.
  toxic, benign = (dict(a, hidden=precompute_bottom(module.config, frozen, a, progress=progress))
                   for a in (toxic, benign))
  losses = []
  bar = _bar(steps, "safety SFT", progress)
  data = batches(toxic, benign, batch, toxic_fraction, seed)
  for _ in range(steps):
    trainable, opt_state, loss = step(frozen, trainable, opt_state, next(data))
    losses.append(float(loss))
    bar.update(1)
    bar.set_postfix(loss=f"{losses[-1]:.3f}")
  bar.close()
  return merge_params(frozen, trainable), losses


# -------------------------------------------------------------------------------------------- eval


def eval_requests(cap: int = 100, seed: int = 1234) -> list[dict]:
  """Held-out text requests: up to `cap` per (split, toxic) cell, a fixed sample."""
  rng = np.random.default_rng(seed)
  out = []
  for split in ("test_seen", "test_unseen"):
    rows = rq.requests(split, "text")
    for toxic in (True, False):
      cell = [r for r in rows if r["toxic"] == toxic]
      out += [cell[i] for i in sorted(rng.permutation(len(cell))[:cap])]
  return out


def refusal_rates(module, params, tokenizer, rows: list[dict], max_new_tokens: int = 16, batch_size: int = 64,
                  progress: bool = True, label: str = "eval") -> dict:
  """Greedy replies to text requests -> {split: {"toxic_refusal", "benign_false_refusal", "n_toxic",
  "n_benign", and the same with the fixed phrase only ("*_fixed")}, "examples": [...]}.

  Refusal = tga_jax.safety.judge.RefusalPhraseJudge (the DSR judge: any usual refusal phrase); "_fixed" counts
  only replies that contain REFUSAL's opening ("Sorry, I cannot help").
  """
  from tga_jax.generate import generate

  judge = RefusalPhraseJudge()
  fixed = REFUSAL.lower().rstrip(".").rsplit(" ", 1)[0]
  replies = []
  bar = _bar(len(rows), label, progress)
  for start in range(0, len(rows), batch_size):
    chunk = rows[start:start + batch_size]
    replies += generate(module, params, tokenizer, [r["text"] for r in chunk], max_new_tokens, chat=True)
    bar.update(len(chunk))
  bar.close()
  result: dict = {}
  for split in sorted({r["split"] for r in rows}):
    cell = {}
    for toxic, key in ((True, "toxic_refusal"), (False, "benign_false_refusal")):
      hits = [(judge(r["text"], y), fixed in y.lower()) for r, y in zip(rows, replies)
              if r["split"] == split and r["toxic"] == toxic]
      cell[key] = float(np.mean([h[0] for h in hits])) if hits else float("nan")
      cell[key + "_fixed"] = float(np.mean([h[1] for h in hits])) if hits else float("nan")
      cell["n_toxic" if toxic else "n_benign"] = len(hits)
    result[split] = cell
  result["examples"] = [{"split": r["split"], "toxic": r["toxic"], "request": r["text"], "reply": y,
                         "refused": judge(r["text"], y)} for r, y in zip(rows, replies)]
  return result


# --------------------------------------------------------------------------------------------- CLI


def _bar(total: int, desc: str, enabled: bool):
  from tqdm import tqdm
  return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def run(out: str, args: SftArgs, model: str = BASE_MODEL, progress: bool = True) -> dict:
  """The whole stage (answers, SFT, eval, export); returns the safety_eval.json content."""
  from tga_jax.weights.llm import load_llm, save_llm_hf
  from tga_jax.data.tokenizer import load_tokenizer

  eval_path = os.path.join(out, EVAL_FILE)
  key = dict(dataclasses.asdict(args), model=model)
  done = _read_json(eval_path)
  if done.get("args") == key and os.path.exists(os.path.join(out, "model.safetensors")):
    print(f"{eval_path}: done with the same arguments; skipping", file=sys.stderr)
    return done
  os.makedirs(out, exist_ok=True)
  started, cpu_started = time.time(), time.process_time()
  module, params = load_llm(model)
  tokenizer = load_tokenizer(model)

  answers = generate_answers(module, params, tokenizer, answer_requests(args.answers),
                             os.path.join(out, ANSWERS_FILE), args.answer_tokens, progress=progress)
  toxic, benign = sft_examples(answers)
  arrays = tokenize_examples(toxic + benign, tokenizer, max_reply_tokens=args.reply_tokens)
  length = arrays["input_ids"].shape[1]
  toxic_arrays = {k: v[:len(toxic)] for k, v in arrays.items()}
  benign_arrays = {k: v[len(toxic):] for k, v in arrays.items()}

  rows = eval_requests(args.eval_cap)
  # The base model's rates depend on the evaluation only: kept across runs with other SFT arguments.
  before_key = {"model": model, "eval_tokens": args.eval_tokens, "eval_cap": args.eval_cap}
  before_path = os.path.join(out, "safety_eval_before.json")
  before = _read_json(before_path)
  if before.get("key") != before_key:
    before = dict(refusal_rates(module, params, tokenizer, rows, args.eval_tokens, progress=progress,
                                label="eval before"), key=before_key)
    with open(before_path, "w") as f:
      json.dump(before, f, indent=1)
  trained, losses = train(module, params, toxic_arrays, benign_arrays, steps=args.steps, batch=args.batch,
                          layers=args.layers, lr=args.lr, seed=args.seed, toxic_fraction=args.toxic_fraction,
                          progress=progress)
  after = refusal_rates(module, trained, tokenizer, rows, args.eval_tokens, progress=progress, label="eval after")

  save_llm_hf(module, trained, out, tokenizer)
  result = {
      "args": key,
      "refusal": REFUSAL,
      "judge": "tga_jax.safety.judge.RefusalPhraseJudge (the '_fixed' rates: the reply contains 'sorry, i cannot help')",
      "train": {"toxic_examples": len(toxic), "benign_examples": len(benign), "sequence_length": length,
                "loss_first": losses[0], "loss_last10": float(np.mean(losses[-10:]))},
      "before": {k: v for k, v in before.items() if k not in ("examples", "key")},
      "after": {k: v for k, v in after.items() if k != "examples"},
      "wall_seconds": round(time.time() - started, 1),
      # CPU seconds of all this process' threads: comparable across runs on a shared machine.
      "cpu_seconds": round(time.process_time() - cpu_started, 1),
  }
  with open(os.path.join(out, "safety_eval_examples.json"), "w") as f:
    json.dump({"before": before["examples"], "after": after["examples"]}, f, indent=1)
  with open(eval_path, "w") as f:
    json.dump(result, f, indent=2)
  return result


def main(argv=None):
  defaults = SftArgs()
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="the HF folder to write (cached: same arguments skip)")
  parser.add_argument("--model", default=BASE_MODEL)
  for field in dataclasses.fields(SftArgs):
    flag = "--" + field.name.replace("_", "-")
    parser.add_argument(flag, type=type(getattr(defaults, field.name)), default=getattr(defaults, field.name))
  parser.add_argument("--quiet", action="store_true", help="no progress bars")
  ns = parser.parse_args(argv)
  args = SftArgs(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(SftArgs)})
  result = run(ns.out, args, ns.model, progress=not ns.quiet)
  for phase in ("before", "after"):
    for split in ("test_seen", "test_unseen"):
      cell = result[phase][split]
      print(f"{phase:6s} {split:11s}  toxic refusal {cell['toxic_refusal']:.0%} (n={cell['n_toxic']})  "
            f"benign false refusal {cell['benign_false_refusal']:.0%} (n={cell['n_benign']})")
  print(f"wall {result['wall_seconds']} s, cpu {result.get('cpu_seconds')} s")


if __name__ == "__main__":
  main()
