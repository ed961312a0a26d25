"""Conversation templates and their tokenisation: ids, a loss mask over assistant tokens, named spans.

    messages = llava_record_to_messages(record, retrieved=record.get("retrieved_caption"))
    tok = tokenize_conversation(messages, tokenizer, "llava_llama_2", tokens_per_image=576,
                                image_token_id=32000, max_length=1200)
    tok.input_ids, tok.attention_mask, tok.loss_mask, tok.spans["retrieved"], tok.spans["image"]

A message is {"role": "system" | "user" | "assistant", "content": str or [(kind, text), ...]}. In a
string, every `<image>` is an image; in a list, kind is 'text' or a named segment: 'image', 'retrieved',
'caption', 'question'. Spans of named segments are token index ranges [start, end) of the final ids, so
the TGA loss takes them from here, never from hard-coded offsets.

Templates (LLaVA's conversation.py, with the tokenizer's own BOS/EOS in place of literal `<s>`/`</s>`):
  plain            stage 1: the images, then the assistant's text and "\\n"; the user's words are dropped
  vicuna_v1        "{system} USER: {q} ASSISTANT: {a}{eos}USER: ..."                       (LLaVA-1.5)
  llava_llama_2    "[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{q} [/INST] {a} {eos}{bos}[INST] ..."
  mistral_instruct "[INST] {q} [/INST] {a} {eos}[INST] ..." (a system prompt, if any, as in llava_llama_2)
  chat_template    the tokenizer's own chat template (`tokenizer.chat_template`)
The loss mask covers the assistant's words and the end-of-turn text after them up to and including EOS
(for chat templates: up to the tokenizer's EOS token if it follows, e.g. `<|im_end|>`); nothing else.
A BOS is prepended when the tokenizer adds one by itself (as LLaVA's tokenizer_image_token keeps it).
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

IMAGE = "<image>"
SEGMENTS = ("image", "retrieved", "caption", "question")
KINDS = ("text",) + SEGMENTS
TEMPLATES = ("plain", "vicuna_v1", "llava_llama_2", "mistral_instruct", "chat_template")
SYSTEMS = {
    "vicuna_v1": ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                  "helpful, detailed, and polite answers to the user's questions."),
    "llava_llama_2": ("You are a helpful language and vision assistant. You are able to understand the visual "
                      "content that the user provides, and assist the user with a variety of tasks using natural "
                      "language."),
    "mistral_instruct": "",
    "plain": "",
}
ROLES = ("system", "user", "assistant")


@dataclasses.dataclass
class Piece:
  """A run of prompt text: its segment name (None for plain text) and whether the loss covers it."""
  text: str
  segment: str | None = None
  train: bool = False


@dataclasses.dataclass
class TokenizedConversation:
  """One tokenised conversation, padded to max_length (right padding) when one is given.

  input_ids int32[L]; attention_mask int32[L]; loss_mask bool[L]: token t is a target (an assistant
  token), i.e. the LM loss reads the logits at t - 1 for it; spans {name: [(start, end), ...]} over the
  named segments; num_images: images whose placeholders survived truncation; truncated: whether tokens
  were cut at max_length; length: real tokens.
  """
  input_ids: np.ndarray
  attention_mask: np.ndarray
  loss_mask: np.ndarray
  spans: dict[str, list[tuple[int, int]]]
  num_images: int
  truncated: bool
  length: int

  def segment_masks(self, names=SEGMENTS) -> dict[str, np.ndarray]:
    """{name: bool[L]} for the named segments (all False where a segment is absent)."""
    return {name: spans_to_mask(self.spans.get(name, []), len(self.input_ids)) for name in names}


def spans_to_mask(spans, length: int) -> np.ndarray:
  mask = np.zeros(length, bool)
  for start, end in spans:
    mask[start:end] = True
  return mask


def _pieces_of(content, where: str) -> list[Piece]:
  """Message content (a string with <image> marks, or (kind, text) pairs) -> pieces with segment names."""
  if isinstance(content, str):
    parts = re.split(f"({re.escape(IMAGE)})", content)
    return [Piece(IMAGE, "image") if part == IMAGE else Piece(part) for part in parts if part]
  pieces = []
  for i, item in enumerate(content):
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], str)):
      raise ValueError(f"{where}: content item {i} is {item!r}; expected (kind, text)")
    kind, text = item
    if kind not in KINDS:
      raise ValueError(f"{where}: content item {i} has kind {kind!r}; expected one of {KINDS}")
    if kind == "image":
      pieces.append(Piece(IMAGE, "image"))
    elif IMAGE in text:
      raise ValueError(f"{where}: content item {i} ({kind}) contains {IMAGE!r}; give images as ('image', '<image>')")
    elif text:
      pieces.append(Piece(text, None if kind == "text" else kind))
  return pieces


def _check_messages(messages) -> tuple[str | None, list[tuple[str, list[Piece]]]]:
  """(system text or None, [(role, pieces)]) with roles checked: user/assistant alternate, user first."""
  if not messages:
    raise ValueError("conversation: no messages")
  system = None
  turns = []
  for i, message in enumerate(messages):
    role = message.get("role") if isinstance(message, dict) else None
    if role not in ROLES:
      raise ValueError(f"message {i}: role {role!r}; expected one of {ROLES}")
    if role == "system":
      if i:
        raise ValueError(f"message {i}: a system message must come first")
      system = message["content"]
      if not isinstance(system, str):
        raise ValueError("message 0: the system content must be a string")
      continue
    expected = "user" if len(turns) % 2 == 0 else "assistant"
    if role != expected:
      raise ValueError(f"message {i}: role {role!r} where {expected!r} was expected (user and assistant alternate, "
                       f"user first)")
    turns.append((role, _pieces_of(message.get("content", ""), f"message {i}")))
  return system, turns


def _train(pieces: list[Piece]) -> list[Piece]:
  return [dataclasses.replace(p, train=True) for p in pieces]


def render(messages, template: str, tokenizer=None, system: str | None = None,
           add_generation_prompt: bool = False) -> list[Piece]:
  """The prompt as pieces (text, segment, train) for one of TEMPLATES.

  Args:
    system: overrides the template's default system prompt (a system message overrides both).
    add_generation_prompt: end with the assistant's cue (inference), when the last turn is the user's.
  """
  if template not in TEMPLATES:
    raise ValueError(f"template {template!r}: expected one of {TEMPLATES}")
  if template == "chat_template":
    return _render_chat_template(messages, tokenizer, system, add_generation_prompt)
  own_system, turns = _check_messages(messages)
  system = own_system if own_system is not None else (system if system is not None else SYSTEMS[template])
  eos = getattr(tokenizer, "eos_token", None) or "</s>"
  bos = getattr(tokenizer, "bos_token", None) or "<s>"
  out: list[Piece] = []
  if template == "plain":
    if len(turns) > 2:
      raise ValueError(f"template 'plain' takes one user turn (its images) and one assistant turn; got "
                       f"{len(turns)} turns")
    images = [p for p in turns[0][1] if p.segment == "image"]
    out += images
    if len(turns) == 2:
      out += _train(turns[1][1]) + [Piece("\n", train=True)]
    return out
  if template == "vicuna_v1":
    out.append(Piece(system + " "))
    for role, pieces in turns:
      if role == "user":
        out += [Piece("USER: ")] + pieces + [Piece(" ")]
      else:
        out += [Piece("ASSISTANT: ")] + _train(pieces) + [Piece(eos, train=True)]
    if add_generation_prompt and turns[-1][0] == "user":
      out.append(Piece("ASSISTANT:"))
    return out
  # llava_llama_2 and mistral_instruct: LLaVA's LLAMA_2 separator style.
  for i, (role, pieces) in enumerate(turns):
    if role == "user":
      if i:
        out.append(Piece(bos if template == "llava_llama_2" else ""))
      head = "[INST] " + (f"<<SYS>>\n{system}\n<</SYS>>\n\n" if i == 0 and system else "")
      out += [Piece(head)] + pieces + [Piece(" [/INST]")]
    else:
      out += [Piece(" ")] + _train(pieces) + [Piece(" " + eos, train=True)]
  return [p for p in out if p.text]


def _render_chat_template(messages, tokenizer, system, add_generation_prompt) -> list[Piece]:
  """Renders the tokenizer's chat template with a sentinel per message, then puts the pieces back."""
  if tokenizer is None or not getattr(tokenizer, "chat_template", None):
    raise ValueError("template 'chat_template': the tokenizer carries no chat template")
  own_system, turns = _check_messages(messages)
  chat = []
  system = own_system if own_system is not None else system
  if system is not None:
    chat.append({"role": "system", "content": system})
  sentinels = []
  for i, (role, _) in enumerate(turns):
    sentinels.append(f"\x02MSG{i}\x03")
    chat.append({"role": role, "content": sentinels[-1]})
  text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=add_generation_prompt)
  eos = getattr(tokenizer, "eos_token", None)
  out: list[Piece] = []
  position = 0
  for i, (role, pieces) in enumerate(turns):
    at = text.find(sentinels[i], position)
    if at < 0:
      raise ValueError(f"template 'chat_template': message {i} does not appear verbatim in the rendered template "
                       f"(the template rewrites message content)")
    out.append(Piece(text[position:at]))
    position = at + len(sentinels[i])
    if role == "assistant":
      out += _train(pieces)
      # The end-of-turn token after the answer is what the model must learn to emit to stop.
      following = text[position:]
      stop = following.find(eos) if eos else -1
      nxt = following.find("\x02")
      if stop >= 0 and (nxt < 0 or stop < nxt):
        out.append(Piece(following[:stop + len(eos)], train=True))
        position += stop + len(eos)
    else:
      out += pieces
  out.append(Piece(text[position:]))
  return [p for p in out if p.text]


