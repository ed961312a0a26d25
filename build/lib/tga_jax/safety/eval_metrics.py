"""General-ability metrics in LLaVA-1.5's evaluation formats: short-answer VQA, multiple choice, POPE.

    vqa_accuracy("Two dogs.", ["2 dogs", "two dogs"])          # 1.0: normalised exact match
    extract_choice("The answer is (B).", "ABCD")               # "B"
    pope_metrics(["Yes, there is.", "No."], ["yes", "yes"])  # accuracy, precision, recall, f1, yes_ratio

Answer normalisation follows the VQA evaluation's spirit: lower case, punctuation dropped (a period
between digits kept), number words to digits, articles dropped, whitespace collapsed. With one
reference answer the score is exact match; with several (VQAv2's ten) it is min(1, matches / 3).
"""
from __future__ import annotations

import re

NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
           "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}


def normalize_answer(text: str) -> str:
  text = text.lower().replace("\n", " ").replace("\t", " ").strip()
  text = re.sub(r"(?<=\d),(?=\d)", "", text)  # 1,000 -> 1000
  text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)  # keep decimal points only
  text = re.sub(r"[^\w\s.]", " ", text)
  words = [NUMBERS.get(w, w) for w in text.split() if w not in ARTICLES]
  return " ".join(words)


def vqa_accuracy(prediction: str, answers) -> float:
  """Normalised exact match against one answer, or min(1, matches / 3) against several."""
  answers = [answers] if isinstance(answers, str) else list(answers)
  if not answers:
    raise ValueError("vqa_accuracy: no reference answer")
  pred = normalize_answer(prediction)
  matches = sum(pred == normalize_answer(a) for a in answers)
  return float(matches > 0) if len(answers) == 1 else min(1.0, matches / 3.0)


def extract_choice(prediction: str, letters: str = "ABCDE") -> str | None:
  """The option letter a free-form answer names: a leading letter ('B', 'B.', '(B) ...'), else 'answer is B',
  else the first lone capital letter (not the article 'A'); None if none of `letters` is found."""
  text = prediction.strip()
  allowed = "".join(sorted(set(letters.upper())))
  lead = re.match(rf"^\(?([{allowed}])(?:[).:,]|$)", text)
  if lead:
    return lead.group(1)
  said = re.search(rf"answer is:?\s*\(?([{allowed}])\b", text, flags=re.IGNORECASE)
  if said:
    return said.group(1).upper()
  for lone in re.finditer(rf"(?<![\w'])\(?([{allowed}])\)?(?![\w'])", text):
    # "A" followed by a lower-case word is the article, not option A.
    if not (lone.group(0) == "A" and re.match(r"\s+[a-z]", text[lone.end():])):
      return lone.group(1)
  return None


def mc_accuracy(predictions, answers, letters: str = "ABCDE") -> float:
  """Share of predictions whose extracted letter equals the answer letter (an unparsable one is wrong)."""
  if len(predictions) != len(answers):
    raise ValueError(f"{len(predictions)} predictions but {len(answers)} answers")
  if not predictions:
    return float("nan")
  return sum(extract_choice(p, letters) == a.strip().upper() for p, a in zip(predictions, answers)) / len(answers)


YES_NO_PARSERS = ("pope", "words")


def yes_no(prediction: str, parser: str = "pope") -> str:
  """A free-form POPE answer -> 'yes' or 'no'.

  parser='pope' reads it exactly as POPE's evaluation script (as LLaVA runs it) does: the text before the
  first '.', commas removed, split on single spaces; 'no' if a token is exactly 'No', 'no' or 'not', else
  'yes'. So 'NO', 'Not really.', 'No!', '(no)' and 'no-one is there' count as 'yes' there, as in the papers'
  numbers. parser='words' is a lenient reading for diagnosis (lower-cased words of the first sentence).
  """
  if parser == "pope":
    first = prediction.split(".")[0] if "." in prediction else prediction
    tokens = first.replace(",", "").split(" ")
    return "no" if ("No" in tokens or "no" in tokens or "not" in tokens) else "yes"
  if parser == "words":
    words = re.findall(r"[a-z']+", prediction.strip().split(".")[0].lower())
    return "no" if ("no" in words or "not" in words) else "yes"
  raise ValueError(f"parser={parser!r}: expected one of {YES_NO_PARSERS}")


def pope_metrics(predictions, labels, parser: str = "pope") -> dict:
  """Accuracy, precision, recall and F1 of 'yes' (the positive class), and the share of 'yes' answers;
  answers read by `yes_no(..., parser)`."""
  if len(predictions) != len(labels):
    raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
  labels = [str(label).strip().lower() for label in labels]
  bad = sorted({label for label in labels if label not in ("yes", "no")})
  if bad:
    raise ValueError(f"POPE labels must be 'yes' or 'no'; got {bad}")
  answers = [yes_no(p, parser) for p in predictions]
  tp = sum(a == "yes" and y == "yes" for a, y in zip(answers, labels))
  fp = sum(a == "yes" and y == "no" for a, y in zip(answers, labels))
  fn = sum(a == "no" and y == "yes" for a, y in zip(answers, labels))
  tn = sum(a == "no" and y == "no" for a, y in zip(answers, labels))
  n = len(labels)
  precision = tp / (tp + fp) if tp + fp else 0.0
  recall = tp / (tp + fn) if tp + fn else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {"n": n, "accuracy": (tp + tn) / n if n else float("nan"), "precision": precision, "recall": recall,
          "f1": f1, "yes_ratio": (tp + fp) / n if n else float("nan")}
