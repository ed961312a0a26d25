"""HotpotQA set up for long inputs: per-paragraph caps that keep the answer in every view, targets
outside the input ignored (and left out of the ranking), answers found in the supporting facts,
views redrawn per epoch from (seed, epoch, example index) inside the pipeline, and resumed alike.

Hand-made records in the official JSON format with long paragraphs; MiniLM-L6's tokenizer and a
tiny random span model, so everything runs in seconds."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from transformers import AutoTokenizer

from comploss_jax import CmpSettings, comparative_loss, list_mle, make_loss_fn
from comploss_jax.datasets import hotpot_example
from comploss_jax.encoder_params import resolve_model_dir
from comploss_jax.heads import IGNORE_INDEX, span_losses, span_targets_valid
from comploss_jax.hotpot import (HotpotTrainViews, hotpot_eval_arrays, hotpot_views, locate_answer, pair_template,
                                 prepare_hotpot, view_rng)
from comploss_jax.metrics import normalize_answer
from comploss_jax.submodels import combine, submodel_losses_and_valid

FILLER = "The old stone bridge crosses a quiet valley where farmers grow wheat and barley in summer. "


@pytest.fixture(scope="module")
def tokenizer():
  return AutoTokenizer.from_pretrained(resolve_model_dir("all-minilm-l6-v2"))


@pytest.fixture(scope="module")
def template(tokenizer):
  return pair_template(tokenizer)


def record(rid="r0", answer="Seine", answer_paragraph=7, answer_sentence=6, filler=6, distractor_mention=True):
  """10 paragraphs of 7+ long sentences; the answer sits in sentence `answer_sentence` of supporting
  paragraph `answer_paragraph` (its second supporting paragraph is 2). With distractor_mention, the
  answer's string also appears early in distractor paragraph 0 and in an unannotated sentence of
  the answer's own paragraph."""
  context = []
  for p in range(10):
    sentences = [FILLER * 3 for _ in range(filler)]
    if p == 0 and distractor_mention:
      sentences[0] = f"Tourists on the {answer} boats rarely visit this village. "
    if p == answer_paragraph:
      if distractor_mention:
        sentences[1] = f"An old song about the {answer} is sung here. "
      sentences.insert(answer_sentence, f"The capital lies on the river {answer}. ")
    context.append([f"Place {p}", sentences])
  return {"_id": rid, "question": "Which river flows through the capital of the country with Place 2?",
          "answer": answer, "type": "bridge",
          "supporting_facts": [[f"Place {answer_paragraph}", answer_sentence], ["Place 2", 0]], "context": context}


def test_answer_is_in_every_view_after_capping(tokenizer, template):
  cap, max_length = 24, 192
  for i, answer in enumerate(["Seine", "yes"]):
    example = hotpot_example(record(f"r{i}", answer=answer))
    prepared = prepare_hotpot(tokenizer, example, i, paragraph_tokens=cap, question_tokens=32, with_offsets=True)
    full_lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in example["paragraphs"]]
    assert min(full_lengths) > 5 * cap  # long paragraphs: the cap cuts all of them
    assert all(len(piece) <= t + cap for piece, t in zip(prepared["pieces"], prepared["title_tokens"]))
    for epoch in range(3):
      views = hotpot_views(prepared, template, 3, max_length, view_rng(0, epoch, i))
      assert views["input_ids"].shape == (4, max_length)
      assert np.all(views["start"] > 0) and np.all(views["end"] >= views["start"])
      assert np.all(views["tokens"][:, [2, 7]] > 0)  # supporting paragraphs are in every view
      assert views["tokens"][0].sum() < sum(map(len, prepared["pieces"]))  # the full view had to be trimmed
      for v in range(4):
        s, e = views["start"][v], views["end"][v]
        assert normalize_answer(tokenizer.decode(views["input_ids"][v][s:e + 1])) == normalize_answer(answer)
        offsets = views["offsets"][v]
        assert views["context"][v][offsets[s][0]:offsets[e][1]] == answer
  # Without the cap the answer (sentence 6 of a long paragraph) would sit past max_length.
  uncapped = prepare_hotpot(tokenizer, hotpot_example(record()), 0, paragraph_tokens=0, question_tokens=32)
  assert uncapped["answer"][1] > max_length


