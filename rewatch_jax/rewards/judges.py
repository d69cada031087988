"""The judges the O&R reward asks, and offline ones that need no network.

A judge answers, for a batch of responses at once (so a hosted judge can send its requests
together), the reward's three questions:
* `observations`: is each observation supported by the ground-truth caption over the span its
  action points to? (r_obs)
* `reasoning`: does a reader of the observations alone reach the right answer? (r_rea)
* `answers`: does an open answer mean the ground truth? (r_acc where the rule cannot tell)
Each returns None for an item it could not judge (a failed request): the reward leaves that
sample unscored, out of its group's statistics, and counts it; never a silent 0.

`CaptionJudge` answers offline from the caption text, by word overlap: an observation is
supported when its content words all appear in the caption segments that overlap its span
widened by `tolerance` seconds (the spacing of the frames the model saw: what it could have seen
lies between two sampled frames); the reasoning check is that the answer's words appear in the
observations; open answers are left to the rule. It is exact on captions and observations written
from one vocabulary (the toy world's) and a rough proxy elsewhere, where a hosted judge belongs.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from rewatch_jax.data.records import QARecord, Segment, parse_caption
from rewatch_jax.rewards.answers import normalise
from rewatch_jax.rewards.format import Step


@dataclasses.dataclass(frozen=True)
class Item:
  """One response to judge: its record, the video's caption text and its re-watch steps."""
  record: QARecord
  caption: str
  steps: tuple[Step, ...]
  answer: str | None = None


class Judge:
  """The interface (see the module docstring); the defaults judge nothing."""

  def observations(self, items: Sequence[Item]) -> list[list[bool] | None]:
    raise NotImplementedError

  def reasoning(self, items: Sequence[Item]) -> list[bool | None]:
    raise NotImplementedError

  def answers(self, items: Sequence[Item]) -> list[bool | None]:
    """Open answers: None for every item leaves them to the rule (accuracy.py)."""
    return [None] * len(items)


_STOP = frozenset("a an the is are was were be it its of to in on at and or by from with this that there".split())


def content_words(text: str) -> set[str]:
  return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOP}


class CaptionJudge(Judge):
  """Offline judging from the caption (see the module docstring)."""

  def __init__(self, tolerance: float = 0.0):
    self.tolerance = tolerance

  def observations(self, items: Sequence[Item]) -> list[list[bool] | None]:
    return [[self.supported(parse_caption(item.caption), step) for step in item.steps] for item in items]

  def supported(self, segments: Sequence[Segment], step: Step) -> bool:
    lo, hi = step.start - self.tolerance, step.end + self.tolerance
    seen = set().union(*(content_words(s.text) for s in segments if s.start <= hi and s.end >= lo))
    claimed = content_words(step.observation)
    return bool(claimed) and claimed <= seen

  def reasoning(self, items: Sequence[Item]) -> list[bool | None]:
    out = []
    for item in items:
      observed = " " + normalise(" ".join(s.observation for s in item.steps)) + " "
      truth = normalise(item.record.answer_text)
      out.append(bool(truth) and f" {truth} " in observed)
    return out
