"""The judges the O&R reward asks, and offline ones that need no network.

A judge answers, for a batch of responses at once (so a hosted judge can send its requests
together), the reward's three questions:
* `observations`: is each observation supported by the ground-truth caption over the span its
  action points to? (r_obs)
* `reasoning`: does a reader of the observations alone reach the right answer? (r_rea)
* `answers`: does an open answer mean the ground truth? (r_acc where the rule cannot tell)
Each returns None for an item it could not judge (a failed request): the reward leaves that
sample unscored, out of its group's statistics, and counts it; never a silent 0.

`HostedJudge` asks a text model on any OpenAI-compatible endpoint, as the paper does (hosted/).
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

from rewatch_jax.data.chat import question_text
from rewatch_jax.data.records import QARecord, Segment, format_timestamp, parse_caption
from rewatch_jax.hosted import ClientConfig, HostedClient, Request
from rewatch_jax.rewards.answers import normalise, parse_answer
from rewatch_jax.rewards.format import Step


@dataclasses.dataclass(frozen=True)
class Item:
  """One response to judge: its record, the video's caption text and its re-watch steps."""
  record: QARecord
  caption: str
  steps: tuple[Step, ...]
  answer: str | None = None


class Judge:
  """The interface (see the module docstring): a judge answers `observations` and `reasoning`;
  `answers` is optional (by default every open answer is left to the rule)."""

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


# ---- the paper's judges, on a hosted text model ----

PROMPT_VERSION = "judges-v1"
ANSWER_PROMPT = ("Question: {question}\nModel Answer: {answer}\nStandard Answer: {truth}\n"
                 "Do the model answer and the standard answer mean the same? Output exactly 1 if they do, else 0.")
OBSERVATION_PROMPT = ("Here is a detailed, timestamped description of a video:\n{caption}\n\n"
                      "Someone watching the video re-watched {span} ({action}) and reported: \"{observation}\"\n"
                      "Is the report supported by the description of that time? Output exactly 1 if it is, else 0.")
INFER_PROMPT = ("Question: {question}\nA viewer of the video made these observations:\n{observations}\n"
                "Answer the question using only these observations. Put the final answer in <answer></answer>.")


def _verdict(result) -> bool | None:
  """A judge's "1" / "0", or None (a failed request or an answer that is neither)."""
  text = getattr(result, "text", None)
  if text is None:
    return None
  text = text.strip().strip(".").strip()
  return {"1": True, "0": False}.get(text[:1]) if text[:1] in "10" and len(text) <= 3 else None


class HostedJudge(Judge):
  """The paper's judges (Judge and Infer, Qwen3-30B-A3B-Instruct there) on any OpenAI-compatible
  endpoint through `hosted.HostedClient`: an observation is judged against the caption segments
  around its span, the reasoning by a model that answers from the observations alone (its answer
  then judged, or for multiple choice parsed), open answers by the answer judge. A request that
  fails for good, or a verdict that is neither 1 nor 0, judges nothing (None: unscored)."""

  def __init__(self, client, model: str, tolerance: float = 0.0):
    self.client, self.model, self.tolerance = client, model, tolerance

  @classmethod
  def from_config(cls, config) -> HostedJudge:
    h = config.rl.reward.hosted
    client = HostedClient(ClientConfig(base_url=h.base_url, api_key_env=h.api_key_env,
                                       max_concurrency=h.max_concurrency, requests_per_minute=h.requests_per_minute,
                                       tokens_per_minute=h.tokens_per_minute, timeout=h.timeout,
                                       max_retries=h.max_retries, cache_dir=h.cache_dir))
    return cls(client, h.model, config.rl.reward.tolerance)

  def _ask(self, prompts: list[str], max_tokens: int = 4) -> list:
    params = dict(temperature=0.0, max_tokens=max_tokens)
    return self.client.run([Request(self.model, [{"role": "user", "content": p}], params) for p in prompts])

  def observations(self, items: Sequence[Item]) -> list[list[bool] | None]:
    prompts, owner = [], []
    for i, item in enumerate(items):
      segments = parse_caption(item.caption)
      for step in item.steps:
        lo, hi = step.start - self.tolerance, step.end + self.tolerance
        near = [s.render() for s in segments if s.start <= hi and s.end >= lo] or ["(nothing described then)"]
        span = f"[{format_timestamp(step.start)}-{format_timestamp(step.end)}]"
        prompts.append(OBSERVATION_PROMPT.format(caption="\n".join(near), span=span, action=step.action,
                                                 observation=step.observation))
        owner.append(i)
    verdicts = [_verdict(r) for r in self._ask(prompts)]
    out: list[list[bool] | None] = [[] for _ in items]
    for i, v in zip(owner, verdicts):
      if out[i] is not None:
        out[i] = None if v is None else out[i] + [v]
    return out

  def reasoning(self, items: Sequence[Item]) -> list[bool | None]:
    prompts = [INFER_PROMPT.format(question=question_text(item.record), observations="\n".join(
        f"- [{format_timestamp(s.start)}-{format_timestamp(s.end)}] {s.observation}" for s in item.steps))
        for item in items]
    inferred = self._ask(prompts, max_tokens=256)
    out: list[bool | None] = [None] * len(items)
    ask = []
    for i, (item, result) in enumerate(zip(items, inferred)):
      text = getattr(result, "text", None)
      if text is None:
        continue
      record = item.record
      answer = parse_answer(text, record.options if record.form == "mc" else None)
      if answer is None or record.form == "mc":
        out[i] = answer == record.answer if answer is not None else False
      else:
        ask.append((i, answer))
    verdicts = self.answers([dataclasses.replace(items[i], answer=a) for i, a in ask])
    for (i, _), v in zip(ask, verdicts):
      out[i] = v
    return out

  def answers(self, items: Sequence[Item]) -> list[bool | None]:
    prompts = [ANSWER_PROMPT.format(question=item.record.question, answer=item.answer, truth=item.record.answer_text)
               for item in items]
    return [_verdict(r) for r in self._ask(prompts)] if prompts else []