def test_answer_outside_the_window_is_ignored_not_cls(tokenizer, template):
  example = hotpot_example(record())
  prepared = prepare_hotpot(tokenizer, example, 0, paragraph_tokens=64, question_tokens=32)
  fixed = 3 + len(prepared["question"]) + 2
  answer_piece, _, last = prepared["answer"]
  assert answer_piece == 7
  # Room for the answer paragraph's title and a few words, not for the answer.
  views = hotpot_views(prepared, template, 2, fixed + last - 3, view_rng(0, 0, 0))
  assert np.all(views["start"] == IGNORE_INDEX) and np.all(views["end"] == IGNORE_INDEX)
  assert np.all(views["tokens"][:, 7] > 0)  # the paragraph is there, cut before its answer
  # The span loss ignores it (0, no gradient) and says so; position 0 ([CLS]) is a real target.
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(3, 16)), jnp.float32)
  starts = jnp.asarray([IGNORE_INDEX, 0, 5])
  losses, valid, grad = jax.jit(lambda x: (span_losses(x, x, starts, starts), span_targets_valid(starts, starts),
                                           jax.grad(lambda y: span_losses(y, y, starts, starts).sum())(x)))(logits)
  assert float(losses[0, 0]) == 0.0 and float(losses[1, 0]) > 0.0
  np.testing.assert_array_equal(valid, [False, True, True])
  assert not np.any(np.asarray(grad[0])) and np.any(np.asarray(grad[1]))


def np_ranked(row, valid, target):
  """The hinge over the valid models of `row` and the baseline, divided by the full N."""
  kept = [l for l, v in zip(row, valid) if v]
  if target == "ultra":
    b = 0.0
  elif target == "best":
    b = min(kept) if kept else 0.0
  else:
    sub = [l for l, v in zip(row[1:], valid[1:]) if v]
    if valid[0] and sub:
      b = (row[0] + min(sub)) / 2 if row[0] < min(sub) else min(sub)
    else:
      b = row[0] if valid[0] else (min(sub) if sub else 0.0)
  chain = kept + [b]
  n = len(row) + 1
  pairs = [max(0.0, chain[i] - chain[j]) for i in range(len(chain)) for j in range(i + 1, len(chain))]
  return sum(pairs) / (n * (n - 1) / 2)


@pytest.mark.parametrize("target", ["ultra", "first", "best"])
def test_a_view_without_target_is_left_out_of_the_ranking(target):
  losses = np.asarray([[0.7, 0.0, 1.3], [0.4, 0.9, 0.2], [0.0, 0.6, 0.8], [0.0, 0.0, 0.0]], np.float32)
  valid = np.asarray([[True, False, True], [True, True, True], [False, True, True], [False, False, False]])
  masked = jax.jit(jax.value_and_grad(lambda x, v: comparative_loss(x, target, valid=v)))  # one compilation
  got, grad = masked(losses, valid)
  want = np.mean([np_ranked(list(map(float, r)), list(map(bool, v)), target) for r, v in zip(losses, valid)])
  assert float(got) == pytest.approx(want, rel=1e-6)
  # All valid: the unmasked loss. An invalid entry's value never matters, nor gets a gradient.
  assert float(masked(losses, np.ones_like(valid))[0]) == pytest.approx(
      float(jax.jit(lambda x: comparative_loss(x, target))(losses)), rel=1e-6)  # f32: a few ulps
  assert not np.any(np.asarray(grad)[~valid])
  moved = losses.copy()
  moved[0, 1], moved[2, 0] = -5.0, 9.0
  assert float(masked(moved, valid)[0]) == pytest.approx(float(got), rel=1e-6)
  # ListMLE: the invalid items are taken out of the list.
  mle = jax.jit(lambda x, v: (list_mle(x, v), list_mle(x[:, ::2])))(-losses[:1], valid[:1])
  assert float(mle[0][0]) == pytest.approx(float(mle[1][0]), rel=1e-6)


