"""Comparative-loss training for extractive QA: SQuAD v1.1 (drop) and HotpotQA distractor (drop/crop).

    python -m comploss_jax.train_qa --config=configs/comploss/squad.py --config.data.source_dir=squad_json
    python -m comploss_jax.train_qa --config=configs/comploss/hotpot.py:c_drop=1,c_crop=1 --workdir=runs/hp

SQuAD: sliding windows (max_length, stride), start/end cross-entropies compared separately by the
comparative loss, n-best span decoding, EM/F1 as the official script computes them.
HotpotQA (hotpot.py): question + 10 paragraphs, each cut to data.paragraph_tokens (the answer's
paragraph keeps the answer); CmpCrop views keep every supporting paragraph and a nested, shrinking
subset of distractors; yes/no answers are spans over a "yes no" prefix. The paragraph order and the
crops are redrawn on every pass over the data from (seed, epoch, example index), inside the input
pipeline. A view whose answer is not in its input has no target and is left out of the ranking
(submodels.py). Answer EM/F1/precision/recall as hotpot_evaluate_v1.py (the model predicts no
supporting facts, so no sp/joint scores).

Both score only the public dev split, which also selects the best epoch: results.json reports it
as "dev" (with "selected_on") and has no "test".
"""
from __future__ import annotations


import jax

from comploss_jax import datasets
from comploss_jax.encoder_params import load_encoder, resolve_model_dir
from comploss_jax.features import _text
from comploss_jax.heads import SpanExtractor, span_losses, span_targets_valid
from comploss_jax.hotpot import HotpotTrainViews, hotpot_eval_arrays, pair_template, prepare_hotpot
from comploss_jax.metrics import hotpot_scores, squad_scores
from comploss_jax.qa_features import best_spans, squad_windows
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


def span_per_example(model: SpanExtractor, with_validity: bool):
  """(params, inputs, rng, dropout power) -> per-example start/end losses float[B, 2] (dropout on, nested
  to `power`), and with `with_validity` (HotpotQA: a cropped view may lack its answer) also bool[B], whether
  the answer is in the input, for the chain to leave the others out of the ranking."""
  def per_example(params, inputs, rng, power):
    (start, end), _ = model.apply({"params": params}, inputs["input_ids"], inputs["attention_mask"],
                                  inputs["token_type_ids"], deterministic=False, dropout_power=power,
                                  rngs={"dropout": rng})
    losses = span_losses(start, end, inputs["start"], inputs["end"])
    return (losses, span_targets_valid(inputs["start"], inputs["end"])) if with_validity else losses
  return per_example


def train(config, workdir: str) -> dict:
  from transformers import AutoTokenizer
  tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(config.model))
  encoder, encoder_params = load_encoder(config.model)
  model = SpanExtractor(encoder.config)
  splits = load_qa_splits(config)
  train_records = records_of(splits["train"])[: config.data.train_size or None]
  dev_records = records_of(splits["validation"])[: config.data.eval_size or None]

  make_data = None
  if config.task == "squad":
    train_arrays = squad_windows(tokenizer, train_records, config.data.max_length, config.data.stride)
    keys = ("input_ids", "attention_mask", "token_type_ids", "start", "end")
    examples = [{k: train_arrays[k][i] for k in keys} for i in range(len(train_arrays["start"]))]
    dev = squad_windows(tokenizer, dev_records, config.data.max_length, config.data.stride)
    dev["contexts"] = [_text(r["context"]) for r in dev_records]
    dev["golds"] = {_text(r["id"]): [_text(a) for a in r["answers"]["text"]] for r in dev_records}
    dev["ids"] = [_text(r["id"]) for r in dev_records]
  else:
    template = pair_template(tokenizer)
    caps = dict(paragraph_tokens=config.data.paragraph_tokens, question_tokens=config.data.question_tokens)
    examples = HotpotTrainViews([prepare_hotpot(tokenizer, r, i, **caps) for i, r in enumerate(train_records)],
                                template, config.cmp.n_crop, config.data.max_length, config.seed)
    make_data = examples.iterator  # views redrawn per epoch inside the pipeline
    dev = hotpot_eval_arrays([prepare_hotpot(tokenizer, r, i, **caps, with_offsets=True)
                              for i, r in enumerate(dev_records)], template, config.data.max_length)
    dev["golds"] = {_text(r["id"]): _text(r["answer"]) for r in dev_records}
    dev["ids"] = [_text(r["id"]) for r in dev_records]

  per_example = span_per_example(model, with_validity=config.task == "hotpot")
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
             {"task": config.task, "train_size": len(train_records)}, make_data=make_data)


if __name__ == "__main__":
  from trainkit import cli
  cli.run(train, "configs/comploss/squad.py:c=2")
