"""The strict check of ReWatch's response structure, and the trace it reads.

A well-formed response is free text with re-watch steps, each an `<action>...</action>`
followed (whitespace apart) by its `<observation>[MM:SS-MM:SS] what is seen</observation>`,
then exactly one `<answer>...</answer>` with nothing after it. Tags do not nest; every
observation opens with a time span that lies inside the video (spans are whole seconds, so the
end may pass the duration by up to a second of rounding); at least `min_steps` steps (1 by default:
ReWatch's CoT always re-watches). `check_format` returns the trace (steps, answer) and, when the
structure is broken, why: the steps read up to the first problem are kept, for metrics.
"""

from __future__ import annotations

import dataclasses
import re

from rewatch_jax.data.records import SPAN, RecordError, parse_timestamp

_TAG = re.compile(r"<(/?)(action|observation|answer)>")
_SPAN = re.compile(rf"^\s*{SPAN}\s*(.*)$", re.S)
ROUNDING = 1.0  # seconds a span's end may pass the duration by (timestamps are whole seconds)


@dataclasses.dataclass(frozen=True)
class Step:
  """One re-watch: what the model asked for and what it says it saw over [start, end] seconds."""
  action: str
  observation: str  # the text after the span
  start: float
  end: float


@dataclasses.dataclass(frozen=True)
class Trace:
  steps: tuple[Step, ...]
  answer: str | None  # the final answer block's text
  problem: str  # "" when well formed

  @property
  def ok(self) -> bool:
    return not self.problem


def check_format(response: str, duration: float, min_steps: int = 1) -> Trace:
  """The steps and answer of `response` to a question on a video of `duration` seconds, and the
  first way it breaks ReWatch's structure ("" when it does not)."""
  steps, answer, action = [], None, None
  expect, pos = ("action", "answer"), 0  # the tags that may open next
  for m in _TAG.finditer(response):
    closing, tag = m.group(1) == "/", m.group(2)
    if answer is not None:
      return Trace(tuple(steps), answer, f"<{m.group(1)}{tag}> after the final </answer>")
    if not closing:
      if tag not in expect:
        return Trace(tuple(steps), None, f"<{tag}> where {' or '.join(f'<{t}>' for t in expect)} was expected")
      if tag == "observation" and response[pos:m.start()].strip():
        return Trace(tuple(steps), None, "text between </action> and its <observation>")
      expect, pos = ("/" + tag,), m.end()
      continue
    if expect != ("/" + tag,):
      return Trace(tuple(steps), None, f"</{tag}> without its <{tag}>")
    body = response[pos:m.start()].strip()
    pos = m.end()
    if tag == "action":
      action, expect = body, ("observation",)
    elif tag == "observation":
      step = _step(action, body, duration)
      if isinstance(step, str):
        return Trace(tuple(steps), None, step)
      steps.append(step)
      expect = ("action", "answer")
    else:
      if not body:
        return Trace(tuple(steps), None, "empty <answer>")
      answer = body
  if answer is None:
    return Trace(tuple(steps), None, "no <answer>" if expect == ("action", "answer") else f"unclosed <{expect[0][1:]}>")
  if response[pos:].strip():
    return Trace(tuple(steps), answer, "text after the final </answer>")
  if len(steps) < min_steps:
    return Trace(tuple(steps), answer, f"{len(steps)} re-watch steps, fewer than {min_steps}")
  return Trace(tuple(steps), answer, "")


def _step(action: str, body: str, duration: float) -> Step | str:
  """The step an observation makes, or what is wrong with it."""
  m = _SPAN.match(body)
  if not m:
    return "an observation without a [MM:SS-MM:SS] span"
  try:
    start, end = parse_timestamp(m.group(1)), parse_timestamp(m.group(2))
  except RecordError as e:
    return str(e)
  if start > end or end > duration + ROUNDING:
    return f"span [{m.group(1)}-{m.group(2)}] outside the video (00:00-{duration:.0f}s) or reversed"
  if not m.group(3).strip():
    return "an observation with a span and nothing seen"
  return Step(action=action, observation=m.group(3).strip(), start=start, end=end)
