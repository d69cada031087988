"""Preparing ReWatch data into ArrayRecord (TFDS, no TensorFlow) and reading it back."""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from rewatch_jax.data import chat, pipeline, processor, records, tfds_rewatch
from rewatch_jax.data.video import VideoSpec, decode, load_video
from rewatch_jax.data.video_store import VideoStore
from rewatch_jax.demo import toyworld
from rewatch_jax.models import get_preset

SPEC = VideoSpec(fps=1.0, max_frames=8, min_pixels=56 * 56, max_pixels=56 * 84, total_pixels=8 * 56 * 84)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
  out = tmp_path_factory.mktemp("toy")
  toyworld.build(str(out), count=3, seed=11, test_fraction=0.34)
  return out


def _records(toy, split, kind):
  return list(records.read_jsonl(str(toy / f"{split}_{kind}.jsonl")))


@pytest.mark.parametrize("config", ["caption", "qa", "cot", "rl"])
def test_prepare_and_read_back(toy, tmp_path, config):
  kind = {"caption": "caption", "qa": "qa", "cot": "cot", "rl": "qa"}[config]
  recs = _records(toy, "train", kind)[:6]
  report = tfds_rewatch.prepare(str(tmp_path), config, recs, str(toy), SPEC,
                                captions=_records(toy, "train", "caption"))
  assert report["written"] == len(recs) and not report["skipped"]
  (source,), meta = tfds_rewatch.data_sources(str(tmp_path), config)
  assert len(source) == len(recs) and meta["video_spec_hash"] == SPEC.hash
  by_id = {r.id: r for r in recs}
  ex = VideoStore(str(tmp_path)).attach(source[0])
  rec = by_id[ex["id"].decode()]
  video = load_video(str(toy / rec.video), SPEC)
  np.testing.assert_array_equal(ex["frames"], video.frames)
  tok = chat.qwen_tokenizer()
  text = tok.decode(ex["input_ids"].tolist(), skip_special_tokens=False)
  assert text.count("<|video_pad|>") == ex["frames"].shape[0] // 2 * (ex["frames"].shape[1] // 28) * (ex["frames"].shape[2] // 28)
  if config == "rl":
    assert text.endswith("<|im_start|>assistant\n") and not ex["loss_mask"].any()
    assert ex["answer"].decode() == rec.answer and ex["caption"].decode().startswith("[00:00-")
  else:
    trained = tok.decode(ex["input_ids"][ex["loss_mask"]].tolist(), skip_special_tokens=False)
    assert trained == chat.target(tfds_rewatch.KINDS[config].mode, rec) + "<|im_end|>"
  assert json.loads(ex["record"].decode())["id"] == rec.id
  # the one encoder, both ways: the pipeline's example from the prepared tokens and the stored frames
  # equals encode_example of the record's conversation around the decoded video
  kind = tfds_rewatch.KINDS[config]
  direct = processor.encode_example(tok, chat.conversation(kind.mode, rec, video.duration, with_answer=not kind.prompt_only),
                                    video, get_preset("tiny").vision)
  piped = pipeline.ToExample(get_preset("tiny")).map(ex)
  for key, value in direct.items():
    np.testing.assert_array_equal(piped[key], value, err_msg=key)
  # what decides each example's bucket, kept beside the data, row i for example i (the trainer's
  # start-up check; several processes agree on a batch's bucket from it without reading examples)
  shapes = tfds_rewatch.example_shapes(str(tmp_path), config)
  assert len(shapes) == len(recs)
  store = VideoStore(str(tmp_path))
  for i, row in enumerate(shapes.tolist()):
    e = store.attach(source[i])
    assert row == [*e["frames"].shape[:3], len(e["input_ids"]), int(e["loss_mask"].sum())], i
  assert len({tuple(r) for r in shapes.tolist()}) > 1  # (so that an order mixed up would show)
  # preparing again finds the data there and returns the first run's report
  assert tfds_rewatch.prepare(str(tmp_path), config, recs, str(toy), SPEC,
                              captions=_records(toy, "train", "caption")) == report


