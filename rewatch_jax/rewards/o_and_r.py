"""The RL reward: accuracy + format (the paper's baseline), or Observation & Reasoning:

    r = r_acc * (1 + r_obs + r_rea) + r_fmt            (range [0, 4])

r_acc: the answer's accuracy (accuracy.py; an open answer by the answer judge where it judges);
r_fmt: 1 when the response has ReWatch's structure (format.py); r_obs: the fraction of its
observations the judge finds supported by the caption; r_rea: 1 when the judge's reader answers
right from the observations alone. A wrong answer earns only r_fmt: the process terms amplify
right answers, they never rescue wrong ones.

Decided where the paper is silent (and tested): no parseable answer gives r_acc = 0; a broken
structure gives r_fmt = 0 and r_obs = r_rea = 0 (its spans cannot be trusted); a response without
steps has r_obs = r_rea = 0; an observation whose span lies outside the video breaks the format.
The judges are asked only where their term counts (a well-formed response with r_acc > 0), unless
`judge_all` (to plot observation support for wrong answers and for the acc+fmt arm too). A judge
failure leaves the sample unscored (reward NaN, `scored` False). An open answer the answer judge
cannot judge keeps the rule's score (accuracy.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from rewatch_jax.data.records import QARecord
from rewatch_jax.rewards.accuracy import score_answer
from rewatch_jax.rewards.format import check_format
from rewatch_jax.rewards.judges import Item, Judge

KINDS = ("o_and_r", "acc_fmt")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
  kind: str = "o_and_r"  # or "acc_fmt": r = r_acc + r_fmt
  observation: bool = True  # r_obs in the O&R sum (False: the ablation without it)
  reasoning: bool = True  # r_rea likewise
  min_steps: int = 1  # re-watch steps a well-formed response has at least
  judge_all: bool = False

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"reward kind must be one of {KINDS}, got {self.kind!r}")


@dataclasses.dataclass(frozen=True)
class Sample:
  record: QARecord
  caption: str  # the video's caption text ([MM:SS-MM:SS] lines)
  response: str


def reward(samples: Sequence[Sample], judge: Judge, cfg: RewardConfig) -> list[dict]:
  """Every sample's reward and its components: reward, accuracy, format, observation (the
  supported fraction, or None where not judged), reasoning (likewise), steps, parsed, scored."""
  rows, items = [], []
  for s in samples:
    trace = check_format(s.response, s.record.duration, cfg.min_steps)
    answer, acc = score_answer(s.response, s.record)
    rows.append(dict(answer=answer, accuracy=acc, format=float(trace.ok), observation=None, reasoning=None,
                     steps=len(trace.steps), parsed=answer is not None, scored=True, problem=trace.problem))
    items.append(Item(s.record, s.caption, trace.steps, answer))
  open_answers = [i for i, (s, r) in enumerate(zip(samples, rows)) if r["parsed"] and s.record.answer_type == "open"]
  for i, verdict in zip(open_answers, judge.answers([items[i] for i in open_answers])):
    if verdict is not None:  # None: the rule's score stands
      rows[i]["accuracy"] = float(verdict)
  o_and_r = cfg.kind == "o_and_r"
  wanted = [i for i, r in enumerate(rows)
            if r["format"] and r["steps"] and (cfg.judge_all or (o_and_r and r["accuracy"] > 0))]
  for term, on, ask in (("observation", cfg.observation, judge.observations), ("reasoning", cfg.reasoning,
                                                                                 judge.reasoning)):
    if not (on or cfg.judge_all):
      continue
    for i, verdict in zip(wanted, ask([items[i] for i in wanted])):
      if verdict is None:
        rows[i]["scored"] &= not on
      elif term == "observation":
        rows[i][term] = sum(verdict) / len(verdict)
      else:
        rows[i][term] = float(verdict)
  for r in rows:
    bonus = (r["observation"] or 0.0) * cfg.observation + (r["reasoning"] or 0.0) * cfg.reasoning
    reward = r["accuracy"] * (1 + bonus) + r["format"] if o_and_r else r["accuracy"] + r["format"]
    counted = o_and_r and r["format"] and r["steps"] and r["accuracy"] > 0
    r["reward"] = reward if r["scored"] or not counted else math.nan
    r["scored"] = r["scored"] or not counted
  return rows
