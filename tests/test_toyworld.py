"""The toy world: deterministic, annotations true to the rendered pixels, all ReWatch formats."""

import collections
import json
import re

import numpy as np
import pytest

from rewatch_jax.data import records
from rewatch_jax.data.video import VideoSpec, load_video, sample_indices, smart_nframes
from rewatch_jax.demo import toyworld
from rewatch_jax.rewards import check_format


def test_deterministic():
  a, b = toyworld.generate(7), toyworld.generate(7)
  assert a == b and toyworld.generate(8) != a
  np.testing.assert_array_equal(toyworld.render_frame(a, 3.3), toyworld.render_frame(b, 3.3))
  assert toyworld.qa_records(a, "v.mp4", 7) == toyworld.qa_records(b, "v.mp4", 7)


def test_pixels_match_the_event_log():
  checked = 0
  for seed in range(15):
    w = toyworld.generate(seed)
    for s in w.shapes:
      for t in np.arange(s.enter_t, min(s.leave_t, w.duration), 0.5):
        x, y = s.position(t)
        r = toyworld.SIZES[s.size_at(t)]
        if not (r < x < 1 - r and r < y < 1 - r):
          continue
        covered = any(o.z > s.z and o.enter_t <= t < o.leave_t and
                      np.hypot((o.position(t)[0] - x) * w.width, (o.position(t)[1] - y) * w.height) < 0.3 * w.height
                      for o in w.shapes)
        if covered or any(tx.start <= t < tx.end for tx in w.texts) and (y < 0.2 or y > 0.8):
          continue
        pixel = toyworld.render_frame(w, t)[int(y * w.height), int(x * w.width)]
        assert tuple(pixel) == toyworld.COLOURS[s.colour_at(t)], (seed, s, t)
        checked += 1
  assert checked > 100


def test_backdrop_changes_between_frame_pairs():
  """The background shows the backdrop the event log names, and each change falls between two
  frame pairs of the sampling it was generated for (so no merged visual token blends two backdrops)."""
  changes = 0
  for seed in range(20):
    spec = VideoSpec(fps=(0.5, 1.0)[seed % 2], min_frames=4)
    w = toyworld.generate(seed, duration=(8, 16), spec=spec)
    for t in np.arange(0, w.duration, 0.5):
      colours, counts = np.unique(toyworld.render_frame(w, t).reshape(-1, 3), axis=0, return_counts=True)
      assert tuple(colours[counts.argmax()]) == toyworld.BACKDROPS[w.backdrop_at(t)], (seed, t)
    times = np.asarray(w.frames)
    assert np.array_equal(times, sample_indices(int(w.duration * w.fps), smart_nframes(spec, int(w.duration * w.fps),
                                                                                       w.fps)) / w.fps)
    pairs = [{w.backdrop_at(x) for x in times[j:j + 2]} for j in range(0, len(times), 2)]
    assert all(len(p) == 1 for p in pairs), (seed, w.backdrops)
    changes += len(w.backdrops) - 1
    assert [(0.0, f"the background is {w.backdrops[0][1]}")] == [e for e in w.events() if e[1].startswith("the background is")]
  assert 10 < changes < 30  # 0-2 a world


def test_captions_cover_the_video_and_records_validate():
  for seed in range(10):
    w = toyworld.generate(seed)
    cap = toyworld.caption(w, "videos/x.mp4")
    segs = cap.segments
    assert segs[0].start == 0 and segs[-1].end == w.duration
    assert all(a.end == b.start for a, b in zip(segs, segs[1:]))
    records.parse_caption(cap.text)  # renders in the ReWatch format


def test_questions_span_the_rewatch_types_and_need_the_video():
  types, kinds = collections.Counter(), collections.Counter()
  for seed in range(30):
    w = toyworld.generate(seed)
    qas, cots, fakes = toyworld.qa_records(w, "v.mp4", seed)
    assert len(cots) == len(qas)
    for qa in qas:
      types[qa.question_type] += 1
      if qa.form == "mc":
        assert len(qa.options) == 4 and list(qa.options).count(qa.answer_text) == 1
      if " or " not in qa.question:  # either/or questions name both choices by design
        assert not re.search(rf"\b{re.escape(qa.answer_text.lower())}\b", qa.question.lower())  # not given away
    for true in cots:  # each hallucinated variant differs from its true trace as its kind says
      variants = {f.lineage.extra["hallucinated"]: f for f in fakes if (f.question, f.form) == (true.question, true.form)}
      assert {"content", "invented"} <= set(variants) <= set(toyworld.HALLUCINATIONS)
      steps = lambda r: [(s.start, s.end, s.observation) for s in check_format(r.reasoning, r.duration).steps]
      t = steps(true)
      for kind, fake in variants.items():
        kinds[kind] += 1
        f = steps(fake)
        assert fake.answer == true.answer and check_format(fake.reasoning, fake.duration).ok
        if kind == "content":
          assert f[:-1] == t[:-1] and f[-1][:2] == t[-1][:2] and f[-1][2] != t[-1][2]
        elif kind == "time":
          assert f[:-1] == t[:-1] and f[-1][2] == t[-1][2] and f[-1][:2] != t[-1][:2]
        elif kind == "invented":
          assert len(f) == len(t) + 1 and [x for x in f if x in t] == t
        else:
          assert f == t[:-1] and len(t) >= 2
  assert len(types) >= 9, types  # all ten ReWatch types except what a world happens to lack
  assert min(kinds[k] for k in toyworld.HALLUCINATIONS) > 50, kinds
  assert types["counting"] and types["reading"] and types["counterfactual"]


