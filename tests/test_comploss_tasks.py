"""Task data: builders on hand-written files in the real formats, QA windows and crop views, and a
tiny end-to-end training run per task family (classification, SQuAD, HotpotQA) with MiniLM-L6."""
import json
import os

import numpy as np
import pytest
from transformers import AutoTokenizer

from comploss_jax import datasets
from comploss_jax.encoder_params import resolve_model_dir
from comploss_jax.features import stratified_subset
from comploss_jax.metrics import normalize_answer
from comploss_jax.hotpot import hotpot_views, pair_template, prepare_hotpot, view_rng
from comploss_jax.qa_features import best_spans, crop_keep_counts, squad_windows
from configs.comploss import bbc, glue, hotpot, squad

DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.fixture(scope="module")
def tokenizer():
  return AutoTokenizer.from_pretrained(resolve_model_dir("all-minilm-l6-v2"))


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def sources(builder):
  return datasets.prepared(builder)


def test_bbc_split_is_stratified_deterministic_and_sorted(tfds_dir):
  src = sources(datasets.BbcNews(data_dir=tfds_dir, file_format=datasets.FILE_FORMAT))
  assert {k: len(v) for k, v in src.items()} == {"train": 1558, "dev": 223, "test": 444}
  names = datasets.BbcNews(data_dir=tfds_dir, file_format=datasets.FILE_FORMAT).info.features["label"].names
  assert names == sorted(names) == ["business", "entertainment", "politics", "sports", "tech"]
  train_ids = {src["train"][i]["id"] for i in range(len(src["train"]))}
  test_ids = {src["test"][i]["id"] for i in range(len(src["test"]))}
  assert not train_ids & test_ids
  test_labels = np.bincount([src["test"][i]["label"] for i in range(len(src["test"]))])
  assert test_labels.min() >= 0.8 * test_labels.max() * 0.5  # every class present in proportion
  labels = np.asarray([src["train"][i]["label"] for i in range(len(src["train"]))])
  subset = stratified_subset(labels, 64, seed=0)
  assert len(subset) == 64 and np.array_equal(subset, stratified_subset(labels, 64, seed=0))
  counts = np.bincount(labels[subset], minlength=5)
  assert counts.max() - counts.min() <= 4


def test_glue_from_official_tsv_files(tfds_dir):
  rte = sources(datasets.GlueFromFiles(source_dir=os.path.join(DATA, "glue"), config="rte", data_dir=tfds_dir,
                                       file_format=datasets.FILE_FORMAT))
  assert len(rte["train"]) == 8 and len(rte["validation"]) == 4
  assert {rte["train"][i]["label"] for i in range(8)} == {0, 1}
  stsb = sources(datasets.GlueFromFiles(source_dir=os.path.join(DATA, "glue"), config="stsb", data_dir=tfds_dir,
                                        file_format=datasets.FILE_FORMAT))
  assert sorted(round(float(stsb["train"][i]["label"]), 1) for i in range(6)) == [0.0, 0.2, 0.4, 4.1, 4.6, 4.8]
  with pytest.raises(FileNotFoundError, match="no GLUE folder for task 'cola'"):
    sources(datasets.GlueFromFiles(source_dir=os.path.join(DATA, "glue"), config="cola", data_dir=tfds_dir,
                                   file_format=datasets.FILE_FORMAT))


def test_squad_windows_map_answers_to_tokens_and_back(tokenizer, tfds_dir):
  src = sources(datasets.SquadFromFiles(source_dir=os.path.join(DATA, "squad"), config="v1.1", data_dir=tfds_dir,
                                        file_format=datasets.FILE_FORMAT))
  examples = [src["train"][i] for i in range(len(src["train"]))]
  feats = squad_windows(tokenizer, examples, max_length=40, stride=16)
  assert len(feats["start"]) > len(examples)  # long contexts overflow into several windows
  found = set()
  for f in range(len(feats["start"])):
    s, e = feats["start"][f], feats["end"][f]
    if s == 0:
      continue
    example = examples[feats["example_index"][f]]
    context = example["context"].decode()
    text = context[feats["offsets"][f][s][0]:feats["offsets"][f][e][1]]
    assert normalize_answer(text) == normalize_answer(example["answers"]["text"][0].decode())
    found.add(int(feats["example_index"][f]))
  assert found == set(range(len(examples)))  # every answer lies inside at least one window
  # Decoding: logits peaked on one window's gold span recover the answer text.
  start_logits = np.full(feats["input_ids"].shape, -10.0)
  end_logits = np.full(feats["input_ids"].shape, -10.0)
  f = int(np.flatnonzero(feats["start"])[0])
  start_logits[f, feats["start"][f]] = end_logits[f, feats["end"][f]] = 10.0
  contexts = [e["context"].decode() for e in examples]
  answers = best_spans(start_logits, end_logits, feats, contexts)
  index = feats["example_index"][f]
  assert answers[index] == examples[index]["answers"]["text"][0].decode()


