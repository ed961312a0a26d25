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


def test_squad_missing_prediction_scores_zero_even_against_an_empty_normalised_gold():
  # Gold "The" normalises to "": the official script skips a missing id (score 0); scoring it as the
  # empty answer would give EM 100. A present empty prediction does match it (EM only: F1 needs a
  # shared token).
  golds = {"q1": ["The"], "q2": ["Paris"]}
  assert metrics.squad_scores({"q2": "Paris"}, golds) == {"exact_match": 50.0, "f1": 50.0}
  assert metrics.squad_scores({"q1": "", "q2": "Paris"}, golds) == {"exact_match": 100.0, "f1": 50.0}


@pytest.mark.parametrize("prediction, gold, em, f1, squad_f1", [
    ("yes no", "yes", 0.0, 0.0, 2 / 3),  # a span over the "yes no " prefix: SQuAD F1 would give 2/3
    ("London yes", "yes", 0.0, 0.0, 2 / 3),  # gold is a label: partial overlap means nothing
    ("yes", "yes sir", 0.0, 0.0, 2 / 3),  # the prediction is a label
    ("noanswer", "no answer", 0.0, 0.0, 0.0),
    ("Yes.", "yes", 1.0, 1.0, 1.0),  # equal after normalisation: the label rule does not apply
    ("the noanswer", "Noanswer", 1.0, 1.0, 1.0),
    ("in 1889", "1889", 0.0, 2 / 3, 2 / 3),  # ordinary answers: SQuAD's token F1
    ("the", "a", 1.0, 0.0, 0.0),  # both normalise to "": EM 1, F1 0 (no shared token)
])
def test_hotpot_answer_em_f1_as_the_official_script(prediction, gold, em, f1, squad_f1):
  scores = metrics.hotpot_scores({"q": prediction}, {"q": gold})
  assert scores["em"] == em and scores["f1"] == pytest.approx(f1)
  assert metrics.token_f1(prediction, gold) == pytest.approx(squad_f1)


def test_hotpot_answer_precision_recall():
  assert metrics.hotpot_answer_f1("in 1889", "1889") == pytest.approx((2 / 3, 0.5, 1.0))
  assert metrics.hotpot_answer_f1("yes no", "yes") == (0.0, 0.0, 0.0)


def test_hotpot_supporting_facts_are_compared_as_sets():
  # Duplicates count once; lists and tuples are the same fact.
  em, f1, prec, recall = metrics.hotpot_supporting_facts([["A", 0], ["B", 1], ("B", 1)], [("A", 0), ["B", 2]])
  assert (em, f1, prec, recall) == (0.0, 0.5, 0.5, 0.5)
  assert metrics.hotpot_supporting_facts([], [["A", 0]]) == (0.0, 0.0, 0.0, 0.0)
  assert metrics.hotpot_supporting_facts([], []) == (1.0, 0.0, 0.0, 0.0)  # equal empty sets: EM 1, F1 0
  assert metrics.hotpot_supporting_facts([["A", 0], ["B", 2]], [["B", 2], ["A", 0]]) == (1.0, 1.0, 1.0, 1.0)


def test_hotpot_joint_metrics_and_missing_predictions():
  golds = {"q1": "Paris", "q2": "1889", "q3": "yes"}
  gold_sp = {"q1": [["A", 0], ["B", 2]], "q2": [["C", 1]], "q3": [["D", 0]]}
  answers = {"q1": "paris", "q2": "in 1889"}  # q3 has no answer
  sp = {"q1": [["A", 0], ["B", 1]], "q2": [["C", 1]], "q3": [["D", 0]]}
  scores = metrics.hotpot_scores(answers, golds, sp, gold_sp)
  # q1: answer exact (p = r = 1), sp p = r = 1/2 -> joint p = r = F1 = 1/2, joint EM 0.
  # q2: answer p 1/2, r 1, F1 2/3; sp exact -> joint p 1/2, r 1, F1 2/3, joint EM 0 (answer EM 0).
  # q3: no answer -> answer and joint 0; its sp still counts (exact).
  assert scores["em"] == pytest.approx(1 / 3) and scores["f1"] == pytest.approx((1 + 2 / 3) / 3)
  assert scores["prec"] == pytest.approx(1.5 / 3) and scores["recall"] == pytest.approx(2 / 3)
  assert scores["sp_em"] == pytest.approx(2 / 3) and scores["sp_f1"] == pytest.approx(2.5 / 3)
  assert scores["joint_em"] == 0.0 and scores["joint_f1"] == pytest.approx((0.5 + 2 / 3) / 3)
  assert scores["joint_prec"] == pytest.approx(1 / 3) and scores["joint_recall"] == pytest.approx(1.5 / 3)
  # Without supporting-fact predictions only the answer metrics are reported (no fake zeros).
  assert set(metrics.hotpot_scores(answers, golds)) == {"em", "f1", "prec", "recall"}
  with pytest.raises(ValueError, match="gold_supporting"):
    metrics.hotpot_scores(answers, golds, sp)