def test_chain_ranks_only_the_views_with_their_answer():
  """The vmapped chain with views: a toy span scorer (logits = x * w, scaled by the dropout power so
  submodels differ) keeps the test to one small compilation."""
  rng = np.random.default_rng(0)
  B, V, T = 4, 2, 10
  x = rng.normal(size=(B, V, T)).astype(np.float32)
  start = np.full((B, V), 3, np.int32)
  end = np.full((B, V), 5, np.int32)
  start[:2, 1] = end[:2, 1] = IGNORE_INDEX  # the crop view of examples 0, 1 lost the answer
  batch = {"views": {"x": x, "start": start, "end": end}}
  params = {"w": jnp.linspace(0.5, 1.5, T)}

  def fn(p, inputs, r, power):
    del r
    logits = inputs["x"] * p["w"] * (1.0 + 0.3 * power)
    return (span_losses(logits, -logits, inputs["start"], inputs["end"]),
            span_targets_valid(inputs["start"], inputs["end"]))

  settings = CmpSettings(n_drop=1, n_crop=1)  # schedule (view, power): (0, 0) (1, 0) (1, 1)
  loss_fn = make_loss_fn(fn, settings)

  @jax.jit
  def run(p, b):
    loss, metrics = loss_fn(p, b, jax.random.PRNGKey(1))
    losses, valid = submodel_losses_and_valid(fn, p, b, jax.random.PRNGKey(1), settings)
    grad_x = jax.grad(lambda v: loss_fn(p, {"views": dict(b["views"], x=v)}, jax.random.PRNGKey(1))[0])(b["views"]["x"])
    return loss, metrics, losses, valid, combine(losses, settings, valid), combine(losses, settings), grad_x

  loss, metrics, losses, valid, masked, unmasked, grad_x = run(params, batch)
  # Both submodels that read view 1 (crop, crop + dropout) lack the target for examples 0, 1.
  np.testing.assert_array_equal(valid, [[True, False, False], [True, False, False], [True, True, True],
                                        [True, True, True]])
  assert float(loss) == pytest.approx(float(masked), rel=1e-6)
  expected = np.mean([(comparative_loss(losses[..., k], valid=valid)) for k in range(2)])
  assert float(loss) == pytest.approx(float(expected), rel=1e-6)
  # The zero loss of a view without its answer would otherwise rank it as the best model.
  assert float(loss) != pytest.approx(float(unmasked), rel=1e-3)
  assert float(metrics["has_target/1"]) == 0.5 and float(metrics["has_target/0"]) == 1.0
  assert float(metrics["task_loss/1"]) == pytest.approx(float(losses[2:, 1].mean()), rel=1e-6)
  # A view without a target does not count at all: no gradient reaches its input.
  assert not np.any(np.asarray(grad_x)[:2, 1]) and np.all(np.any(np.asarray(grad_x)[2:, 1], axis=-1))


