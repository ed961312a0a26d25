"""HotpotQA distractor inputs: each example is tokenised once, its views are assembled per epoch.

One view is the tokenizer's own pair template around the question and a context of paragraphs
(BERT's shown):

    [CLS] question [SEP] yes no t_a: p_a t_b: p_b ... [SEP] [PAD] ...
    context string = "yes no " + "t: p " for each paragraph shown, in the view's order

so yes/no answers are spans over the "yes no" prefix like any other answer.

As the reference (zycdev/CmpLoss, utils/data.py) does:
- each paragraph is cut to a token cap (`paragraph_tokens`; the reference's max_p_len, 256 at 2048
  tokens) and the question to `question_tokens` (its max_q_len);
- the paragraph holding the answer keeps the answer (the reference raises that paragraph's cap to
  max(max_p_len, the answer's end character + 12), which always covers it; here a window of the
  cap's size slides to end ANSWER_MARGIN tokens after the answer, so no paragraph outgrows the cap);
- training redraws the paragraph order, the distractor permutation and the crop sizes on every pass
  over the data, here as a function of (seed, epoch, example index) inside the input pipeline, so a
  resumed run draws the same views as an uninterrupted one;
- a target outside the input is ignored (IGNORE_INDEX), never moved to [CLS].
Where this differs:
- when the paragraphs do not all fit in max_length, the room goes to the answer paragraph first,
  then to the other supporting paragraphs, then to the distractors in their order (the reference
  cuts the sequence's tail, which loses the answer whenever its paragraph comes late). With
  question_tokens + the answer paragraph fitting in max_length, the answer is in every view.
- the answer paragraph is kept in every crop view even when it is not a supporting paragraph;
- the answer is located in the annotated supporting-fact sentences first (see `locate_answer`).
"""
from __future__ import annotations

from collections.abc import Sequence

import grain
import jax
import numpy as np

from comploss_jax.features import _text
from comploss_jax.heads import IGNORE_INDEX
from comploss_jax.qa_features import crop_keep_counts
from trainkit.data import host_blocks

YES_NO_PREFIX = "yes no "  # yes/no answers become spans over these two words
ANSWER_MARGIN = 12  # tokens kept after the answer when a paragraph's window slides to hold it
VIEW_KEYS = ("input_ids", "attention_mask", "token_type_ids", "start", "end")


def locate_answer(example: dict) -> tuple[str, int, int, int] | None:
  """Where the answer is: (part, paragraph, char_start, char_end), or None when it is nowhere.

  part 'prefix' (paragraph -1): a yes/no answer, a span of YES_NO_PREFIX. Otherwise part 'text'
  (a span of paragraphs[paragraph]) or 'title' (of titles[paragraph]). Searched in this order, the
  first hit wins: the supporting-fact sentences (as annotated: support_paragraph/start/end), the
  supporting paragraphs' titles, the supporting paragraphs' whole texts, then the other paragraphs'
  texts and titles. Within each place an exact match is tried before a case-insensitive one.
  """
  answer = _text(example["answer"]).strip()
  if answer.lower() in ("yes", "no"):
    start = YES_NO_PREFIX.index(answer.lower())
    return "prefix", -1, start, start + len(answer)
  titles = [_text(t) for t in example["titles"]]
  paragraphs = [_text(p) for p in example["paragraphs"]]
  supporting = np.asarray(example["supporting"], bool)
  places = [("text", int(p), int(a), int(b)) for p, a, b in zip(
      example.get("support_paragraph", ()), example.get("support_start", ()), example.get("support_end", ()))]
  gold = [int(p) for p in np.flatnonzero(supporting)]
  other = [int(p) for p in np.flatnonzero(~supporting)]
  places += [("title", p, 0, len(titles[p])) for p in gold] + [("text", p, 0, len(paragraphs[p])) for p in gold]
  places += [("text", p, 0, len(paragraphs[p])) for p in other] + [("title", p, 0, len(titles[p])) for p in other]
  for part, p, a, b in places:
    haystack = (titles if part == "title" else paragraphs)[p][a:b]
    at = haystack.find(answer)
    if at < 0 and len(haystack.lower()) == len(haystack):  # lower() must keep the character positions
      at = haystack.lower().find(answer.lower())
    if at >= 0:
      return part, p, a + at, a + at + len(answer)
  return None


