"""Records: validation, stable ids, JSONL round trip, path safety and the importers."""

import json
import os

import pytest

from rewatch_jax.data import records

# real records of the formats users bring, copied verbatim from public material
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def _qa(**kw):
  base = dict(video="clips/a.mp4", question="How many red squares appear?", answer="3",
              question_type="counting")
  return records.QARecord(**{**base, **kw})


def test_caption_text_round_trip():
  text = "[00:00-00:05] A red square enters.\n\n[00:05-01:12] It turns blue and leaves."
  segs = records.parse_caption(text)
  assert segs[1] == records.Segment(5.0, 72.0, "It turns blue and leaves.")
  assert records.render_caption(segs) == text.replace("\n\n", "\n")
  assert records.parse_timestamp("01:02:03") == 3723.0
  with pytest.raises(records.RecordError, match="MM:SS-MM:SS"):
    records.parse_caption("00:00 a square")


def test_ids_are_stable_and_distinct():
  assert _qa().id == _qa().id and _qa().id.startswith("qa-")
  assert _qa(answer="4").id != _qa().id
  cot = dict(reasoning="<action>look</action><observation>3</observation><answer>3</answer>")
  assert records.CoTRecord(**_qa().__dict__ | {"id": "", "kind": "cot"} | cot).id.startswith("cot-")


def test_jsonl_round_trip(tmp_path):
  recs = [
      records.CaptionRecord(video="v.mp4", duration=8.0, segments=(records.Segment(0, 8, "A circle moves."),),
                      lineage=records.Lineage(source="toyworld", video_spec_hash="abc")),
      _qa(form="mc", options=("2", "3", "4", "5"), answer="B"),
      records.CoTRecord(video="v.mp4", question="q?", answer="x", question_type="causal",
                  reasoning="I check.<action>re-watch 00:01-00:03</action><observation>x</observation><answer>x</answer>"),
  ]
  path = tmp_path / "r.jsonl"
  assert records.write_jsonl(str(path), recs) == 3
  assert list(records.read_jsonl(str(path))) == recs
  assert recs[1].answer_text == "3"


@pytest.mark.parametrize("line, message", [
    ('{"kind": "qa", "video": "a.mp4"', "r.jsonl:2"),
    ('{"kind": "poem"}', "unknown record kind"),
    ('{"kind": "qa", "video": "a.mp4", "question": "q", "answer": "a", "question_type": "vibes"}', "question_type"),
    ('{"kind": "qa", "video": "../../etc/passwd", "question": "q", "answer": "a", "question_type": "causal"}', "escapes"),
    ('{"kind": "qa", "video": "/abs/a.mp4", "question": "q", "answer": "a", "question_type": "causal"}', "escapes"),
    ('{"kind": "qa", "video": "a.mp4", "question": "q", "answer": "E", "question_type": "causal", "form": "mc", "options": ["x", "y"]}', "MC answer"),
    ('{"kind": "qa", "video": "a.mp4", "question": "q", "answer": "a", "question_type": "causal", "colour": 1}', "unknown fields"),
    ('{"kind": "cot", "video": "a.mp4", "question": "q", "answer": "a", "question_type": "causal", "reasoning": "no tags"}', "<answer>"),
])
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
  path = tmp_path / "r.jsonl"
  good = json.dumps(records.to_json(_qa()))
  path.write_text(good + "\n" + line + "\n")
  with pytest.raises(records.RecordError, match=message) as err:
    list(records.read_jsonl(str(path)))
  assert "r.jsonl:2" in str(err.value)


def test_resolve_video_follows_links_inside_the_root_and_refuses_escapes(tmp_path):
  root = tmp_path / "videos"
  root.mkdir()
  (tmp_path / "MiraData").mkdir()
  (tmp_path / "MiraData" / "a.mp4").write_bytes(b"x")
  (root / "MiraData").symlink_to(tmp_path / "MiraData")  # a root made of one link a source
  assert open(records.resolve_video(str(root), "MiraData/a.mp4"), "rb").read() == b"x"
  assert records.resolve_video(str(root), "sub/../a.mp4") == str(root / "a.mp4")
  for escape in ("../secret.mp4", "/etc/passwd", "MiraData/../../secret.mp4"):
    with pytest.raises(records.RecordError, match="escapes"):
      records.resolve_video(str(root), escape)


