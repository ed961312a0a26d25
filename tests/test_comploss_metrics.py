"""Metrics against known values (and scikit-learn/scipy where installed)."""
import numpy as np
import pytest

from comploss_jax import metrics


def test_squad_em_f1_on_hand_cases():
  assert metrics.normalize_answer("The  Eiffel Tower!") == "eiffel tower"
  assert metrics.exact_match("the Eiffel tower", "Eiffel Tower.") == 1.0
  # pred tokens {in, 1889}, gold {1889}: precision 1/2, recall 1 -> F1 2/3
  assert metrics.token_f1("in 1889", "1889") == pytest.approx(2 / 3)
  assert metrics.token_f1("Paris", "London") == 0.0
  scores = metrics.squad_scores({"q1": "in 1889", "q2": "Denver Broncos"},
                                {"q1": ["1889", "in 1889"], "q2": ["Broncos"], "q3": ["x"]})
  # q1: EM 1 (second gold), F1 1; q2: EM 0, F1 2/3; q3 missing: 0.
  assert scores["exact_match"] == pytest.approx(100 / 3)
  assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)


def test_mcc_f1_accuracy_known_values():
  pred = [1, 1, 0, 0, 1, 0]
  gold = [1, 0, 0, 0, 1, 1]
  # tp=2 tn=2 fp=1 fn=1 -> MCC = (4-1)/sqrt(3*3*3*3) = 1/3
  assert metrics.matthews_corrcoef(pred, gold) == pytest.approx(1 / 3)
  assert metrics.f1_binary(pred, gold) == pytest.approx(2 / 3)
  assert metrics.accuracy(pred, gold) == pytest.approx(4 / 6)
  assert metrics.matthews_corrcoef([1, 1, 1], [1, 0, 1]) == 0.0  # undefined -> 0


def test_pearson_spearman_known_values():
  x = [1.0, 2.0, 3.0, 4.0, 5.0]
  assert metrics.pearson(x, [2, 4, 6, 8, 10]) == pytest.approx(1.0)
  assert metrics.spearman(x, [1, 4, 9, 16, 100]) == pytest.approx(1.0)
  assert metrics.pearson(x, [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
  # ties get average ranks: ranks of [1, 2, 2, 3] are [1, 2.5, 2.5, 4]
  assert metrics.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(metrics.pearson([1, 2.5, 2.5, 4], [1, 2, 3, 4]))


def test_against_scikit_learn_on_random_labels():
  sklearn_metrics = pytest.importorskip("sklearn.metrics")
  rng = np.random.default_rng(0)
  pred, gold = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
  assert metrics.matthews_corrcoef(pred, gold) == pytest.approx(sklearn_metrics.matthews_corrcoef(gold, pred))
  assert metrics.f1_binary(pred, gold) == pytest.approx(sklearn_metrics.f1_score(gold, pred))
  multi_pred, multi_gold = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
  assert metrics.macro_f1(multi_pred, multi_gold) == pytest.approx(
      sklearn_metrics.f1_score(multi_gold, multi_pred, average="macro"))