def test_bad_videos_are_skipped_and_reported(toy, tmp_path):
  videos = tmp_path / "videos_root"
  shutil.copytree(toy / "videos", videos / "videos")
  recs = _records(toy, "train", "caption")
  with open(videos / recs[0].video, "r+b") as f:
    f.truncate(200)  # corrupt one video
  escaping = records.CaptionRecord(video="videos/x.mp4", duration=3, segments=(records.Segment(0, 3, "x"),))
  object.__setattr__(escaping, "video", "../outside.mp4")  # bypass validation, as a hand-edited file might
  report = tfds_rewatch.prepare(str(tmp_path / "out"), "caption", recs + [escaping], str(videos), SPEC)
  assert report["written"] == len(recs) - 1 and len(report["skipped"]) == 2
  errors = " ".join(s["error"] for s in report["skipped"])
  assert os.path.basename(recs[0].video) in errors and "escapes" in errors
  assert json.load(open(next((tmp_path / "out").rglob("prepare_report.json"))))["written"] == len(recs) - 1
  with pytest.raises(ValueError, match="preparing"):
    tfds_rewatch.prepare(str(tmp_path / "out2"), "caption", recs, str(videos), SPEC, on_error="raise")


def test_captions_past_the_decoded_video_are_skipped_and_reported(toy, tmp_path):
  """A caption ending well past its video (written for a longer file) would teach wrong times: it is
  skipped, and listed with its end and the decoded duration; one ending within the tolerance
  (timestamps are whole seconds) is written, and so is a record stating another duration, listed.
  In rl sets the caption is the O&R reward's reference: its video's records are skipped; qa_eval
  sets, which do not read it, keep theirs."""
  caps = _records(toy, "train", "caption")
  cap = caps[0]
  *head, last = cap.segments
  d = cap.duration  # toy world records state their video's duration (11 s here)
  assert max(s.end for s in cap.segments) == d
  long = dataclasses.replace(cap, id="", segments=(*cap.segments, records.Segment(d, d + 12, "the screen stays black")))
  within = dataclasses.replace(cap, id="", segments=(*head, records.Segment(last.start, d + 1, last.text + " again")))
  stated = dataclasses.replace(cap, id="", duration=60.0,
                               segments=(*head, records.Segment(last.start, last.end, last.text + " still")))
  report = tfds_rewatch.prepare(str(tmp_path), "caption", caps + [long, within, stated], str(toy), SPEC)
  assert report["written"] == len(caps) + 2 and report["duration_tolerance"] == tfds_rewatch.DURATION_TOLERANCE
  why = f"caption ends at {records.format_timestamp(d + 12)} past the video's {d:.1f} s"
  assert why == "caption ends at 00:23 past the video's 11.0 s"
  assert report["skipped"] == [{"id": long.id, "error": why}]
  ((over,),) = [report["caption_overruns"]]
  assert over == {"id": long.id, "video": cap.video, "caption_end": d + 12, "duration": pytest.approx(d, abs=0.05)}
  ((off,),) = [report["duration_mismatches"]]
  assert off["id"] == stated.id and off["record_duration"] == 60.0 and off["duration"] == pytest.approx(d, abs=0.05)
  (source,), _ = tfds_rewatch.data_sources(str(tmp_path), "caption")
  ids = {source[i]["id"].decode() for i in range(len(source))}
  assert long.id not in ids and {within.id, stated.id} <= ids
  on_disk = json.load(open(next((tmp_path / "rewatch" / "caption").rglob("prepare_report.json"))))
  assert on_disk["caption_overruns"][0]["caption_end"] == d + 12
  with pytest.raises(ValueError, match="preparing .*caption ends at 00:23 past the video's 11.0 s"):
    tfds_rewatch.prepare(str(tmp_path / "raise"), "caption", [long], str(toy), SPEC, on_error="raise")
  # a tolerance of 13 s keeps it
  kept = tfds_rewatch.prepare(str(tmp_path / "lenient"), "caption", [long], str(toy), SPEC, duration_tolerance=13)
  assert kept["written"] == 1 and not kept["caption_overruns"]
  # rl: the video's records go with its caption (the video read back from the store: its duration kept there)
  qa = _records(toy, "train", "qa")
  ours = [r for r in qa if r.video == cap.video]
  assert ours and len(ours) < len(qa)
  captions = [long if c.video == cap.video else c for c in caps]
  rl = tfds_rewatch.prepare(str(tmp_path), "rl", qa, str(toy), SPEC, captions=captions, processes=2)  # (a pool's notes)
  assert rl["written"] == len(qa) - len(ours) and rl["videos_stored"] == 0
  assert sorted(s["id"] for s in rl["skipped"]) == sorted(r.id for r in ours)
  assert {s["error"] for s in rl["skipped"]} == {f"its video's {why} (the O&R reward's reference)"}
  assert [o["id"] for o in rl["caption_overruns"]] == [long.id]
  ev = tfds_rewatch.prepare(str(tmp_path), "qa_eval", qa, str(toy), SPEC, captions=captions)
  assert ev["written"] == len(qa) and not ev["skipped"] and [o["id"] for o in ev["caption_overruns"]] == [long.id]