def pair_template(tokenizer) -> dict:
  """The tokenizer's special tokens around a (question, context) pair and each part's token type.

  Read off one encoded pair, so BERT ([CLS] q [SEP] c [SEP]), RoBERTa (<s> q </s></s> c </s>), ...
  all work. Returns lists of ints: before/between/after (+ *_types), and question_type,
  context_type, pad (the pad token id).
  """
  enc = tokenizer("question", "context")
  ids, seq = list(enc["input_ids"]), enc.sequence_ids()
  types = list(enc.get("token_type_ids") or [0] * len(ids))
  q = [i for i, s in enumerate(seq) if s == 0]
  c = [i for i, s in enumerate(seq) if s == 1]
  parts = {"before": slice(0, q[0]), "between": slice(q[-1] + 1, c[0]), "after": slice(c[-1] + 1, len(ids))}
  out = {name: ids[cut] for name, cut in parts.items()}
  out.update({f"{name}_types": types[cut] for name, cut in parts.items()})
  out.update(question_type=types[q[0]], context_type=types[c[0]], pad=tokenizer.pad_token_id or 0)
  return out


def _token_span(offsets: np.ndarray, char_start: int, char_end: int) -> tuple[int, int] | None:
  """Inclusive token indices of the tokens overlapping [char_start, char_end); None if none do."""
  inside = np.flatnonzero((offsets[:, 1] > char_start) & (offsets[:, 0] < char_end))
  return (int(inside[0]), int(inside[-1])) if len(inside) else None


def _window(num_tokens: int, cap: int, answer: tuple[int, int] | None) -> tuple[int, int]:
  """[start, end) of the paragraph tokens kept: the first `cap`, or, when the answer ends past
  them, `cap` tokens ending ANSWER_MARGIN tokens after it (all of an answer longer than that)."""
  if not cap or num_tokens <= cap:
    return 0, num_tokens
  if answer is None or answer[1] < cap:
    return 0, cap
  end = min(num_tokens, answer[1] + 1 + ANSWER_MARGIN)
  return min(max(0, end - cap), answer[0]), end


def prepare_hotpot(tokenizer, example: dict, index: int, paragraph_tokens: int, question_tokens: int,
                   with_offsets: bool = False) -> dict:
  """One HotpotQA example (the builder's features) -> its tokens, for `hotpot_views`.

  Paragraph p becomes one piece, the tokens of f"{title}:" then of the paragraph's text cut to
  `paragraph_tokens` (0: no cap; the answer's paragraph keeps the answer, see `_window`); the
  question is cut to `question_tokens` (0: no cap).
  Returns a dict: index, question int32[<= question_tokens], prefix int32[2] (the "yes no" tokens),
  pieces [P] of int32[n_p], title_tokens int32[P] (tokens of each piece's title part), supporting
  bool[P], answer (piece, first token, last token) with piece -1 for the prefix, or None when the
  answer is nowhere or was cut off. with_offsets adds, for decoding, prefix_offsets int32[2, 2],
  piece_offsets [P] of int32[n_p, 2] (character spans in piece_texts) and piece_texts [P] of str
  (f"{title}: {kept text} ").
  """
  titles = [_text(t) for t in example["titles"]]
  paragraphs = [_text(p) for p in example["paragraphs"]]
  answer = locate_answer(example)
  words = dict(add_special_tokens=False, return_offsets_mapping=True)
  question = tokenizer(_text(example["question"]).strip(), add_special_tokens=False)["input_ids"]
  question = question[:question_tokens or None]
  prefix = tokenizer(YES_NO_PREFIX.strip(), **words)
  title_enc = tokenizer([f"{t}:" for t in titles], **words)
  text_enc = tokenizer(paragraphs, **words)
  pieces, piece_offsets, piece_texts, title_tokens = [], [], [], []
  answer_tokens = None
  if answer is not None and answer[0] == "prefix":
    span = _token_span(np.asarray(prefix["offset_mapping"]).reshape(-1, 2), answer[2], answer[3])
    answer_tokens = (-1, *span) if span else None
  for p, (title, text) in enumerate(zip(titles, paragraphs)):
    t_ids, t_off = title_enc["input_ids"][p], np.asarray(title_enc["offset_mapping"][p], np.int32).reshape(-1, 2)
    x_ids, x_off = text_enc["input_ids"][p], np.asarray(text_enc["offset_mapping"][p], np.int32).reshape(-1, 2)
    in_text = in_title = None
    if answer is not None and answer[1] == p:
      if answer[0] == "text":
        in_text = _token_span(x_off, answer[2], answer[3])
      else:
        in_title = _token_span(t_off, answer[2], answer[3])
    start, end = _window(len(x_ids), paragraph_tokens, in_text)
    pieces.append(np.asarray(list(t_ids) + list(x_ids[start:end]), np.int32))
    title_tokens.append(len(t_ids))
    if in_title is not None:
      answer_tokens = (p, *in_title)
    elif in_text is not None and start <= in_text[0] and in_text[1] < end:
      answer_tokens = (p, len(t_ids) + in_text[0] - start, len(t_ids) + in_text[1] - start)
    if with_offsets:
      kept = x_off[start:end]
      first = int(kept[0, 0]) if len(kept) else 0
      last = int(kept[-1, 1]) if len(kept) else 0
      shift = len(title) + 2  # text characters start after f"{title}: "
      piece_offsets.append(np.concatenate([t_off, kept - first + shift]).astype(np.int32))
      piece_texts.append(f"{title}: {text[first:last]} ")
  out = {"index": int(index), "question": np.asarray(question, np.int32),
         "prefix": np.asarray(prefix["input_ids"], np.int32), "pieces": pieces,
         "title_tokens": np.asarray(title_tokens, np.int32),
         "supporting": np.asarray(example["supporting"], bool), "answer": answer_tokens}
  if with_offsets:
    out.update(prefix_offsets=np.asarray(prefix["offset_mapping"], np.int32).reshape(-1, 2),
               piece_offsets=piece_offsets, piece_texts=piece_texts)
  return out


