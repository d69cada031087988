"""The RL reward's parts: the answer parser, accuracy by answer type, the format check, the
offline judge, and the acc+fmt / O&R sums with their edge cases and switches."""

import math

import pytest

from rewatch_jax.data.records import QARecord, RecordError, import_video_r1
from rewatch_jax.rewards import (
  CaptionJudge,
  Judge,
  RewardConfig,
  Sample,
  accuracy,
  check_format,
  parse_answer,
  reward,
  score_answer,
)
from rewatch_jax.rewards.answers import answer_unclosed

OPTIONS = ("red", "green", "blue", "black")


@pytest.mark.parametrize("answer, letter", [
    ("B", "B"), ("(B)", "B"), ("B.", "B"), ("B. green", "B"), ("B) green", "B"), ("B: green", "B"),
    ("Option B", "B"), ("The answer is B", "B"), ("the answer is (b)", "B"), ("green", "B"), ("Green.", "B"),
    ("C", "C"), ("E", None), ("a", None), ("a red one", None), ("b", None), ("Blue", "C"),
])
def test_multiple_choice_answers_parse_to_their_letter(answer, letter):
  assert parse_answer(f"<answer>{answer}</answer>", OPTIONS) == letter
  prefixed = [f"{x}. {o}" for x, o in zip("ABCD", OPTIONS)]  # options given with their letters
  assert parse_answer(f"<answer>{answer}</answer>", prefixed) == letter


def test_the_last_answer_block_counts_and_no_block_is_no_answer():
  assert parse_answer("<answer>A</answer> wait <answer>(B)</answer>", OPTIONS) == "B"
  assert parse_answer("B", OPTIONS) is None and parse_answer("<answer> </answer>") is None
  assert parse_answer("<answer> \"The Door\". </answer>") == "The Door"
  # an option's own text wins over a letter-like start ("A cat" is the option "a cat", not A)
  assert parse_answer("<answer>A cat</answer>", ("dog", "a cat")) == "B"


def test_an_answer_cut_off_mid_way_is_told_apart():
  assert answer_unclosed("<answer>it passes behind the red square</")
  assert answer_unclosed("<answer>B</answer> wait, <answer>C")
  assert not answer_unclosed("<answer>B</answer>") and not answer_unclosed("") and not answer_unclosed(None)
  assert parse_answer("<answer>it passes behind the red square</") is None


def qa(answer, answer_type="open", form="open", options=(), duration=60.0):
  return QARecord(video="v.mp4", question="q?", answer=answer, question_type="other", form=form, options=options,
                  answer_type=answer_type, duration=duration)


@pytest.mark.parametrize("answer, truth, answer_type, expected", [
    ("3.5", "3.50", "numerical", 1.0), ("3.5 seconds", "3.5", "numerical", 1.0), ("1,200.5", "1200.5", "numerical", 1.0),
    ("twelve", "12", "numerical", 1.0), ("3.6", "3.5", "numerical", 0.0), ("none", "3", "numerical", 0.0),
    ("90", "100", "regression", 0.9), ("300", "100", "regression", 0.0),
    ("STOP", "STOP", "OCR", 1.0), ("stop", "STOP", "OCR", 0.0), ("OPEN NOW", "OPEN LATE", "OCR", 0.5),
    ("[00:10-00:20]", "00:15-00:25", "time span", 1 / 3), ("10-20", "[00:30-00:40]", "time span", 0.0),
    ("The Door.", "door", "open", 1.0), ("STOP", "stop", "open", 1.0), ("3", "3.0", "open", 1.0), ("3", "4", "open", 0.0),
])
def test_accuracy_by_answer_type(answer, truth, answer_type, expected):
  assert accuracy(answer, qa(truth, answer_type)) == pytest.approx(expected)


def test_free_form_answers_score_by_rouge_and_no_answer_scores_zero():
  record = qa("the man opens the door and leaves", "free-form")
  assert accuracy("the man opens the door and leaves", record) == pytest.approx(1.0)
  assert 0 < accuracy("a man opens a door", record) < 1
  assert score_answer("no answer block", record) == (None, 0.0)
  mc = qa("B", "multiple choice", "mc", OPTIONS)
  assert score_answer("<answer>green</answer>", mc) == ("B", 1.0)