def _adds_bos(tokenizer) -> bool:
  bos = getattr(tokenizer, "bos_token_id", None)
  if bos is None:
    return False
  ids = tokenizer("a", add_special_tokens=True)["input_ids"]
  return bool(ids) and ids[0] == bos


def tokenize_pieces(pieces: list[Piece], tokenizer, image_token_id: int, tokens_per_image: int,
                    max_length: int | None = None, pad: bool = True, add_bos: bool | None = None
                    ) -> TokenizedConversation:
  """Token ids of rendered pieces: text between images tokenised in one go (offsets map each token to
  the piece holding its last character), each image expanded to `tokens_per_image` placeholder ids.

  Truncation at max_length never splits an image: an image that would not fit is dropped whole, with
  everything after it.
  """
  ids: list[int] = []
  piece_of: list[int] = []  # per token: index of its piece (-1: BOS)
  if add_bos if add_bos is not None else _adds_bos(tokenizer):
    ids.append(tokenizer.bos_token_id)
    piece_of.append(-1)
  i = 0
  while i < len(pieces):
    if pieces[i].segment == "image":
      ids += [image_token_id] * tokens_per_image
      piece_of += [i] * tokens_per_image
      i += 1
      continue
    j = i
    while j < len(pieces) and pieces[j].segment != "image":
      j += 1
    text = "".join(p.text for p in pieces[i:j])
    ends = np.cumsum([len(p.text) for p in pieces[i:j]])
    try:
      encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError as e:
      raise ValueError(f"{type(tokenizer).__name__}: spans need character offsets, which only fast (tokenizers-"
                       f"backed) tokenizers give; load it with use_fast=True") from e
    for token, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"]):
      last = max(end - 1, start)
      ids.append(token)
      piece_of.append(i + int(np.searchsorted(ends, last, side="right")))
    i = j

  truncated = False
  if max_length is not None and len(ids) > max_length:
    truncated = True
    cut = max_length
    # A cut inside an image's placeholder run backs off to the run's start: images stay whole.
    inside = piece_of[cut] >= 0 and pieces[piece_of[cut]].segment == "image"
    while inside and cut > 0 and piece_of[cut - 1] == piece_of[cut]:
      cut -= 1
    ids, piece_of = ids[:cut], piece_of[:cut]

  length = len(ids)
  spans: dict[str, list[tuple[int, int]]] = {}
  loss = np.zeros(length, bool)
  t = 0
  while t < length:
    p = piece_of[t]
    end = t
    while end < length and piece_of[end] == p:
      end += 1
    if p >= 0:
      piece = pieces[p]
      if piece.segment is not None:
        _add_span(spans, piece.segment, t, end)
      loss[t:end] = piece.train
    t = end
  num_images = len(spans.get("image", []))
  total = max_length if (pad and max_length is not None) else length
  pad_id = getattr(tokenizer, "pad_token_id", None)
  pad_id = 0 if pad_id is None else pad_id
  input_ids = np.full(total, pad_id, np.int32)
  input_ids[:length] = ids
  attention = np.zeros(total, np.int32)
  attention[:length] = 1
  loss_mask = np.zeros(total, bool)
  loss_mask[:length] = loss
  return TokenizedConversation(input_ids, attention, loss_mask, spans, num_images, truncated, length)


