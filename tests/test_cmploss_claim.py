"""The model-size x input-length experiment (bench/cmploss_claim.py) without training: its paired
statistics against known values, the cropped classification views it trains on, the shallower MiniLM,
and the grid's resume logic with a stand-in for the per-run function."""
import json
import os

import numpy as np
import pytest
from transformers import AutoTokenizer

from bench import cmploss_claim as claim
from comploss_jax.crop_views import classification_crop_views, crop_views, nested_keep_counts, text_units
from comploss_jax.encoder_params import resolve_model_dir
from comploss_jax.features import encode_classification

# R's documentation example: t.test(extra ~ group, data = sleep, paired = TRUE) (Student's sleep data).
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]

ARTICLE = ("Ad sales boost Time Warner profit\n\n"
           "Quarterly profits at US media giant TimeWarner jumped 76% to $1.13bn for the three months to "
           "December. Mr. Parsons said the results were strong.\n\n"
           "The firm benefited from sales of high-speed internet connections! Its profits were buoyed by "
           "one-off gains, e.g. the sale of a stake. \"We are pleased,\" he said.\n\n"
           "George W. Bush was not mentioned. The U.S. Securities Exchange Commission is close to concluding? "
           "Analysts expect more.")


@pytest.fixture(scope="module")
def tokenizer():
  return AutoTokenizer.from_pretrained(resolve_model_dir("all-minilm-l6-v2"))


def test_paired_statistics_match_r_on_the_sleep_data():
  stats = claim.paired_stats(SLEEP_2, SLEEP_1)  # group 1 - group 2, as R orders them
  assert stats["n"] == 10 and stats["df"] == 9
  assert stats["mean"] == pytest.approx(-1.58)
  assert stats["t"] == pytest.approx(-4.062128, abs=1e-6)
  assert stats["p"] == pytest.approx(0.002832890, rel=1e-5)
  assert stats["ci"] == pytest.approx([-2.4598858, -0.7001142], abs=1e-7)
  five = claim.paired_stats([0] * 5, [1, 2, 3, 4, 5])  # t = 3 / (sqrt(2.5) / sqrt(5)), 4 df
  assert five["t"] == pytest.approx(3 * np.sqrt(2)) and five["p"] == pytest.approx(0.013236, abs=1e-6)
  assert five["ci"] == pytest.approx([3 - 2.776445 * np.sqrt(0.5), 3 + 2.776445 * np.sqrt(0.5)], abs=1e-6)


def test_paired_statistics_degenerate_cases_stay_defined():
  one = claim.paired_stats([0.5], [0.7])
  assert one["mean"] == pytest.approx(0.2) and one["p"] is None and one["ci"] is None and one["df"] is None
  same = claim.paired_stats([0.9, 0.8, 0.7], [0.9, 0.8, 0.7])
  assert same["p"] == 1.0 and same["ci"] == [0.0, 0.0] and same["t"] is None
  shifted = claim.paired_stats([0.5, 0.6, 0.7], [0.6, 0.7, 0.8])  # 0.1 each, up to float rounding
  assert shifted["p"] == 0.0 and shifted["ci"] == pytest.approx([0.1, 0.1]) and shifted["sd"] == 0.0
  assert claim.paired_stats([], [])["mean"] is None
  json.dumps([one, same, shifted], allow_nan=False)  # every value is valid JSON


def test_text_units_split_sentences_and_paragraphs():
  sentences = [ARTICLE[a:b] for a, b in text_units(ARTICLE, "sentence")]
  assert sentences == [
      "Ad sales boost Time Warner profit",
      "Quarterly profits at US media giant TimeWarner jumped 76% to $1.13bn for the three months to December.",
      "Mr. Parsons said the results were strong.",
      "The firm benefited from sales of high-speed internet connections!",
      "Its profits were buoyed by one-off gains, e.g. the sale of a stake.",
      "\"We are pleased,\" he said.",
      "George W. Bush was not mentioned.",
      "The U.S. Securities Exchange Commission is close to concluding?",
      "Analysts expect more."]
  paragraphs = [ARTICLE[a:b] for a, b in text_units(ARTICLE, "paragraph")]
  assert len(paragraphs) == 4 and paragraphs[0] == "Ad sales boost Time Warner profit"
  assert paragraphs[3].startswith("George") and paragraphs[3].endswith("more.")
  with pytest.raises(ValueError, match="unit="):
    text_units(ARTICLE, "word")