def test_nothing_to_write_is_a_clear_error(toy, tmp_path):
  """Every record skipped (here: the videos are not where the root says), or none of the config's
  kind: the error says so and why, instead of TFDS's bare "No examples were yielded"."""
  recs = _records(toy, "train", "caption")
  with pytest.raises(ValueError, match=r"no example written \(2 records given.*2 skipped: .*videos/videos/"):
    tfds_rewatch.prepare(str(tmp_path / "a"), "caption", recs[:2], str(toy / "videos"), SPEC)
  with pytest.raises(ValueError, match=r"0 of kind QARecord"):
    tfds_rewatch.prepare(str(tmp_path / "b"), "qa", recs, str(toy), SPEC)


def test_shards_prepared_separately_read_as_one(toy, tmp_path):
  recs = _records(toy, "train", "qa")
  assert len({r.video for r in recs}) == 2  # one for each shard
  reports = [tfds_rewatch.prepare(str(tmp_path), "qa", recs, str(toy), SPEC, num_shards=2, shard_index=i,
                                  processes=2 if i else 1) for i in range(2)]  # one shard by a process pool
  assert [r["videos_stored"] for r in reports] == [1, 1]
  # the pool's worker wrote its video itself, into a finished file of its own
  (worker_file,) = (tmp_path / "video_store").glob("qa-00001-of-00002-w*.array_record")
  assert worker_file.with_name(worker_file.name.replace(".array_record", ".keys.json")).exists()
  sources, _ = tfds_rewatch.data_sources(str(tmp_path), "qa")
  ids = sorted(ex["id"].decode() for src in sources for ex in (src[i] for i in range(len(src))))
  assert len(sources) == 2 and ids == sorted(r.id for r in recs)
  # shards split the videos: each video's records in one shard, each video stored once
  videos = [{src[i]["video"] for i in range(len(src))} for src in sources]
  assert not videos[0] & videos[1] and len(VideoStore(str(tmp_path))) == len(videos[0] | videos[1])
  assert len(list((tmp_path / "video_store").glob("*.array_record"))) == 2
  with pytest.raises(FileNotFoundError, match="launch/prepare.py"):
    tfds_rewatch.data_sources(str(tmp_path), "cot")
  # the VideoSpec and tokenizer the data was made with travel to checkpoints and reports; two specs
  # in one run's data are refused
  made = tfds_rewatch.identity(str(tmp_path), ["qa"])
  assert made["video_spec_hash"] == SPEC.hash and made["tokenizer_hash"] == chat.tokenizer_hash(chat.qwen_tokenizer())
  other = dataclasses.replace(SPEC, fps=SPEC.fps / 2)
  tfds_rewatch.prepare(str(tmp_path), "subset", recs[:2], str(toy), other, kind="qa")
  with pytest.raises(ValueError, match="made with different VideoSpecs"):
    tfds_rewatch.identity(str(tmp_path), ["qa", "subset"])


def test_a_set_prepared_under_its_own_name_holds_its_kinds_examples(toy, tmp_path):
  """A QA subset prepared as a set of its own (the demo's perception questions): the qa kind's
  prompt and features under another name, which trainers weight as a task; unknown kinds fail."""
  recs = _records(toy, "train", "qa")[:3]
  report = tfds_rewatch.prepare(str(tmp_path), "hard_questions", recs, str(toy), SPEC, kind="qa")
  assert report["config"] == "hard_questions" and report["kind"] == "qa" and report["written"] == 3
  (source,), meta = tfds_rewatch.data_sources(str(tmp_path), "hard_questions")
  assert meta["kind"] == "qa" and len(source) == 3 and "answer" not in source[0]  # not prompt-only
  tok = chat.qwen_tokenizer()
  trained = tok.decode(source[0]["input_ids"][source[0]["loss_mask"]].tolist(), skip_special_tokens=False)
  assert trained.startswith("<answer>")  # the direct-answer target
  with pytest.raises(ValueError, match="unknown kind of prepared set 'perception'"):
    tfds_rewatch.prepare(str(tmp_path), "perception", recs, str(toy), SPEC)