def _add_span(spans, name, start, end):
  """Adjacent pieces of one segment (an image's tokens come as one piece each) stay separate spans only
  for images; text segments that touch merge into one span."""
  runs = spans.setdefault(name, [])
  if runs and runs[-1][1] == start and name != "image":
    runs[-1] = (runs[-1][0], end)
  else:
    runs.append((start, end))


def tokenize_conversation(messages, tokenizer, template: str, *, image_token_id: int, tokens_per_image: int,
                          max_length: int | None = None, pad: bool = True, system: str | None = None,
                          add_generation_prompt: bool = False) -> TokenizedConversation:
  """render() then tokenize_pieces(): see the module docstring."""
  pieces = render(messages, template, tokenizer, system, add_generation_prompt)
  return tokenize_pieces(pieces, tokenizer, image_token_id, tokens_per_image, max_length, pad)


def llava_record_to_messages(record: dict, retrieved: str | None = None, template: str | None = None) -> list[dict]:
  """A LLaVA data record {"id", "image"?, "conversations": [{"from": "human"|"gpt", "value"}]} -> messages.

  The first human turn's `<image>` moves to the front ("<image>\\n{question}", as LLaVA's
  preprocess_multimodal does) and its words become the 'question' segment. With `retrieved` (stage 2,
  TGA) the turn reads "Retrieved Text: {retrieved}. <image>\\n{question}". With template 'plain' the
  assistant's text is the caption: it becomes the 'caption' segment.
  """
  where = f"record {record.get('id', '?')!r}"
  turns = record.get("conversations")
  if not isinstance(turns, list) or not turns:
    raise ValueError(f"{where}: 'conversations' must be a non-empty list")
  messages = []
  for i, turn in enumerate(turns):
    who, value = turn.get("from"), turn.get("value")
    if who not in ("human", "gpt") or not isinstance(value, str):
      raise ValueError(f"{where}: conversations[{i}] is {turn!r}; expected from 'human'|'gpt' and a string value")
    role = "user" if who == "human" else "assistant"
    if i == 0 and role == "user":
      images = value.count(IMAGE)
      question = value.replace(IMAGE, "").strip()
      content = []
      if retrieved is not None:
        content += [("text", "Retrieved Text: "), ("retrieved", retrieved), ("text", ". ")]
      if images:
        content += [("image", IMAGE)] * images + [("text", "\n")]
      content.append(("question", question))
    elif role == "assistant" and template == "plain":
      content = [("caption", value)]
    else:
      content = value
    messages.append({"role": role, "content": content})
  return messages


def caption_messages(caption: str, prefix: str = "Describe this scene: ") -> list[dict]:
  """The text-only run of a caption (TGA's C_j and the analysis' text run): "{prefix}{caption}"."""
  return [{"role": "user", "content": [("text", prefix), ("caption", caption)]}]