def test_keep_counts_are_distinct_descending_and_never_empty():
  rng = np.random.default_rng(0)
  for _ in range(50):
    counts = nested_keep_counts(9, 3, rng)
    assert counts[0] == 9 and all(a > b >= 1 for a, b in zip(counts, counts[1:]))
  assert nested_keep_counts(2, 3, rng) == [2, 1, 1, 1]  # too few units: the smallest view repeats
  assert nested_keep_counts(1, 2, rng) == [1, 1, 1]


def _content(tokenizer, ids, mask):
  return [int(t) for t, m in zip(ids, mask) if m and t not in tokenizer.all_special_ids]


def test_crop_views_are_nested_sentence_subsets_of_the_plain_input(tokenizer):
  units = text_units(ARTICLE, "sentence")
  for seed in range(5):
    views = crop_views(tokenizer, ARTICLE, 160, 3, np.random.default_rng(seed))
    plain = encode_classification(tokenizer, [{"text": ARTICLE, "label": 0}], ("text",), 160)
    assert views["input_ids"].shape == (4, 160)
    assert np.array_equal(views["input_ids"][0], plain["input_ids"][0])  # view 0 = the baseline's input
    assert np.array_equal(views["attention_mask"][0], plain["attention_mask"][0])
    kept = views["kept_units"]
    assert kept[0].all() and all(set(np.flatnonzero(b)) < set(np.flatnonzero(a)) for a, b in zip(kept, kept[1:]))
    for j in range(4):
      ids, mask = views["input_ids"][j], views["attention_mask"][j]
      n = int(mask.sum())
      assert mask[:n].all() and not mask[n:].any()  # kept tokens first, then padding
      assert ids[0] == tokenizer.cls_token_id and ids[n - 1] == tokenizer.sep_token_id
      # Exactly the tokens of the kept sentences, in the article's order.
      text = " ".join(ARTICLE[a:b] for (a, b), k in zip(units, kept[j]) if k)
      assert _content(tokenizer, ids, mask) == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_crops_never_reach_past_the_truncation_of_view_0(tokenizer):
  views = crop_views(tokenizer, ARTICLE, 24, 2, np.random.default_rng(1))
  shown = set(_content(tokenizer, views["input_ids"][0], views["attention_mask"][0]))
  for j in (1, 2):
    content = _content(tokenizer, views["input_ids"][j], views["attention_mask"][j])
    assert content and set(content) <= shown
  units = np.flatnonzero(views["kept_units"][0])
  assert 0 < len(units) < len(text_units(ARTICLE))  # only the sentences view 0 shows can be kept


def test_classification_crop_views_stack_records_and_need_one_text(tokenizer):
  records = [{"text": ARTICLE, "label": 3}, {"text": "Short one. Two sentences.", "label": 1}]
  views = classification_crop_views(tokenizer, records, ("text",), 64, 1, np.random.default_rng(0), "paragraph")
  assert views["input_ids"].shape == (2, 2, 64) and views["labels"].tolist() == [3, 1]
  assert views["input_ids"].dtype == np.int32
  with pytest.raises(ValueError, match="single-text"):
    classification_crop_views(tokenizer, records, ("a", "b"), 64, 1, np.random.default_rng(0))


def test_the_smaller_model_is_minilm_with_its_first_three_layers():
  from comploss_jax import load_encoder
  full, full_params = load_encoder("all-minilm-l6-v2")
  small, small_params = load_encoder("all-minilm-l6-v2", num_layers=3)
  assert small.config.num_hidden_layers == 3 and full.config.num_hidden_layers == 6
  for a, b in zip(np.asarray(full_params["layers"]["query"]["kernel"])[:3], small_params["layers"]["query"]["kernel"]):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(full_params["embeddings"]["word_embeddings"]["embedding"],
                                small_params["embeddings"]["word_embeddings"]["embedding"])
  with pytest.raises(ValueError, match="num_layers=7"):
    load_encoder("all-minilm-l6-v2", num_layers=7)