def test_pool_workers_store_their_videos_once_for_every_config(toy, tmp_path):
  """Pool workers write the videos they decode into store files of their own; a later config's
  pool reads those back instead of decoding again."""
  qa, cot = _records(toy, "train", "qa"), _records(toy, "train", "cot")
  first = tfds_rewatch.prepare(str(tmp_path), "qa", qa, str(toy), SPEC, processes=2)
  assert first["videos_stored"] == len({r.video for r in qa}) == len(VideoStore(str(tmp_path)))
  assert not list((tmp_path / "video_store").glob("qa-00000-of-00001-0*"))  # the parent wrote none
  again = tfds_rewatch.prepare(str(tmp_path), "cot", cot, str(toy), SPEC, processes=2)
  assert again["videos_stored"] == 0 and again["written"] == len(cot)
  (source,), _ = tfds_rewatch.data_sources(str(tmp_path), "cot")
  assert VideoStore(str(tmp_path)).attach(source[0])["frames"].shape[0] > 0


def test_duplicate_records_are_reported_not_fatal(toy, tmp_path):
  recs = _records(toy, "train", "caption")
  report = tfds_rewatch.prepare(str(tmp_path), "caption", recs + recs[:1], str(toy), SPEC)
  assert report["written"] == len(recs) and report["skipped"][0]["error"] == "duplicate record id"


@pytest.mark.parametrize("cache", [False, True])
def test_each_video_is_decoded_once_across_records_and_configs(toy, tmp_path, monkeypatch, cache):
  """The second config reads the videos the first one stored; with a frame cache too."""
  calls = []
  real = decode.load_video
  counted = lambda path, spec=VideoSpec(), **k: calls.append(path) or real(path, spec, **k)
  monkeypatch.setattr(decode, "load_video", counted)  # FrameCache's
  monkeypatch.setattr(tfds_rewatch, "load_video", counted)
  kw = dict(cache_dir=str(tmp_path / "cache")) if cache else {}
  qa, cot = _records(toy, "train", "qa")[:8], _records(toy, "train", "cot")[:8]
  tfds_rewatch.prepare(str(tmp_path), "qa", qa, str(toy), SPEC, **kw)
  tfds_rewatch.prepare(str(tmp_path), "cot", cot, str(toy), SPEC, **kw)
  assert sorted(calls) == sorted(set(calls)) and len(calls) == len({r.video for r in qa} | {r.video for r in cot})


def test_videos_are_stored_once_across_records_and_configs(toy, tmp_path):
  """Frames live in the prepared folder's video store, one entry per video whatever the number of
  records and configs about it; examples name it by key, and attach() gives back load_video's frames."""
  qa, cot = _records(toy, "train", "qa")[:8], _records(toy, "train", "cot")[:8]
  first = tfds_rewatch.prepare(str(tmp_path), "qa", qa, str(toy), SPEC)
  second = tfds_rewatch.prepare(str(tmp_path), "cot", cot, str(toy), SPEC)
  videos_qa, videos_cot = {r.video for r in qa}, {r.video for r in cot}
  assert len(qa) > len(videos_qa)  # several questions per video
  assert first["videos_stored"] == len(videos_qa) and second["videos_stored"] == len(videos_cot - videos_qa)
  store = VideoStore(str(tmp_path))
  assert len(store) == len(videos_qa | videos_cot)
  (source,), _ = tfds_rewatch.data_sources(str(tmp_path), "cot")
  tok = chat.qwen_tokenizer()
  for i in range(len(source)):  # the shared videos' token counts came from the store's headers
    ex = store.attach(source[i])
    video = load_video(str(toy / ex["video"].decode()), SPEC)
    np.testing.assert_array_equal(ex["frames"], video.frames)
    t, h, w = ex["frames"].shape[:3]
    assert list(ex["input_ids"]).count(tok.token_to_id("<|video_pad|>")) == t // 2 * (h // 28) * (w // 28)
    np.testing.assert_allclose(ex["timestamps"], video.timestamps, rtol=1e-6)
    assert abs(float(ex["second_per_grid"]) - video.second_per_grid(2)) < 1e-6
  with pytest.raises(KeyError, match="not in the prepared data's video store"):
    store["0" * 64]