def test_span_comes_from_the_supporting_facts(tokenizer, template):
  example = hotpot_example(record())
  # The answer's string appears first in distractor paragraph 0 and in sentence 1 of its own
  # paragraph; the annotated supporting fact is sentence 6 of paragraph 7.
  assert example["paragraphs"][0].index("Seine") < example["paragraphs"][7].index("Seine")
  part, p, a, b = locate_answer(example)
  assert (part, p) == ("text", 7) and a == example["support_start"][0] + example["paragraphs"][7][
      example["support_start"][0]:].index("Seine") and a > example["paragraphs"][7].index("Seine")
  prepared = prepare_hotpot(tokenizer, example, 0, paragraph_tokens=0, question_tokens=0, with_offsets=True)
  arrays = hotpot_eval_arrays([prepared], template, 2048)
  s, e = arrays["start"][0], arrays["end"][0]
  context = arrays["contexts"][0]
  begin = arrays["offsets"][0][s][0]
  assert context[begin:arrays["offsets"][0][e][1]] == "Seine"
  assert context.index("Place 7: ") < begin and context[:begin].endswith("The capital lies on the river ")
  # Fallback: not in any supporting paragraph, so the string match elsewhere (paragraph 0) is used,
  # and that paragraph is then kept in every crop view.
  moved = record(answer="Loire", distractor_mention=False)
  moved["context"][7][1][6] = "The capital lies on a river. "
  moved["context"][0][1][2] = "Boats sail down the Loire. "
  moved = hotpot_example(moved)
  assert locate_answer(moved)[:2] == ("text", 0)
  views = hotpot_views(prepare_hotpot(tokenizer, moved, 0, 24, 32), template, 3, 256, view_rng(0, 0, 0))
  assert views["kept"][:, 0].all() and np.all(views["start"] > 0)
  # Supporting facts as character spans of the stripped paragraph; a fact naming a missing
  # sentence is dropped (its paragraph stays supporting).
  raw = record()
  raw["context"][2][1][0] = "  Leading spaces. "
  raw["supporting_facts"].append(["Place 2", 99])
  spans = hotpot_example(raw)
  assert spans["support_paragraph"] == [7, 2] and spans["supporting"][2] == 1
  assert spans["paragraphs"][2][spans["support_start"][1]:spans["support_end"][1]] == "Leading spaces. "


def test_views_are_redrawn_per_epoch_and_fixed_by_seed_epoch_index(tokenizer, template):
  prepared = [prepare_hotpot(tokenizer, hotpot_example(record(f"r{i}")), i, 24, 32) for i in range(2)]
  source = HotpotTrainViews(prepared, template, num_crops=2, max_length=160, seed=3)
  same = HotpotTrainViews(prepared, template, num_crops=2, max_length=160, seed=3)
  other = HotpotTrainViews(prepared, template, num_crops=2, max_length=160, seed=4)
  for ex in prepared:
    e0, e1 = source.views(ex, 0)["views"], source.views(ex, 1)["views"]
    assert set(e0) == {"input_ids", "attention_mask", "token_type_ids", "start", "end"}
    assert not np.array_equal(e0["input_ids"], e1["input_ids"])  # order and crops redrawn
    for k in e0:
      np.testing.assert_array_equal(e0[k], same.views(ex, 0)["views"][k])
      np.testing.assert_array_equal(e1[k], source.views(ex, 1)["views"][k])
    assert not np.array_equal(e0["input_ids"], other.views(ex, 0)["views"]["input_ids"])
  # The two examples (same text) draw differently in the same epoch: the index is in the draw.
  assert not np.array_equal(source.views(prepared[0], 0)["views"]["input_ids"],
                            source.views(prepared[1], 0)["views"]["input_ids"])


def test_pipeline_draws_views_per_pass_and_a_resumed_run_draws_the_same(tokenizer, template):
  prepared = [prepare_hotpot(tokenizer, hotpot_example(record(f"r{i}")), i, 16, 32) for i in range(4)]
  source = HotpotTrainViews(prepared, template, num_crops=1, max_length=128, seed=7)
  uninterrupted = source.iterator(2, worker_threads=1)
  batches = [next(uninterrupted) for _ in range(6)]
  assert batches[0]["views"]["input_ids"].shape == (2, 2, 128)
  # Each pass shows every example once, with the views of that pass.
  def views_of(batch):
    return {bytes(x.tobytes()) for x in batch["views"]["input_ids"]}
  for epoch in range(3):
    seen = views_of(batches[2 * epoch]) | views_of(batches[2 * epoch + 1])
    assert seen == {source.views(ex, epoch)["views"]["input_ids"].tobytes() for ex in prepared}
  # Resume after 3 steps from the checkpointed iterator state: the same batches follow.
  first = source.iterator(2, worker_threads=1)
  for _ in range(3):
    next(first)
  state = first.get_state()
  resumed = HotpotTrainViews(prepared, template, num_crops=1, max_length=128, seed=7).iterator(2, worker_threads=1)
  resumed.set_state(state)
  for expected in batches[3:]:
    got = next(resumed)
    for k in expected["views"]:
      np.testing.assert_array_equal(got["views"][k], expected["views"][k])
