"""How right an answer is, by the record's `answer_type` (records.ANSWER_TYPES), as Video-R1
scores its RL data. Scores lie in [0, 1]; an unparseable answer scores 0 (the caller counts it).

* multiple choice: the option letter (answers.parse_answer).
* numerical: by value: 3.5 = 3.50 = "3.5 seconds", "1,200.5" = 1200.5, "twelve" = 12.
* regression: 1 - relative error, floored at 0.
* OCR: 1 - word error rate (jiwer), floored at 0; case-sensitive, as Video-R1.
* free-form: the mean of ROUGE-1, ROUGE-2 and ROUGE-L F-measures (rouge-score), as Video-R1.
* time span: the intersection over union of two [start, end] spans ("[01:05-01:20]", "65-80").
* open: the normalised texts equal (answers.normalise; numbers by value). Paraphrases need an
  answer judge (rewards/judges.py), which the reward consults where configured.
"""

from __future__ import annotations

import functools
import math
import re

import jiwer
from rouge_score import rouge_scorer
from word2number import w2n

from rewatch_jax.data.records import QARecord, parse_timestamp
from rewatch_jax.rewards.answers import normalise, parse_answer

_NUMBER = re.compile(r"^[^\d+\-.]*?([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)(?:\s*[a-z%°]+\.?)*$", re.I)
_TIME = r"\d+(?::\d+){1,2}|\d+(?:\.\d+)?"
_SPAN = re.compile(rf"^\[?\s*({_TIME})\s*(?:s|sec|seconds)?\s*(?:-|–|to)\s*({_TIME})\s*(?:s|sec|seconds)?\s*\]?$", re.I)


def score_answer(response: str, record: QARecord) -> tuple[str | None, float]:
  """(the parsed answer, its accuracy) for a model's full response to `record`."""
  answer = parse_answer(response, record.options if record.form == "mc" else None)
  return answer, accuracy(answer, record)


def accuracy(answer: str | None, record: QARecord) -> float:
  """The accuracy of a parsed answer (see the module docstring)."""
  if answer is None:
    return 0.0
  kind, truth = record.answer_type, record.answer
  if kind == "multiple choice":
    return float(answer == truth)
  if kind in ("numerical", "regression"):
    got, want = to_number(answer), to_number(truth)
    if got is None or want is None:
      return 0.0
    if kind == "numerical":
      return float(math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9))
    return max(0.0, 1.0 - abs(got - want) / (abs(want) or 1.0))
  if kind == "OCR":
    return max(0.0, 1.0 - jiwer.wer(truth, answer))
  if kind == "free-form":
    scores = _rouge().score(truth, answer)
    return sum(s.fmeasure for s in scores.values()) / len(scores)
  if kind == "time span":
    got, want = to_span(answer), to_span(truth)
    return 0.0 if got is None or want is None else iou(got, want)
  got, want = to_number(answer), to_number(truth)  # open
  if got is not None and want is not None:
    return float(math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9))
  return float(normalise(answer) == normalise(truth))


def to_number(text: str) -> float | None:
  """A number written with digits (commas, a unit or a sign allowed) or in words, else None."""
  text = text.strip().replace(",", "")
  m = _NUMBER.match(text)
  if m:
    return float(m.group(1))
  try:
    return float(w2n.word_to_num(text.lower()))
  except ValueError:
    return None


def to_span(text: str) -> tuple[float, float] | None:
  """A time span "[MM:SS-MM:SS]", "MM:SS to MM:SS" or "12.5-20 s" in seconds, else None."""
  m = _SPAN.match(text.strip())
  if not m:
    return None
  start, end = (parse_timestamp(t) if ":" in t else float(t) for t in m.groups())
  return (start, end) if start <= end else None


def iou(a: tuple[float, float], b: tuple[float, float]) -> float:
  inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
  union = max(a[1], b[1]) - min(a[0], b[0])
  return inter / union if union > 0 else float(a == b)


@functools.cache
def _rouge() -> rouge_scorer.RougeScorer:
  return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