def test_a_store_file_without_its_sidecar_is_ignored_and_replaced(toy, tmp_path):
  """A prepare that died mid-way leaves a store file with no keys sidecar: readers skip it, and the
  next prepare of that config and shard writes it again."""
  qa = _records(toy, "train", "qa")[:4]
  tfds_rewatch.prepare(str(tmp_path / "a"), "qa", qa, str(toy), SPEC)
  (sidecar,) = (tmp_path / "a" / "video_store").glob("*.keys.json")
  sidecar.unlink()
  assert len(VideoStore(str(tmp_path / "a"))) == 0
  shutil.rmtree(tmp_path / "a" / "rewatch")
  tfds_rewatch.prepare(str(tmp_path / "a"), "qa", qa, str(toy), SPEC)
  assert len(VideoStore(str(tmp_path / "a"))) == len({r.video for r in qa})


def test_data_of_the_old_format_or_on_a_url_is_named(tmp_path):
  (tmp_path / "rewatch" / "qa" / "1.0.0").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="prepared in format 1.0.0.*prepare it again"):
    tfds_rewatch.data_sources(str(tmp_path), "qa")
  with pytest.raises(ValueError, match="filesystem path.*gcsfuse"):
    tfds_rewatch.data_sources("gs://bucket/prepared", "qa")


def test_a_preparation_that_dies_resumes_without_decoding_the_stored_videos(toy, tmp_path, monkeypatch):
  """Store files are finished every VIDEOS_PER_FILE videos (1 here): a crash after two videos keeps
  them, and the rerun decodes only the rest, numbering its files after the finished ones."""
  from rewatch_jax.data import video_store
  monkeypatch.setattr(video_store, "VIDEOS_PER_FILE", 1)
  recs = _records(toy, "train", "qa") + _records(toy, "test", "qa")
  videos = {r.video for r in recs}
  assert len(videos) == 3
  calls, real = [], tfds_rewatch.load_video

  def dies_on_the_third(path, spec=VideoSpec(), **k):
    calls.append(path)
    if len(calls) == 3:
      raise RuntimeError("killed")
    return real(path, spec, **k)
  monkeypatch.setattr(tfds_rewatch, "load_video", dies_on_the_third)
  with pytest.raises(RuntimeError, match="killed"):
    tfds_rewatch.prepare(str(tmp_path), "qa", recs, str(toy), SPEC)
  assert len(VideoStore(str(tmp_path))) == 2
  calls.clear()
  monkeypatch.setattr(tfds_rewatch, "load_video", lambda path, spec=VideoSpec(), **k: calls.append(path) or real(path, spec, **k))
  report = tfds_rewatch.prepare(str(tmp_path), "qa", recs, str(toy), SPEC)
  assert len(calls) == 1 and report["written"] == len(recs) and report["videos_stored"] == 1
  assert sorted(p.name for p in (tmp_path / "video_store").glob("*.keys.json")) == [
      f"qa-00000-of-00001-0000{i}.keys.json" for i in range(3)]
  (source,), _ = tfds_rewatch.data_sources(str(tmp_path), "qa")
  store = VideoStore(str(tmp_path))
  assert {store.attach(source[i])["frames"].shape[0] > 0 for i in range(len(source))} == {True}


def test_data_copied_without_its_video_store_fails_at_start(toy, tmp_path):
  from rewatch_jax.data import pipeline
  qa = _records(toy, "train", "qa")[:4]
  tfds_rewatch.prepare(str(tmp_path / "a"), "qa", qa, str(toy), SPEC)
  shutil.copytree(tmp_path / "a" / "rewatch", tmp_path / "b" / "rewatch")  # the examples only
  assert len(pipeline.source(str(tmp_path / "a"), "qa")) == len(qa)
  with pytest.raises(FileNotFoundError, match=r"qa example 0 needs video .* not in .*video_store \(0 videos\)"):
    pipeline.source(str(tmp_path / "b"), "qa")
