"""The one strict answer parser, used by the RL rewards and by evaluation alike.

* The answer is the content of the LAST `<answer>...</answer>` block; no block or an empty block
  is no answer (never guessed, never a random option).
* With options (multiple choice) the answer is an option letter: "B", "(B)", "B.", "B) text",
  "B: text", "B. text", "Option B", "The answer is B", or the text of one option (options given
  with or without their "A. " prefixes). A lowercase "a" is the article, not option A; a letter
  that is not an option is no answer.
* Without options the answer is its text with whitespace collapsed and the surrounding quotes and
  final full stop removed; case is kept (OCR is scored case-sensitively, like Video-R1). How it is
  compared with the truth is the scorer's business (accuracy.py).
"""

from __future__ import annotations

import re
import string

from rewatch_jax.data.records import LETTERS

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
# "B", "(B)", "B.", "B) text", "B: text", optionally after "option", "answer is", "answer:"
_LETTER = re.compile(r"^(?:(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)(?:\s+is)?\s*:?\s*)?"
                     r"(\()?([A-Ha-h])(?(1)\)|(?=[.):]|\s|$))[.):]?(?:\s+(.*))?$", re.I | re.S)
_PREFIX = re.compile(r"^\(?[A-H][.):]\s*")


def extract_answer(text: str) -> str | None:
  """The stripped content of the last `<answer>` block, or None (no block, or an empty one)."""
  found = _ANSWER.findall(text or "")
  if not found:
    return None
  answer = found[-1].strip()
  return answer or None


def answer_unclosed(text: str) -> bool:
  """An `<answer>` opened after the last `</answer>`: a response cut off mid-answer."""
  text = text or ""
  return text.rfind("<answer>") > text.rfind("</answer>")


def parse_answer(response: str, options=None) -> str | None:
  """The answer a response gives (see the module docstring): an option letter when `options` are
  given, else the answer's text; None when it gives no usable answer."""
  answer = extract_answer(response)
  if answer is None:
    return None
  if not options:
    text = re.sub(r"\s+", " ", answer).strip().removesuffix(".").strip().strip("\"'`").strip()
    return text or None
  return choice_letter(answer, options)


def choice_letter(answer: str, options) -> str | None:
  """The option letter an MC answer names (options with or without "A. " prefixes), or None."""
  texts = [_PREFIX.sub("", str(o)).strip() for o in options]
  letters = LETTERS[:len(texts)]
  text = answer.strip()
  norm = normalise(text)  # an option's own text first: "A cat" is the option "cat", whatever its letter
  matches = [letter for letter, option in zip(letters, texts) if norm == normalise(option)]
  if len(matches) == 1:
    return matches[0]
  m = _LETTER.match(text)
  if m:
    letter, said = m.group(2), text.lower()
    framed = m.group(1) or said.startswith(("option", "the", "answer", "correct", "choice"))
    if letter.isupper() or framed:  # a bare lowercase "a" is the article
      return letter.upper() if letter.upper() in letters else None
  return None


def normalise(text: str) -> str:
  """Lowercase, surrounding punctuation and a leading article removed, whitespace collapsed."""
  text = text.strip().lower().strip(string.punctuation + " ")
  text = re.sub(r"^(the|a|an)\s+", "", text)
  return re.sub(r"\s+", " ", text)