def test_hotpot_crop_views_keep_supporting_paragraphs_and_nest(tokenizer, tfds_dir):
  src = sources(datasets.HotpotQaDistractor(source_dir=os.path.join(DATA, "hotpot"), data_dir=tfds_dir,
                                            file_format=datasets.FILE_FORMAT))
  assert len(src["train"]) == 4  # the malformed fifth record was counted and skipped
  rng = np.random.default_rng(0)
  template = pair_template(tokenizer)
  for i in range(len(src["train"])):
    example = src["train"][i]
    prepared = prepare_hotpot(tokenizer, example, i, paragraph_tokens=64, question_tokens=64)
    views = hotpot_views(prepared, template, num_crops=3, max_length=256, rng=view_rng(0, 0, i))
    supporting = np.asarray(example["supporting"], bool)
    assert sorted(example["support_paragraph"]) == list(np.flatnonzero(supporting))  # sentence spans kept
    kept = views["kept"].astype(bool)
    assert np.array_equal(views["tokens"] > 0, kept)  # 256 tokens hold every kept paragraph here
    assert kept.shape == (4, 10) and kept[0].all()
    assert kept[:, supporting].all()  # supporting paragraphs are never cropped
    for j in range(1, 4):
      assert not np.any(kept[j] & ~kept[j - 1])  # nested
      assert kept[j].sum() < kept[j - 1].sum()
    answer = example["answer"].decode()
    for v in range(4):
      span = tokenizer.decode(views["input_ids"][v][views["start"][v]:views["end"][v] + 1])
      assert normalize_answer(span) == normalize_answer(answer)
  counts = crop_keep_counts(8, 3, np.random.default_rng(1))
  assert counts[0] == 8 and counts == sorted(counts, reverse=True) and len(set(counts)) == 4
  with pytest.raises(ValueError, match="need at least as many distractors"):
    crop_keep_counts(2, 3, rng)


def small(config, tfds_dir, **data):
  config.data.tfds_dir = tfds_dir
  config.progress_bar = False
  config.batch_size = 8  # one example per simulated device
  config.eval_batch_size = 8
  config.checkpoint.use_async = False
  for k, v in data.items():
    config.data[k] = v
  return config


@pytest.mark.slow
@pytest.mark.parametrize("name", ["glue_rte_cmp", "squad_cmp", "hotpot_drop_crop"])
def test_tiny_end_to_end_run_per_task_family(name, tmp_path, tfds_dir):
  if name == "glue_rte_cmp":
    from comploss_jax.train import train
    config = small(glue.get_config("task=rte,c=1"), tfds_dir, glue_dir=os.path.join(DATA, "glue"), max_length=32)
    config.epochs = 2
  elif name == "squad_cmp":
    from comploss_jax.train_qa import train
    config = small(squad.get_config("c=1"), tfds_dir, source_dir=os.path.join(DATA, "squad"), max_length=64,
                   stride=24)
    config.epochs = 1
  else:
    from comploss_jax.train_qa import train
    config = small(hotpot.get_config("c_drop=1,c_crop=1"), tfds_dir, source_dir=os.path.join(DATA, "hotpot"),
                   max_length=160)
    config.epochs = 1
  results = train(config, str(tmp_path))
  saved = json.load(open(tmp_path / "results.json"))
  assert saved == json.loads(json.dumps(results))
  assert results["steps"] == config.total_steps > 0
  # GLUE, SQuAD and HotpotQA have no labelled held-out test: their dev split, which also selected
  # the best epoch, is reported as dev and says so; nothing is reported as test.
  assert "test" not in results and results["selected_on"] == "dev/" + ("accuracy" if name == "glue_rte_cmp" else "f1")
  assert results["dev"] and all(0.0 <= v <= 1.0 or k in ("pearson", "spearman") for k, v in results["dev"].items())
  if name == "hotpot_drop_crop":
    assert {"em", "f1", "prec", "recall"} <= set(results["dev"])  # HotpotQA's official answer metrics
  metrics = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  train_rows = [m for m in metrics if m["split"] == "train"]
  assert all(np.isfinite(m["loss"]) for m in train_rows) and "task_loss/1" in train_rows[0]


def test_configs_carry_the_papers_per_task_settings():
  assert glue.get_config("task=cola").cmp.n_drop == 4 and glue.get_config("task=stsb").cmp.target == "first"
  assert glue.get_config("task=mnli").epochs == 3 and glue.get_config("task=mnli").optimizer.learning_rate == 2e-5
  assert bbc.get_config("c=2,train_size=64").cmp.n_drop == 2
  assert [g["cmp.n_drop"] for g in bbc.sweep("seeds=2")] == [0, 0, 2, 2]
  with pytest.raises(ValueError, match="config arg 'lr'"):
    bbc.get_config("lr=1")


def test_regulariser_skip_threshold_is_settable_on_the_locked_config():
  from comploss_jax.train import settings_from
  config = glue.get_config("task=rte")
  config.lock()
  assert config.cmp.skip_above is None and settings_from(config.cmp).skip_above is None
  config.cmp.mode = "regulariser"
  config.cmp.skip_above = 1.1
  assert settings_from(config.cmp).skip_above == 1.1 and settings_from(config.cmp).mode == "regulariser"


def test_training_subset_varies_with_the_seed_unless_fixed():
  from comploss_jax.train import subset_seed, training_subset
  labels = np.repeat(np.arange(5), 300)
  configs = [bbc.get_config(f"seed={seed}") for seed in (0, 1)]
  subsets = [training_subset(labels, 64, subset_seed(c), stratified=True) for c in configs]
  assert not np.array_equal(*subsets)  # each seed trains on its own articles
  for config in configs:
    config.data.subset_seed = 7  # an explicit seed fixes one subset for all runs
  assert subset_seed(configs[0]) == subset_seed(configs[1]) == 7
  regression = [training_subset(labels.astype(float), 64, seed, stratified=False) for seed in (0, 1)]
  assert len(regression[0]) == 64 and not np.array_equal(*regression)