def test_build_writes_decodable_videos_and_splits(tmp_path):
  stats = toyworld.build(str(tmp_path), count=3, seed=100)
  assert stats["train_caption"] == 2 and stats["test_caption"] == 1
  qas = list(records.read_jsonl(str(tmp_path / "test_qa.jsonl")))
  assert qas and all(q.video.startswith("videos/") for q in qas)
  # the perception set: exactly the open QA records that ask about the backdrop
  perception = list(records.read_jsonl(str(tmp_path / "test_perception.jsonl")))
  assert perception and perception == [q for q in qas if "background" in q.question and q.form == "open"]
  caps = list(records.read_jsonl(str(tmp_path / "train_caption.jsonl")))
  v = load_video(str(tmp_path / caps[0].video))
  assert abs(v.duration - caps[0].duration) < 0.2 and len(v.frames) >= 16
  # every direct answer, with its <|im_end|>, fits the demo's evaluation budget (10 cut causal ones off)
  from configs import demo
  from rewatch_jax.data import chat
  tok = chat.qwen_tokenizer(str(tmp_path / "tokenizer.json"))
  qas += list(records.read_jsonl(str(tmp_path / "train_qa.jsonl")))
  longest = max(len(tok.encode(chat.target("direct", q) + "<|im_end|>").ids) for q in qas)
  assert "causal" in {q.question_type for q in qas} and longest <= demo.get_config().eval.max_new_tokens
  # resumable: a second build reuses the videos and writes identical records
  before = (tmp_path / "train_qa.jsonl").read_text()
  toyworld.build(str(tmp_path), count=3, seed=100)
  assert (tmp_path / "train_qa.jsonl").read_text() == before
  assert json.loads(before.splitlines()[0])["lineage"]["source"] == "toyworld"
  # another world's records are never paired with these videos, nor with a manifest-less old build
  with pytest.raises(ValueError, match="another toy world.*shapes"):
    toyworld.build(str(tmp_path), count=3, seed=100, shapes=(1, 2))
  want = toyworld.manifest(3, seed=100)
  assert toyworld.built(str(tmp_path), want)
  (tmp_path / "tokenizer.json").unlink()  # as if interrupted: not finished, and built again in place
  assert not toyworld.built(str(tmp_path), want)
  toyworld.build(str(tmp_path), count=3, seed=100)
  assert toyworld.built(str(tmp_path), want) and (tmp_path / "train_qa.jsonl").read_text() == before
  (tmp_path / "manifest.json").unlink()
  with pytest.raises(ValueError, match="older generator"):
    toyworld.build(str(tmp_path), count=3, seed=100)


def test_no_duplicate_or_ambiguous_questions():
  for seed in range(40):
    qas, _, _ = toyworld.qa_records(toyworld.generate(seed), "v.mp4", seed)
    ids = [q.id for q in qas]
    assert len(ids) == len(set(ids)), seed


def test_answers_cannot_be_guessed_from_the_text():
  """A text-only guesser (the most common train answer per question template; for multiple choice,
  the option whose text is most often right) stays near chance on held-out worlds."""
  train, test = [], []
  for seed in range(200):
    (train if seed < 160 else test).extend(toyworld.qa_records(toyworld.generate(seed), "v.mp4", seed)[0])
  right = toyworld.baselines(train, test)["text only"]
  rate = lambda form: np.mean([right[q.id] for q in test if q.form == form])
  mc, open_ = rate("mc"), rate("open")
  assert mc < 0.36 and open_ < 0.3, (mc, open_)


def test_baselines_score_the_guessers_the_demo_table_shows():
  """Per held-out question: the text-only guesser's answer keys on the template (world words and
  numbers blanked), chance is 1/options (MC) or 1/(answers the template takes in training)."""
  q = lambda video, question, answer, **kw: records.QARecord(video=video, question=question, answer=answer,
                                                      question_type="counting", **kw)
  ask = "How many {} enter the scene during the video?"
  train = [q(f"t{i}.mp4", ask.format("circles"), a) for i, a in enumerate("1121")]
  train.append(q("t9.mp4", ask.format("circles"), "C", form="mc", options=("0", "3", "1", "4")))
  test = [q("a.mp4", ask.format("squares"), "1"), q("b.mp4", ask.format("triangles"), "2"),
          q("c.mp4", ask.format("squares"), "D", form="mc", options=("0", "2", "3", "1")),
          q("d.mp4", ask.format("squares"), "B", form="mc", options=("0", "2", "3", "1")),
          q("e.mp4", "Why?", "no")]
  b = toyworld.baselines(train, test)
  assert [b["text only"][x.id] for x in test] == [True, False, True, False, False]
  assert [b["chance"][x.id] for x in test] == [0.5, 0.5, 0.25, 0.25, 0.0]
