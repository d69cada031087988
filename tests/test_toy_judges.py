"""The toy world's judges: the true CoT traces of many worlds are supported throughout (but for
words the sampled frames never show), their hallucinated variants are not (a false, misplaced or
invented observation: but for claims true of another event between the same frames; a dropped one:
the reader cannot answer); the reader answers the perception questions from the observations alone;
O&R ranks every true perception trace above each of its hallucinations, acc+fmt cannot."""

import pytest

from configs import demo
from rewatch_jax.demo import toyworld
from rewatch_jax.demo.judges import ToyJudge, claims, read_perception
from rewatch_jax.rewards import RewardConfig, Sample, check_format, reward
from rewatch_jax.rewards.judges import Item


def judge_and_traces(worlds=40):
  c = demo.get_config()
  judge = ToyJudge(c)
  true, fake = [], []
  for seed in range(worlds):
    world = judge.world(f"videos/toy-{seed:06d}.mp4")
    _, cots, fakes = toyworld.qa_records(world, f"videos/{world.id}.mp4", seed)
    true += cots
    fake += fakes
  return judge, true, fake


def test_true_traces_are_supported_and_hallucinated_ones_are_not():
  judge, true, fake = judge_and_traces()
  items = lambda recs: [Item(r, "", check_format(r.reasoning, r.duration).steps) for r in recs]
  assert all(check_format(r.reasoning, r.duration).ok for r in true + fake)
  verdicts = judge.observations(items(true))
  bad = [r for r, v in zip(true, verdicts) if not all(v)]
  # The only true observations unsupported are of words shown entirely between two sampled frames
  # (e.g. 3.0-5.2 s with frames at 2.6 and 5.3): the model never sees them, and the judge says so.
  for r in bad:
    world = judge.world(r.video)
    unseen = [x for x in world.texts if not any(x.start <= t < x.end for t in judge.frames(world))]
    assert unseen and any(f"the {x.word} is shown" in r.reasoning for x in unseen), r.reasoning
  assert len(bad) < 0.01 * len(true)
  # A false, misplaced or invented claim can still be true at the model's resolution: another
  # shape enters, or turns that colour, between the same two sampled frames ("known ambiguities",
  # RL_TOYWORLD_NOTES): a few in a hundred.
  for kind in ("content", "time", "invented"):
    recs = [r for r in fake if r.lineage.extra["hallucinated"] == kind]
    passed = [r.reasoning for r, v in zip(recs, judge.observations(items(recs))) if all(v)]
    assert len(recs) > 300 and len(passed) < 0.02 * len(recs), (kind, len(passed), passed[:3])
  assert len(true) > 500


def test_the_reader_answers_perception_questions_from_observations():
  judge, true, _ = judge_and_traces(10)
  perception = [r for r in true if r.question in toyworld.PERCEPTION_QUESTIONS and r.form == "open"]
  assert len(perception) >= 20
  items = [Item(r, "", check_format(r.reasoning, r.duration).steps) for r in perception]
  assert all(judge.reasoning(items))
  other = next(r for r in true if r.question not in toyworld.PERCEPTION_QUESTIONS)
  assert judge.reasoning([Item(other, "", check_format(other.reasoning, other.duration).steps)]) == [False]


def test_claims_and_the_reader_on_hand_written_observations():
  assert claims("the background is navy") == [("background", {"back": "navy"})]
  assert claims("The number 5 is shown at the top")[0][1] == {"word": "5", "corner": "top"}
  assert claims("a large red circle enters from the left")[0][1] == dict(size="large", colour="red", shape="circle",
                                                                         side="left")
  assert claims("the circle looks happy") is None
  assert claims("it turns red and a second identical copy appears") is None
  steps = check_format("<action>a</action><observation>[00:00-00:01] the background is navy</observation>"
                       "<action>b</action><observation>[00:06-00:07] the background turns teal</observation>"
                       "<answer>teal</answer>", 10).steps
  start, turn, end = toyworld.PERCEPTION_QUESTIONS
  assert [read_perception(q, steps) for q in (start, turn, end)] == ["navy", "teal", "teal"]


@pytest.mark.parametrize("kind", ["o_and_r", "acc_fmt"])
def test_the_toy_judge_drives_the_reward(kind):
  judge, true, fake = judge_and_traces(20)
  perception = lambda r: r.question in toyworld.PERCEPTION_QUESTIONS
  honest = {(r.video, r.question, r.form): r for r in true if perception(r)}
  fakes = [r for r in fake if perception(r)]
  assert {r.lineage.extra["hallucinated"] for r in fakes} == set(toyworld.HALLUCINATIONS)
  scored = reward([Sample(r, "", r.reasoning) for r in [*honest.values(), *fakes]], judge, RewardConfig(kind=kind))
  assert all(s["accuracy"] == 1.0 and s["format"] == 1.0 for s in scored)
  top = {"o_and_r": 4.0, "acc_fmt": 2.0}[kind]
  assert all(s["reward"] == top for s in scored[:len(honest)])
  if kind == "o_and_r":  # every hallucination of every kind costs reward
    assert all(s["reward"] < top for s in scored[len(honest):]), [
        (r.lineage.extra, r.reasoning) for r, s in zip(fakes, scored[len(honest):]) if s["reward"] == top][:3]
  else:
    assert all(s["reward"] == top for s in scored)  # the baseline cannot tell them apart


def test_paired_difference_counts_questions_gained_and_lost():
  from rewatch_jax.demo.hooks import paired_difference
  before = [dict(id=i, score=float(i < 6)) for i in range(10)]  # right on 0-5
  after = [dict(id=i, score=float(2 <= i < 9)) for i in range(10)]  # right on 2-8: gained 6-8, lost 0-1
  diff, se = paired_difference(before, after)
  assert diff == pytest.approx(0.1) and se == pytest.approx((5 - 1 / 10) ** 0.5 / 10)
