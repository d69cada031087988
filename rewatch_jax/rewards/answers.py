"""The one strict answer parser, used by rewards and evaluation alike.

* The answer is the content of the LAST `<answer>...</answer>` block; no block or an empty block
  is unparseable (never guessed, never a random option).
* MC answers normalise to a letter: "B", "(B)", "B.", "B) text", "B: text", "Option B", or the
  exact text of one option. A lowercase "a" is the article, not option A.
* Open answers compare after light normalisation (case, surrounding punctuation, articles);
  anything fuzzier is a judge's job (rewards/judges, a later module).
"""

from __future__ import annotations

import re
import string

from rewatch_jax.data.records import LETTERS

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
_LETTER = re.compile(r"^\(?(?:option\s+)?([A-H])(?:[.):]|\s|$)", re.I)


def extract_answer(text: str) -> str | None:
  found = _ANSWER.findall(text or "")
  if not found:
    return None
  answer = found[-1].strip()
  return answer or None


def answer_unclosed(text: str) -> bool:
  """An `<answer>` opened after the last `</answer>`: a response cut off mid-answer."""
  text = text or ""
  return text.rfind("<answer>") > text.rfind("</answer>")


def choice_letter(answer: str, options: tuple[str, ...] | list[str]) -> str | None:
  """The option letter an MC answer names, or None."""
  letters = LETTERS[:len(options)]
  text = answer.strip()
  m = _LETTER.match(text)
  if m and (m.group(1).isupper() or text.lower().startswith(("option", "("))) and m.group(1).upper() in letters:
    return m.group(1).upper()
  norm = normalise(text)
  for letter, option in zip(letters, options):
    if norm == normalise(option):
      return letter
  return None


def normalise(text: str) -> str:
  text = text.strip().lower().strip(string.punctuation + " ")
  text = re.sub(r"^(the|a|an)\s+", "", text)
  return re.sub(r"\s+", " ", text)


def is_correct(response: str, answer: str, form: str, options=()) -> bool | None:
  """True/False for a parseable response, None when no answer can be parsed."""
  pred = extract_answer(response)
  if pred is None:
    return None
  if form == "mc":
    letter = choice_letter(pred, options)
    return None if letter is None else letter == answer
  return normalise(pred) == normalise(answer)