def test_answer_type_defaults_from_the_form_and_must_agree_with_it():
  assert qa("x", "").answer_type == "open" and qa("B", "", "mc", OPTIONS).answer_type == "multiple choice"
  with pytest.raises(RecordError, match="does not go with form"):
    qa("B", "numerical", "mc", OPTIONS)
  with pytest.raises(RecordError, match="answer_type"):
    qa("x", "essay")


def test_video_r1_keeps_its_problem_type_as_the_answer_type(tmp_path):
  path = tmp_path / "r1.json"
  path.write_text('[{"problem": "How many?", "problem_type": "numerical", "options": [], "solution": '
                  '"<answer>3.5</answer>", "path": "a.mp4", "data_type": "video"}, {"problem": "Read it", '
                  '"problem_type": "OCR", "options": [], "solution": "<answer>STOP</answer>", "path": "b.mp4"}]')
  numerical, ocr = import_video_r1(str(path))
  assert (numerical.answer_type, ocr.answer_type) == ("numerical", "OCR")
  assert accuracy("3.50", numerical) == 1.0 and accuracy("stop", ocr) == 0.0


GOOD = ("I should look at the start. <action>re-watch 00:00-00:02</action><observation>[00:00-00:02] a red "
        "circle enters from the left</observation> Then the end. <action>re-watch 00:08-00:10</action>"
        "<observation>[00:08-00:10] the circle turns blue</observation> So it is blue.<answer>C</answer>")


def test_a_well_formed_trace_is_read():
  trace = check_format(GOOD, duration=10.0)
  assert trace.ok and trace.answer == "C" and len(trace.steps) == 2
  assert (trace.steps[1].start, trace.steps[1].end, trace.steps[1].observation) == (8.0, 10.0, "the circle turns blue")
  assert check_format(GOOD, duration=9.4).ok  # whole-second spans may pass the duration by its rounding


@pytest.mark.parametrize("response, problem", [
    (GOOD.replace("<answer>C</answer>", ""), "no <answer>"),
    (GOOD + "<answer>C</answer>", "after the final"),
    (GOOD + " and more", "text after"),
    (GOOD.replace("[00:08-00:10]", "[00:08-00:30]"), "outside the video"),
    (GOOD.replace("[00:08-00:10]", "[00:10-00:08]"), "reversed"),
    (GOOD.replace("[00:08-00:10] ", ""), "without a [MM:SS-MM:SS] span"),
    (GOOD.replace("</action><observation>[00:00", "</action> hmm <observation>[00:00"), "text between"),
    (GOOD.replace("<observation>[00:00-00:02] a red circle enters from the left</observation>", ""),
     "<action> where <observation> was expected"),
    (GOOD.replace("<action>re-watch 00:00-00:02</action>", ""), "<observation> where"),
    (GOOD.replace("</observation> Then", " Then"), "<action> where </observation> was expected"),
    (GOOD.replace("<answer>C</answer>", "<answer> </answer>"), "empty <answer>"),
    ("<answer>C</answer>", "fewer than 1"),
])
def test_broken_structures_fail_with_a_reason(response, problem):
  trace = check_format(response, duration=10.0)
  assert not trace.ok and problem in trace.problem


CAPTION = "[00:00-00:04] A red circle enters from the left.\n[00:04-00:10] The red circle turns blue."