def test_run_config_sets_the_cell_arm_and_budget():
  long_cmp = claim.make_grid(["minilm-l3"], ["long"], [64], [2], epochs=3, select="last")[1]
  config = claim.run_config(long_cmp)
  assert (config.model_layers, config.data.max_length, config.data.train_size, config.seed) == (3, 256, 64, 2)
  assert (config.cmp.n_drop, config.cmp.n_crop, config.data.crop_unit) == (1, 1, "sentence")
  assert config.total_steps == 12 == config.eval_every and config.data.subset_seed == -1
  short_base = claim.make_grid(["minilm-l6"], ["short"], [256], [0], epochs=2, select="dev")[0]
  config = claim.run_config(short_base)
  assert (config.model_layers, config.data.max_length, config.cmp.n_drop, config.cmp.n_crop) == (6, 48, 0, 0)
  assert config.total_steps == 32 and config.eval_every == 16  # --select dev: dev after every epoch
  with pytest.raises(Exception):
    config.no_such_field = 1  # locked


GAIN = {("minilm-l3", "long"): 0.03, ("minilm-l3", "short"): 0.01, ("minilm-l6", "long"): 0.01,
        ("minilm-l6", "short"): 0.0}


class FakeTraining:
  """Stands in for train_run: fixed scores (CmpLoss gains GAIN[model, length] + a seed-dependent wobble),
  one minute of a fake clock per run, and the folders a real run leaves behind."""

  def __init__(self):
    self.now = 0.0
    self.calls = []

  def clock(self):
    return self.now

  def __call__(self, run, run_dir):
    self.calls.append(run.name)
    self.now += 60.0
    for folder in ("checkpoints", "best"):
      os.makedirs(os.path.join(run_dir, folder))
    base = 0.8 + 0.01 * run.seed
    gain = GAIN[(run.model, run.length)] + 0.002 * (run.seed - 1) if run.arm == "cmploss" else 0.0
    return {"test": {"accuracy": base + gain, "macro_f1": base + gain - 0.01}, "dev": {"accuracy": base}}


def test_grid_resumes_reuses_finished_runs_and_aggregates(tmp_path):
  runs = claim.make_grid(list(claim.MODELS), list(claim.LENGTHS), [64, 256], [0, 1, 2], epochs=1)
  assert len(runs) == 48 and [r.arm for r in runs[:2]] == ["baseline", "cmploss"]
  fake = FakeTraining()
  stale = tmp_path / runs[5].name
  stale.mkdir(parents=True)
  (stale / "leftover").write_text("from a run cut off half way")

  records, left = claim.run_grid(runs, str(tmp_path), fake, max_minutes=5, clock=fake.clock, progress=False)
  assert fake.calls == [r.name for r in runs[:5]] and len(left) == 43 and len(records) == 5
  assert not (tmp_path / runs[0].name / "checkpoints").exists() and not (tmp_path / runs[0].name / "best").exists()
  saved = json.loads((tmp_path / runs[0].name / "run.json").read_text())
  assert saved["seconds"] == 60.0 and saved["results"]["test"]["accuracy"] == pytest.approx(0.8)

  records, left = claim.run_grid(runs, str(tmp_path), fake, clock=fake.clock, progress=False)
  assert fake.calls[5:] == [r.name for r in runs[5:]] and not left and len(records) == 48
  assert not (stale / "leftover").exists()  # the cut-off run trained again from the start
  calls = len(fake.calls)
  records, left = claim.run_grid(runs, str(tmp_path), fake, clock=fake.clock, progress=False)
  assert len(fake.calls) == calls and len(records) == 48  # all reused
  other = claim.make_grid(["minilm-l6"], ["short"], [64], [0], epochs=2)  # other settings: not reused
  claim.run_grid(other, str(tmp_path), fake, clock=fake.clock, progress=False)
  assert len(fake.calls) == calls + 2

  settings = {"models": list(claim.MODELS), "lengths": list(claim.LENGTHS), "sizes": [64, 256], "seeds": [0, 1, 2],
              "epochs": 1, "tokens": {"short": 48, "long": 256}, "short_cmp": [2, 0], "long_cmp": [1, 1],
              "crop_unit": "sentence", "select": "dev", "batch_size": 16}
  summary = claim.summarize(runs, records, settings)
  assert summary["finished_runs"] == 48 and summary["split"] == "test"
  cell = next(c for c in summary["cells"] if (c["model"], c["length"], c["train_size"]) == ("minilm-l3", "long", 64))
  assert cell["seeds"] == 3 and cell["cmploss_submodels"] == {"n_drop": 1, "n_crop": 1}
  acc = cell["paired"]["accuracy"]
  assert acc["mean"] == pytest.approx(0.03) and acc["sd"] == pytest.approx(0.002) and acc["p"] < 0.01
  assert acc["ci"][0] < 0.03 < acc["ci"][1]
  smaller = [c for c in summary["contrasts"] if c["question"].startswith("smaller") and c["where"].startswith("long")]
  assert [c["where"] for c in smaller] == ["long input, n=64", "long input, n=256", "long input, all sizes"]
  assert smaller[-1]["paired"]["accuracy"]["mean"] == pytest.approx(0.02)
  longer = next(c for c in summary["contrasts"] if c["where"] == "minilm-l6, all sizes")
  assert longer["paired"]["macro_f1"]["mean"] == pytest.approx(0.01)

  out = tmp_path / "out"
  claim.write_outputs(str(out), summary)
  assert json.loads((out / "results.json").read_text())["cells"][0]["per_seed"]
  table = (out / "table.md").read_text()
  assert "| minilm-l3 | long (256) | 64 | 3 |" in table and "444 held-out" in table
  assert (out / "gain_vs_size.png").stat().st_size > 10_000


