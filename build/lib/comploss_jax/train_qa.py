"""Comparative-loss training for extractive QA: SQuAD v1.1 (drop) and HotpotQA distractor (drop/crop).

    python -m comploss_jax.train_qa --config=configs/comploss/squad.py --config.data.source_dir=squad_json
    python -m comploss_jax.train_qa --config=configs/comploss/hotpot.py:c_drop=1,c_crop=1 --workdir=runs/hp

SQuAD: sliding windows (max_length, stride), start/end cross-entropies compared separately by the
comparative loss, n-best span decoding, EM/F1 as the official script computes them.
HotpotQA: question + 10 paragraphs; CmpCrop views keep every supporting paragraph and a nested,
shrinking subset of distractors; yes/no answers are spans over a "yes no" prefix. Crops are drawn
once per example with the run's seed. Answer EM/F1/precision/recall as hotpot_evaluate_v1.py
(the model predicts no supporting facts, so no sp/joint scores).

Both score only the public dev split, which also selects the best epoch: results.json reports it
as "dev" (with "selected_on") and has no "test".
"""
from __future__ import annotations


import jax
import numpy as np

from comploss_jax import datasets
from comploss_jax.encoder_params import load_encoder, resolve_model_dir
from comploss_jax.features import _text
from comploss_jax.heads import SpanExtractor, span_losses
from comploss_jax.metrics import hotpot_scores, squad_scores
from comploss_jax.qa_features import best_spans, hotpot_views, squad_windows
from comploss_jax.train import fit, predict_in_batches, records_of

SPLITS = ("train", "validation")


def load_qa_splits(config) -> dict:
  kwargs = dict(data_dir=config.data.tfds_dir or None, file_format=datasets.FILE_FORMAT)
  if config.task == "squad":
    if config.data.source_dir:
      builder = datasets.SquadFromFiles(source_dir=config.data.source_dir, config="v1.1", **kwargs)
    else:
      import tensorflow_datasets as tfds
      builder = tfds.builder("squad/v1.1", **kwargs)
  elif config.task == "hotpot":
    builder = datasets.HotpotQaDistractor(source_dir=config.data.source_dir, **kwargs)
  else:
    raise ValueError(f"task={config.task!r}: train_qa handles 'squad' and 'hotpot'")
  return datasets.prepared(builder)


def train(config, workdir: str) -> dict:
  from transformers import AutoTokenizer
  tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(config.model))
  encoder, encoder_params = load_encoder(config.model)
  model = SpanExtractor(encoder.config)
  splits = load_qa_splits(config)
  train_records = records_of(splits["train"])[: config.data.train_size or None]
  dev_records = records_of(splits["validation"])[: config.data.eval_size or None]

  if config.task == "squad":
    train_arrays = squad_windows(tokenizer, train_records, config.data.max_length, config.data.stride)
    keys = ("input_ids", "attention_mask", "token_type_ids", "start", "end")
    examples = [{k: train_arrays[k][i] for k in keys} for i in range(len(train_arrays["start"]))]
    dev = squad_windows(tokenizer, dev_records, config.data.max_length, config.data.stride)
    dev["contexts"] = [_text(r["context"]) for r in dev_records]
    dev["golds"] = {_text(r["id"]): [_text(a) for a in r["answers"]["text"]] for r in dev_records}
    dev["ids"] = [_text(r["id"]) for r in dev_records]
  else:
    rng = np.random.default_rng(config.seed)
    views = [hotpot_views(tokenizer, r, config.cmp.n_crop, config.data.max_length, rng) for r in train_records]
    examples = [{"views": {k: v[k] for k in ("input_ids", "attention_mask", "token_type_ids", "start", "end")}}
                for v in views]
    full = [hotpot_views(tokenizer, r, 0, config.data.max_length, rng) for r in dev_records]
    dev = {k: np.stack([v[k][0] for v in full]) for k in ("input_ids", "attention_mask", "token_type_ids")}
    dev["offsets"] = np.stack([_offsets(tokenizer, r, config.data.max_length) for r in dev_records])
    dev["example_index"] = np.arange(len(dev_records), dtype=np.int32)
    dev["contexts"] = [_hotpot_context(r) for r in dev_records]
    dev["golds"] = {_text(r["id"]): _text(r["answer"]) for r in dev_records}
    dev["ids"] = [_text(r["id"]) for r in dev_records]

  def per_example(params, inputs, rng, power):
    (start, end), _ = model.apply({"params": params}, inputs["input_ids"], inputs["attention_mask"],
                                  inputs["token_type_ids"], deterministic=False, dropout_power=power,
                                  rngs={"dropout": rng})
    return span_losses(start, end, inputs["start"], inputs["end"])

  predict = jax.jit(lambda p, x: model.apply({"params": p}, x["input_ids"], x["attention_mask"],
                                             x["token_type_ids"])[0])

  def evaluate(params, arrays) -> dict:
    """Scores as fractions: SQuAD's official percentages / 100; HotpotQA's official fractions."""
    start, end = predict_in_batches(predict, params, arrays, config.eval_batch_size)
    answers = best_spans(start, end, arrays, arrays["contexts"], config.data.n_best, config.data.max_answer_tokens)
    predictions = dict(zip(arrays["ids"], answers))
    if config.task == "hotpot":
      return hotpot_scores(predictions, arrays["golds"])
    return {k: v / 100.0 for k, v in squad_scores(predictions, arrays["golds"]).items()}

  # No held-out test: the dev split both selects the epoch and is what results.json reports.
  return fit(config, workdir, model, encoder_params, per_example, examples, dev, None, evaluate, "f1",
             {"task": config.task, "train_size": len(train_records)})


def _hotpot_context(record) -> str:
  """The full (all-paragraph) context string hotpot_views builds for view 0."""
  from comploss_jax.qa_features import YES_NO_PREFIX
  parts = [f"{_text(t)}: {_text(p)} " for t, p in zip(record["titles"], record["paragraphs"])]
  return YES_NO_PREFIX + "".join(parts)


def _offsets(tokenizer, record, max_length: int) -> np.ndarray:
  enc = tokenizer(_text(record["question"]), _hotpot_context(record), truncation="only_second",
                  max_length=max_length, return_offsets_mapping=True, padding="max_length")
  return np.asarray([list(o) if s == 1 else [-1, -1] for o, s in zip(enc["offset_mapping"], enc.sequence_ids())],
                    np.int32)


if __name__ == "__main__":
  from trainkit import cli
  cli.run(train, "configs/comploss/squad.py:c=2")