def test_import_rewatch_release_files(tmp_path):
  cap = [{"source": "Video-R1", "video_path": "LLaVA-Video/x.mp4",
          "caption": "[00:00-00:04] A man opens a door.\n[00:04-00:09] He sits down."}]
  qa = [{"source": "Vript", "video_path": "v1.mp4", "question": "What opens first?",
         "answer": "The door", "question_type": "Event Localization"},
        {"source": "Vript", "video_path": "v1.mp4", "question": "Which colour?",
         "options": ["A. red", "B. blue", "C. green", "D. black"], "answer": "(C)", "question_type": "OCR"}]
  cot = [dict(qa[0], cot="<action>re-watch 00:00-00:04</action><observation>a door opens</observation>"
                         "<answer>The door</answer>")]
  for name, data in (("caption.json", cap), ("qa.json", qa), ("cot.json", cot)):
    (tmp_path / name).write_text(json.dumps(data))
  (c,) = records.import_rewatch(str(tmp_path / "caption.json"), "caption")
  assert c.video == "Video-R1/LLaVA-Video/x.mp4" and c.duration == 9 and c.lineage.source == "Video-R1"
  q1, q2 = records.import_rewatch(str(tmp_path / "qa.json"), "qa")
  assert q1.question_type == "event_localization" and q1.form == "open"
  assert (q2.form, q2.answer, q2.answer_text, q2.question_type) == ("mc", "C", "green", "reading")
  (t,) = records.import_rewatch(str(tmp_path / "cot.json"), "cot")
  assert t.kind == "cot" and "<observation>" in t.reasoning
  bad = [dict(qa[0], video_path="../x.mp4")]
  (tmp_path / "bad.json").write_text(json.dumps(bad))
  with pytest.raises(records.RecordError, match=r"bad.json\[0\].*escapes"):
    records.import_rewatch(str(tmp_path / "bad.json"), "qa")
  # as users bring them: JSONL, a bad row and a type outside the alias table skip or map, never abort
  rows = [qa[0], dict(qa[0], video_path="../x.mp4"), dict(qa[1], question_type="Fine-grained Action"),
          dict(qa[0], video_path="/data/videos/Vript/v2.mp4", source="Vript")]
  (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
  got = records.import_records(str(tmp_path / "qa.jsonl"), "rewatch", "qa", video_root="/data/videos")
  assert [r.video for r in got.records] == ["Vript/v1.mp4", "Vript/v1.mp4", "Vript/v2.mp4"]
  assert got.records[1].question_type == "other" and got.unmapped_types == {"Fine-grained Action": 1}
  assert [w.rsplit(":", 1)[1] for w, _ in got.skipped] == ["2", "5"]
  assert "escapes" in got.skipped[0][1] and "not JSON" in got.skipped[1][1]
  cot_wrong = [dict(cot[0], answer="The window")]  # the CoT answers "The door"
  (tmp_path / "cot2.json").write_text(json.dumps(cot_wrong))
  got = records.import_records(str(tmp_path / "cot2.json"), "rewatch", "cot")
  assert not got.records and "not the record's" in got.skipped[0][1]


def test_import_video_r1(tmp_path):
  items = [{"problem": "What is shown?", "problem_type": "multiple choice", "options": ["A. cat", "B. dog"],
            "solution": "<answer>B</answer>", "path": "./Video-R1/videos/1.mp4", "data_source": "LLaVA"},
           {"problem": "Read the sign.", "problem_type": "OCR", "solution": "<answer>STOP</answer>",
            "path": "2.mp4"},
           {"problem": "What is in the image?", "problem_type": "free-form", "solution": "<answer>a cat</answer>",
            "path": "./Image/cat.jpg", "data_type": "image"}]  # Video-R1-260k mixes images in: left out
  (tmp_path / "r1.json").write_text(json.dumps(items))
  a, b = records.import_video_r1(str(tmp_path / "r1.json"))
  assert (a.form, a.answer, a.question_type, a.video) == ("mc", "B", "other", "Video-R1/videos/1.mp4")
  assert (b.answer, b.question_type, b.answer_type) == ("STOP", "reading", "OCR")
  # the CoT file: `process` then `solution`, as Video-R1's SFT target; also as JSONL
  verbatim = json.load(open(os.path.join(DATA, "Video-R1-COT-165k.card_record_verbatim.json")))
  rows = verbatim if isinstance(verbatim, list) else [verbatim]
  (tmp_path / "cot.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  got = records.import_records(str(tmp_path / "cot.jsonl"), "video_r1", "cot")
  assert len(got.records) == len(rows) and not got.skipped
  (c,) = got.records[:1]
  assert c.kind == "cot" and c.reasoning.startswith(rows[0]["process"].strip()[:20]) and "<answer>" in c.reasoning
  assert c.answer_type == rows[0]["problem_type"]


def test_import_longvideo_reason(tmp_path):
  rows = [{"problem": "What does the man do after the call?\nA. leaves\nB. sits down\nC. eats\nD. sleeps",
           "answer": "B", "videos": ["lvr/0001.mp4"], "reasoning": "<think>He hangs up and sits.</think>"},
          {"problem": "How many cars pass?", "answer": "3", "videos": "lvr/0002.mp4", "reasoning": "I count 3."}]
  (tmp_path / "lvr.json").write_text(json.dumps(rows))
  mc, opened = records.import_records(str(tmp_path / "lvr.json"), "longvideo_reason", "qa").records
  assert (mc.form, mc.options, mc.answer, mc.answer_text, mc.question) == (
      "mc", ("leaves", "sits down", "eats", "sleeps"), "B", "sits down", "What does the man do after the call?")
  assert (opened.form, opened.answer, opened.video) == ("open", "3", "lvr/0002.mp4")
  cots = records.import_records(str(tmp_path / "lvr.json"), "longvideo_reason", "cot").records
  assert [c.reasoning.endswith(f"<answer>{r['answer']}</answer>") for c, r in zip(cots, rows)] == [True, True]