def test_partial_grid_keeps_whole_pairs_and_reports_missing_cells(tmp_path):
  runs = claim.make_grid(["minilm-l6"], ["short", "long"], [64], [0, 1], epochs=1)
  fake = FakeTraining()
  records, left = claim.run_grid(runs, str(tmp_path), fake, max_minutes=3, clock=fake.clock, progress=False)
  assert len(records) == 3 and len(left) == 5
  summary = claim.summarize(runs, records, {"models": ["minilm-l6"], "lengths": ["short", "long"], "sizes": [64],
                                            "seeds": [0, 1], "epochs": 1, "tokens": {"short": 48, "long": 256},
                                            "short_cmp": [2, 0], "long_cmp": [1, 1], "crop_unit": "sentence",
                                            "select": "dev", "batch_size": 16})
  short, long = summary["cells"]
  assert short["seeds"] == 1 and short["paired"]["accuracy"]["p"] is None
  assert long["seeds"] == 0 and long["baseline"]["accuracy"] is None
  assert "n/a" in claim.markdown(summary)
  claim.write_outputs(str(tmp_path / "out"), summary)


def test_time_estimate_fits_overhead_and_rate_from_finished_runs():
  runs = claim.make_grid(list(claim.MODELS), list(claim.LENGTHS), [64, 256], [0], epochs=2)
  records = [{"run": dict(vars(r)), "seconds": 12.0 + 3e-5 * claim.work_units(r)} for r in runs[:6]]
  overhead, rate, source = claim.fit_timing(records)
  assert overhead == pytest.approx(12.0) and rate == pytest.approx(3e-5) and "6 finished" in source
  assert claim.estimate_seconds(runs[6:], records) == pytest.approx(
      sum(12.0 + 3e-5 * claim.work_units(r) for r in runs[6:]))
  long_cmp, short_base = runs[9], runs[0]
  assert (long_cmp.length, long_cmp.arm, short_base.length, short_base.arm) == ("long", "cmploss", "short", "baseline")
  assert claim.work_units(long_cmp) > 5 * claim.work_units(short_base)
  assert claim.fit_timing([]) == (claim.DEFAULT_OVERHEAD_S, claim.DEFAULT_SECONDS_PER_UNIT, claim.fit_timing([])[2])


def test_estimate_only_prints_the_grid_and_trains_nothing(tmp_path, capsys):
  assert claim.main(["--estimate-only", "--workdir", str(tmp_path), "--seeds", "5"]) is None
  text = capsys.readouterr().out
  assert "grid: 80 runs (0 finished, 80 to train)" in text and "estimated time" in text
  assert not any(tmp_path.iterdir())


def test_main_writes_the_outputs_and_a_rerun_trains_nothing(tmp_path, monkeypatch, capsys):
  fake = FakeTraining()
  monkeypatch.setattr(claim, "train_run", fake)
  argv = ["--models", "minilm-l3", "--lengths", "long", "--sizes", "64", "--seeds", "2", "--epochs", "1",
          "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
  summary = claim.main(argv)
  assert len(fake.calls) == 4 and summary["finished_runs"] == 4
  assert summary["cells"][0]["paired"]["accuracy"]["mean"] == pytest.approx(0.029)  # 0.03 + wobble (-0.002, 0)
  assert {p.name for p in (tmp_path / "out").iterdir()} == {"results.json", "table.md", "gain_vs_size.png"}
  claim.main(argv)
  assert len(fake.calls) == 4 and "grid: 4 runs (4 finished, 0 to train)" in capsys.readouterr().out
  with pytest.raises(SystemExit):
    claim.main(argv + ["--long-tokens", "1024"])