def test_the_caption_judge_checks_observations_over_their_span():
  judge = CaptionJudge(tolerance=0.0)
  steps = check_format(GOOD, 10.0).steps
  from rewatch_jax.rewards.judges import Item
  record = qa("C", "multiple choice", "mc", OPTIONS)
  assert judge.observations([Item(record, CAPTION, steps)]) == [[True, True]]
  wrong_time = check_format(GOOD.replace("[00:08-00:10] the circle turns blue", "[00:00-00:02] the circle turns blue"),
                            10.0).steps
  assert judge.observations([Item(record, CAPTION, wrong_time)]) == [[True, False]]
  assert CaptionJudge(tolerance=2.0).observations([Item(record, CAPTION, wrong_time)]) == [[True, True]]
  invented = check_format(GOOD.replace("the circle turns blue", "a square appears"), 10.0).steps
  assert judge.observations([Item(record, CAPTION, invented)]) == [[True, False]]
  assert judge.reasoning([Item(record, CAPTION, steps)]) == [True]  # "blue" (option C) is observed
  assert judge.reasoning([Item(qa("D", "multiple choice", "mc", OPTIONS), CAPTION, steps)]) == [False]  # black


class Failing(CaptionJudge):
  def reasoning(self, items):
    return [None] * len(items)


def rewards(responses, cfg=RewardConfig(), judge=None, caption=CAPTION):
  record = qa("C", "multiple choice", "mc", OPTIONS, duration=10.0)
  return reward([Sample(record, caption, r) for r in responses], judge or CaptionJudge(), cfg)


def test_o_and_r_amplifies_right_answers_only():
  half = GOOD.replace("the circle turns blue", "a square appears")
  right, wrong, half_true, broken = rewards([GOOD, GOOD.replace("<answer>C", "<answer>A"), half, "<answer>C</answer>"])
  assert right["reward"] == 4.0 and (right["observation"], right["reasoning"]) == (1.0, 1.0)
  assert wrong["reward"] == 1.0 and wrong["observation"] is None  # only r_fmt; no judge asked
  # one of two observations supported, and "blue" no longer observed: the reader cannot answer
  assert (half_true["observation"], half_true["reasoning"], half_true["reward"]) == (0.5, 0.0, 1 * (1 + 0.5 + 0) + 1)
  assert broken["format"] == 0.0 and broken["reward"] == 1.0 and broken["steps"] == 0  # r_acc alone
  assert rewards(["no answer"])[0]["reward"] == 0.0


def test_switches_select_the_baseline_and_the_ablations():
  half = GOOD.replace("the circle turns blue", "a square appears")
  assert rewards([half], RewardConfig(kind="acc_fmt"))[0]["reward"] == 2.0
  assert rewards([GOOD], RewardConfig(observation=False))[0]["reward"] == 1 * (1 + 1.0) + 1
  assert rewards([half], RewardConfig(observation=False))[0]["reward"] == 1 * (1 + 0.0) + 1
  assert rewards([half], RewardConfig(reasoning=False))[0]["reward"] == 1 * (1 + 0.5) + 1
  plotted = rewards([GOOD.replace("<answer>C", "<answer>A")], RewardConfig(kind="acc_fmt", judge_all=True))[0]
  assert plotted["observation"] == 1.0 and plotted["reward"] == 1.0  # judged for the curves, not counted
  with pytest.raises(ValueError, match="kind"):
    RewardConfig(kind="o&r")


def test_a_judge_failure_leaves_the_sample_unscored_where_it_counts():
  right, wrong = rewards([GOOD, GOOD.replace("<answer>C", "<answer>A")], judge=Failing())
  assert not right["scored"] and math.isnan(right["reward"])
  assert wrong["scored"] and wrong["reward"] == 1.0  # the term does not count for a wrong answer
  off = rewards([GOOD], RewardConfig(reasoning=False), judge=Failing())[0]
  assert off["scored"] and off["reward"] == 3.0


class Rejecting(Judge):
  def answers(self, items):
    return [False] * len(items)

  def observations(self, items):
    return [[True] * len(i.steps) for i in items]

  def reasoning(self, items):
    return [True] * len(items)


def test_an_answer_judge_decides_open_answers():
  record = qa("blue", duration=10.0)
  response = GOOD.replace("<answer>C", "<answer>Blue")
  assert reward([Sample(record, CAPTION, response)], CaptionJudge(), RewardConfig())[0]["accuracy"] == 1.0
  assert reward([Sample(record, CAPTION, response)], Rejecting(), RewardConfig())[0]["reward"] == 1.0