def _room(prepared: dict, shown: Sequence[int], budget: int) -> dict[int, int]:
  """Tokens each shown piece gets within `budget`: the answer's piece first, then the other
  supporting pieces, then the rest in the shown order; a piece that gets no more than its title
  gets nothing."""
  answer_piece = prepared["answer"][0] if prepared["answer"] is not None else -1
  supporting = prepared["supporting"]
  first = [p for p in shown if p == answer_piece]
  order = first + [p for p in shown if supporting[p] and p != answer_piece]
  order += [p for p in shown if not supporting[p] and p != answer_piece]
  room = {}
  for p in order:
    take = min(len(prepared["pieces"][p]), budget)
    room[p] = take if take > prepared["title_tokens"][p] else 0
    budget -= room[p]
  return room


def assemble_view(prepared: dict, template: dict, shown: Sequence[int], max_length: int) -> dict:
  """One view: the shown pieces (paragraph indices, in this order) after the question.

  Returns input_ids/attention_mask/token_type_ids int32[L] (L = max_length), start/end int32 scalars
  (IGNORE_INDEX when the answer is not in this view), tokens int32[P] (tokens of each paragraph in
  the view, title included; 0 = not shown), and with a prepared example that has offsets,
  offsets int32[L, 2] (character spans in `context`, -1 outside it) and context (str).
  """
  question = prepared["question"]
  fixed = (len(template["before"]) + len(question) + len(template["between"]) + len(prepared["prefix"])
           + len(template["after"]))
  if fixed >= max_length:
    raise ValueError(f"max_length={max_length} leaves no room for paragraphs after a question of "
                     f"{len(question)} tokens; lower question_tokens or raise max_length")
  room = _room(prepared, shown, max_length - fixed)
  context_start = len(template["before"]) + len(question) + len(template["between"])
  ids = list(template["before"]) + list(question) + list(template["between"]) + list(prepared["prefix"])
  types = (list(template["before_types"]) + [template["question_type"]] * len(question)
           + list(template["between_types"]) + [template["context_type"]] * len(prepared["prefix"]))
  start = end = IGNORE_INDEX
  answer = prepared["answer"]
  if answer is not None and answer[0] == -1:
    start, end = context_start + answer[1], context_start + answer[2]
  offsets = [[-1, -1]] * context_start + [list(o) for o in prepared.get("prefix_offsets", [])]
  context = YES_NO_PREFIX
  tokens = np.zeros(len(prepared["pieces"]), np.int32)
  for p in shown:
    n = room[p]
    if not n:
      continue
    if answer is not None and answer[0] == p and answer[2] < n:
      start, end = len(ids) + answer[1], len(ids) + answer[2]
    ids += list(prepared["pieces"][p][:n])
    types += [template["context_type"]] * n
    tokens[p] = n
    if "piece_offsets" in prepared:
      kept = prepared["piece_offsets"][p][:n]
      offsets += (kept + len(context)).tolist()
      context += prepared["piece_texts"][p][:int(kept[-1, 1])] + " "
  ids += list(template["after"])
  types += list(template["after_types"])
  pad = max_length - len(ids)
  view = {"input_ids": np.asarray(ids + [template["pad"]] * pad, np.int32),
          "attention_mask": np.asarray([1] * len(ids) + [0] * pad, np.int32),
          "token_type_ids": np.asarray(types + [0] * pad, np.int32),
          "start": np.int32(start), "end": np.int32(end), "tokens": tokens}
  if "piece_offsets" in prepared:
    view["offsets"] = np.asarray(offsets + [[-1, -1]] * (max_length - len(offsets)), np.int32)
    view["context"] = context
  return view


def hotpot_views(prepared: dict, template: dict, num_crops: int, max_length: int,
                 rng: np.random.Generator | None) -> dict:
  """One prepared example -> its V = 1 + num_crops views, stacked.

  With an rng (training): one draw of the paragraph order, of the distractor permutation and of
  the crop sizes (`crop_keep_counts`); view j shows the supporting paragraphs, the answer's
  paragraph and the first n_j permuted distractors (nested: view j's distractors contain view
  j+1's), all in the drawn order. rng None (evaluation): the original order, num_crops = 0.
  Returns input_ids/attention_mask/token_type_ids int32[V, L], start/end int32[V] (IGNORE_INDEX
  where the answer is not in that view), kept int32[V, P] (the paragraphs the crop keeps, 0/1),
  tokens int32[V, P] (tokens of each paragraph in the view), and offsets int32[V, L, 2] and
  context [V] of str when `prepared` has offsets.
  """
  count = len(prepared["pieces"])
  keep = prepared["supporting"].copy()
  if prepared["answer"] is not None and prepared["answer"][0] >= 0:
    keep[prepared["answer"][0]] = True
  if rng is None:
    if num_crops:
      raise ValueError("crop views are drawn at random: pass an rng")
    order, distractors, counts = np.arange(count), np.flatnonzero(~keep), [int((~keep).sum())]
  else:
    order = rng.permutation(count)
    distractors = rng.permutation(np.flatnonzero(~keep))
    counts = crop_keep_counts(len(distractors), num_crops, rng)
  views = []
  for n in counts:
    kept = keep.copy()
    kept[distractors[:n]] = True
    view = assemble_view(prepared, template, [int(p) for p in order if kept[p]], max_length)
    view["kept"] = kept.astype(np.int32)
    views.append(view)
  return {k: (np.stack([v[k] for v in views]) if k != "context" else [v[k] for v in views]) for k in views[0]}


def view_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
  """The generator of example `index`'s views in pass `epoch` of a run seeded `seed`."""
  return np.random.default_rng([seed, epoch, index])


class HotpotTrainViews:
  """Prepared training examples whose views depend on the pass over the data.

  `views(prepared, epoch)` -> {'views': {input_ids/attention_mask/token_type_ids int32[V, L],
  start/end int32[V]}}, drawn with `view_rng(seed, epoch, prepared['index'])`. Indexing gives
  pass 0's (what a model is initialised on); `iterator` is the training pipeline.
  """

  def __init__(self, prepared: Sequence[dict], template: dict, num_crops: int, max_length: int, seed: int):
    self.prepared, self.template = list(prepared), template
    self.num_crops, self.max_length, self.seed = num_crops, max_length, seed

  def __len__(self) -> int:
    return len(self.prepared)

  def __getitem__(self, i: int) -> dict:
    return self.views(self.prepared[i], 0)

  def views(self, prepared: dict, epoch: int) -> dict:
    drawn = hotpot_views(prepared, self.template, self.num_crops, self.max_length,
                         view_rng(self.seed, epoch, prepared["index"]))
    return {"views": {k: drawn[k] for k in VIEW_KEYS}}

  def iterator(self, global_batch_size: int, worker_threads: int = 2) -> grain.DatasetIterator:
    """Shuffled (reshuffled every pass, as trainkit.make_train_iterator with the same seed),
    host-sharded batches of views: dicts {'views': {k: [b, V, ...]}}, b = global / process count.

    The views are drawn after the shuffle from the element's position in the repeated dataset
    (pass = position // len), so they are a function of (seed, pass, example index) only; the
    iterator's checkpointed state is its position, and a resumed run draws the same views.
    """
    hosts = jax.process_count()
    if global_batch_size % hosts:
      raise ValueError(f"global batch size {global_batch_size} is not divisible by {hosts} processes")
    n = len(self.prepared)
    ds = grain.MapDataset.source(self.prepared).shuffle(seed=self.seed).repeat(None)
    ds = ds.map_with_index(lambda position, prepared: self.views(prepared, position // n))
    ds = host_blocks(ds, global_batch_size // hosts, jax.process_index(), hosts)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=worker_threads, prefetch_buffer_size=4))
    return iter(ds.batch(global_batch_size // hosts, drop_remainder=True))


def hotpot_eval_arrays(prepared: Sequence[dict], template: dict, max_length: int) -> dict:
  """Full views (every paragraph, original order) of prepared examples (with offsets), for
  `best_spans`: input_ids/attention_mask/token_type_ids/start/end int32[N, L or -], offsets
  int32[N, L, 2], example_index int32[N], contexts [N] of str."""
  views = [hotpot_views(p, template, 0, max_length, None) for p in prepared]
  out = {k: np.stack([v[k][0] for v in views]) for k in VIEW_KEYS + ("offsets",)}
  out["example_index"] = np.arange(len(views), dtype=np.int32)
  out["contexts"] = [v["context"][0] for v in views]
  return out
