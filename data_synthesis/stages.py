"""The five stages, as the paper describes them (REWATCH_METHOD.md sections 2-4). Each takes the
run (pipeline.Synthesis) and returns a `Stage`: where its work items come from and the async
function that does one.

* caption (item: a video): frames at `caption_fps` from the project's decoder; a video longer than
  `segment_length` is split by M_seg, shown the frames thinned to `segment_fps`; M_cap captions each
  segment from its frames, with times from the segment's start, realigned to the video's; the
  segments' events merged are C_detail (a CaptionRecord).
* qa (a video): C_sum from M_sum, then M_qa's contrastive questions from C_detail and C_sum
  (qa_candidates.jsonl, open form; the summary kept in the done-manifest).
* filter (a candidate): F1 M_verify on C_detail, F2 every text probe on the question alone, F3
  every summary probe on question + C_sum; dropped when F1 says wrong or a probe family's mean
  correctness reaches its theta (qa_filtered.jsonl; the verdicts in the record's lineage).
* mc (a kept pair): M_rewrite's four options; both forms written to qa.jsonl, linked by
  `lineage.extra.pair`.
* cot (a QA record of `cot.forms`): the Multi-Agent ReAct loop (Reasoner action -> Observer
  answer from C_detail, each finished step journaled to cot.steps.jsonl, so a killed trajectory
  goes on from its last complete step), rejection unless the final answer is the record's, then
  M_convert's CoT text, kept only if it passes the RL reward's format check
  (rewards.check_format) with the record's answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Awaitable, Callable

from data_synthesis import frames, schemas
from data_synthesis.roles import Usage
from data_synthesis.store import append_log, read_log
from rewatch_jax.data import records
from rewatch_jax.data.records import CaptionRecord, CoTRecord, Lineage, QARecord, Segment, format_timestamp
from rewatch_jax.data.video import source
from rewatch_jax.data.video.ffmpeg import VideoError
from rewatch_jax.rewards.accuracy import accuracy
from rewatch_jax.rewards.answers import parse_answer
from rewatch_jax.rewards.format import check_format

STAGE_NAMES = ("caption", "qa", "filter", "mc", "cot")
SOURCE = "rewatch-synthesis"
TOLERANCE = 1.0  # seconds a model's times may pass a segment's or the video's end
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi")


def find_videos(root: str) -> list[str]:
  """Video files under `root`, as paths relative to it (the records' `video`), sorted."""
  out = []
  for d, _, files in os.walk(root, followlinks=True):
    out += [os.path.relpath(os.path.join(d, f), root) for f in files
            if f.lower().endswith(VIDEO_EXTENSIONS) and not f.endswith(".tmp.mp4")]  # (.tmp.mp4: being written)
  return sorted(out)


@dataclasses.dataclass
class Stage:
  """A stage's work: items from the start (`initial`) or one per upstream record as it is committed
  (`items_of` a record of the `upstream` stage), and the async function doing one item."""
  work: Callable[[str], Awaitable[Outcome]]
  initial: tuple[str, ...] = ()
  upstream: str | None = None
  items_of: Callable[[records.Record], list[str]] = lambda r: []


@dataclasses.dataclass
class Outcome:
  """What a stage's work function returns for one item."""
  records: list = dataclasses.field(default_factory=list)
  status: str = "ok"
  info: dict = dataclasses.field(default_factory=dict)


def _spec(run):
  c = run.c.caption
  return frames.spec(c.caption_fps, c.frame_pixels, c.max_frames)


def spec_hashes(run) -> dict[str, str]:
  return {"caption": _spec(run).hash}


def _video_line(video: str, duration: float) -> str:
  return f"Video: {video} (duration {format_timestamp(duration)})"


def _lineage(run, role: str, usage: Usage, spec_hash: str, **extra) -> Lineage:
  r = run.roles[role]
  return Lineage(source=SOURCE, model=r.model, prompt_version=r.prompt, video_spec_hash=spec_hash,
                 extra=dict(role=r.lineage(), usage=dataclasses.asdict(usage), **extra))


def _right(answer: str | None, q: QARecord) -> bool:
  """Whether a model's answer is the record's ("~": the project's answer scorer, exact)."""
  if answer is None:
    return False
  parsed = parse_answer(f"<answer>{answer}</answer>", q.options if q.form == "mc" else None)
  return accuracy(parsed, q) == 1.0


# ---- caption ----

def caption(run):
  c, spec = run.c.caption, _spec(run)
  roles, ask = run.roles, run.asker.ask

  async def work(video: str):
    path, usage = os.path.join(run.videos_dir, video), Usage()
    try:
      info = await asyncio.to_thread(source.probe, path)
      if info.duration < c.min_duration:
        return Outcome(status="too_short", info={"error": f"{info.duration:.1f} s, shorter than caption.min_duration "
                                                          f"({c.min_duration} s)"})
      async with run.decode_slots:
        decoded = await asyncio.to_thread(frames.load, path, spec)
    except VideoError as e:
      return Outcome(status="unreadable", info={"error": str(e)})
    duration = float(info.duration)
    if duration > c.segment_length:
      limit = min(c.frames_per_call, max(2, int(duration * c.segment_fps)))

      def covers(ans: schemas.Segments) -> None:
        s = ans.segments
        if s[0].start > TOLERANCE or s[-1].end < duration - TOLERANCE or any(
            b.start < a.end - TOLERANCE or b.start > a.end + TOLERANCE for a, b in zip(s, s[1:])):
          raise ValueError(f"the segments must follow each other and cover 0-{duration:.1f} s")

      seg = await ask("caption", video, roles["segment"], dict(
          video_line=_video_line(video, duration), segment_length=f"{c.segment_length:g}", duration=f"{duration:.1f}"),
          usage, frames.parts(decoded, 0, duration, limit), check=covers)
      if seg is None:
        return Outcome(status="invalid", info={"usage": dataclasses.asdict(usage)})
      spans = [(s.start, min(s.end, duration)) for s in seg.segments]
    else:
      spans = [(0.0, duration)]

    async def one(a: float, b: float):
      def inside(ans: schemas.Events) -> None:
        late = [e for e in ans.events if e.end > b - a + TOLERANCE]
        if late:
          raise ValueError(f"events past the segment's end ({b - a:.1f} s from its start): {late[0]}")
      line = f"Video: {video} (segment {a:.1f}-{b:.1f} s of {duration:.1f} s)"
      return await ask("caption", video, roles["caption"], dict(video_line=line, length=f"{b - a:.1f}"), usage,
                       frames.parts(decoded, a, b, c.frames_per_call, offset=a), check=inside)

    answers = await asyncio.gather(*(one(a, b) for a, b in spans))
    if any(x is None for x in answers):
      return Outcome(status="invalid", info={"usage": dataclasses.asdict(usage)})
    segments = sorted((Segment(a + e.start, min(a + e.end, duration), e.text.strip())
                       for (a, _), ans in zip(spans, answers) for e in ans.events), key=lambda s: (s.start, s.end))
    record = CaptionRecord(video=video, duration=duration, segments=tuple(segments),
                           lineage=_lineage(run, "caption", usage, spec.hash, segmenter=roles["segment"].lineage(),
                                            segments=[list(s) for s in spans]))
    return Outcome([record], info={"usage": dataclasses.asdict(usage), "segments": len(spans)})

  return Stage(work, initial=tuple(find_videos(run.videos_dir)))


# ---- QA ----


def qa(run):
  roles, ask, types = run.roles, run.asker.ask, tuple(run.c.qa.question_types)

  def known_types(ans: schemas.Questions) -> None:
    bad = sorted({q.question_type for q in ans.questions} - set(types))
    if bad:
      raise ValueError(f"question_type {bad} not among {list(types)}")

  async def work(video: str):
    cap, usage = run.caption(video), Usage()
    line = _video_line(video, cap.duration)
    s = await ask("qa", video, roles["summary"], dict(video_line=line, caption=cap.text), usage)
    q = s and await ask("qa", video, roles["qa"], dict(video_line=line, caption=cap.text, summary=s.summary,
                                                        per_video=run.c.qa.per_video, types=", ".join(types)),
                        usage, check=known_types)
    if q is None:
      return Outcome(status="invalid", info={"usage": dataclasses.asdict(usage)})
    lineage = _lineage(run, "qa", usage, cap.lineage.video_spec_hash, caption=cap.id)
    recs = {}
    for x in q.questions[:run.c.qa.per_video]:
      rec = QARecord(video=video, question=x.question.strip(), answer=x.answer.strip(), question_type=x.question_type,
                     duration=cap.duration, lineage=lineage)
      recs.setdefault(rec.id, rec)
    return Outcome(list(recs.values()), info={"usage": dataclasses.asdict(usage), "summary": s.summary})

  return Stage(work, upstream="caption", items_of=lambda r: [r.video])


# ---- filters ----

def filter(run):  # noqa: A001 (the stage's name)
  roles, ask, f = run.roles, run.asker.ask, run.c.filter

  async def work(cid: str):
    q, usage = run.stores["qa"].by_id[cid], Usage()
    cap = run.caption(q.video)
    summary = run.stores["qa"].done[q.video]["summary"]
    asks = [ask("filter", cid, roles["verify"], dict(video_line=_video_line(q.video, cap.duration), caption=cap.text,
                                                     question=q.question, answer=q.answer), usage)]
    asks += [ask("filter", cid, roles["probe_text"], dict(question=q.question), usage, model=m) for m in f.text_probes]
    asks += [ask("filter", cid, roles["probe_summary"], dict(summary=summary, question=q.question), usage, model=m)
             for m in f.summary_probes]
    answers = await asyncio.gather(*asks)
    if any(a is None for a in answers):
      return Outcome(status="invalid", info={"usage": dataclasses.asdict(usage), "question_type": q.question_type})
    verify, text, summ = answers[0], answers[1:1 + len(f.text_probes)], answers[1 + len(f.text_probes):]
    mean = lambda xs: sum(_right(a.answer, q) for a in xs) / len(xs) if xs else 0.0
    verdicts = dict(f1_correct=verify.correct, f2_probes_right=mean(text), f3_probes_right=mean(summ))
    dropped_by = [name for name, bad in (("F1", not verify.correct),
                                         ("F2", verdicts["f2_probes_right"] >= f.theta_text),
                                         ("F3", verdicts["f3_probes_right"] >= f.theta_sum)) if bad]
    info = dict(usage=dataclasses.asdict(usage), question_type=q.question_type, verdicts=verdicts)
    if dropped_by:
      return Outcome(status="dropped", info=dict(info, dropped_by=dropped_by))
    extra = dict(q.lineage.extra, verdicts=verdicts, filter_usage=dataclasses.asdict(usage))
    return Outcome([dataclasses.replace(q, lineage=dataclasses.replace(q.lineage, extra=extra))], "kept", info)

  return Stage(work, upstream="qa", items_of=lambda r: [r.id])


# ---- multiple choice ----

def mc(run):
  roles, ask = run.roles, run.asker.ask

  async def work(qid: str):
    q, usage = run.stores["filter"].by_id[qid], Usage()

    def one_right(ans: schemas.MultipleChoice) -> None:
      right = [k for k, o in zip(records.LETTERS, ans.options) if _right(o, q)]
      if len(set(ans.options)) < 4 or right != [ans.answer]:
        raise ValueError(f"the options must be distinct and exactly option {ans.answer} must be the answer "
                         f"{q.answer!r} (right: {right})")

    a = await ask("mc", qid, roles["rewrite"], dict(video_line=_video_line(q.video, q.duration), question=q.question,
                                                    answer=q.answer), usage, check=one_right)
    if a is None:  # the open form stands alone
      return Outcome([q], "open_only", {"usage": dataclasses.asdict(usage)})
    lineage = _lineage(run, "rewrite", usage, q.lineage.video_spec_hash, pair=q.id,
                       verdicts=q.lineage.extra["verdicts"])
    choice = QARecord(video=q.video, question=q.question, answer=a.answer, question_type=q.question_type, form="mc",
                      options=tuple(o.strip() for o in a.options), duration=q.duration, lineage=lineage)
    paired = dataclasses.replace(q, lineage=dataclasses.replace(q.lineage, extra=dict(q.lineage.extra, pair=choice.id)))
    return Outcome([paired, choice], info={"usage": dataclasses.asdict(usage)})

  return Stage(work, upstream="filter", items_of=lambda r: [r.id])


# ---- CoT: Multi-Agent ReAct ----

class StepJournal:
  """cot.steps.jsonl: each finished ReAct step (action + observation) of each trajectory, so that a
  killed trajectory resumes from its last complete step (torn lines and repeats ignored)."""

  def __init__(self, path: str):
    self.path, self.steps = path, {}
    for e in read_log(path):
      steps = self.steps.setdefault(e["item"], [])
      if e["step"] == len(steps):
        steps.append(e["entry"])

  def history(self, item: str) -> list[dict]:
    return list(self.steps.get(item, []))

  def append(self, item: str, entry: dict) -> None:
    steps = self.steps.setdefault(item, [])
    append_log(self.path, dict(item=item, step=len(steps), entry=entry))
    steps.append(entry)


def _history(steps: list[dict]) -> str:
  return "\n".join(f"Thought: {s['thought']}\nAction: {s['request']}\nObservation: {s['observation']}"
                   for s in steps) or "(nothing yet)"


def cot(run):
  roles, ask, c = run.roles, run.asker.ask, run.c.cot
  forms = tuple(c.forms)

  async def work(qid: str):
    q, usage = run.stores["mc"].by_id[qid], Usage()
    cap = run.caption(q.video)
    line, mmss = _video_line(q.video, cap.duration), format_timestamp(q.duration)
    options = ("Options: " + " | ".join(f"{k}. {o}" for k, o in zip(records.LETTERS, q.options))) if q.options else ""
    steps, final = run.journal.history(qid), None
    for step in steps:  # a trajectory resumed: what its journaled steps took
      usage.merge(step["usage"])

    def valid_step(s: schemas.Step) -> None:
      if s.action == "segment_query":
        a, b = records.parse_timestamp(s.start), records.parse_timestamp(s.end)  # RecordError is a ValueError
        if not 0 <= a <= b <= q.duration + TOLERANCE:
          raise ValueError(f"segment_query {s.start}-{s.end} is not a span of the video (00:00-{mmss})")
      elif s.action == "segment_retrieval" and not s.query.strip():
        raise ValueError("segment_retrieval needs a query")
      elif s.action == "final_answer" and not s.answer.strip():
        raise ValueError("final_answer needs an answer")

    while len(steps) < c.max_steps:
      before = dataclasses.asdict(usage)
      s = await ask("cot", qid, roles["reasoner"], dict(duration_mmss=mmss, video_line=line, question=q.question,
                                                         options=options, history=_history(steps)), usage,
                    check=valid_step)
      if s is None:
        return Outcome(status="invalid", info={"usage": dataclasses.asdict(usage)})
      if s.action == "final_answer":
        final = s
        break
      request = f"segment_query {s.start}-{s.end}" if s.action == "segment_query" else f"segment_retrieval {s.query}"
      o = await ask("cot", qid, roles["observer"], dict(video_line=line, caption=cap.text, request=request), usage)
      if o is None:
        return Outcome(status="invalid", info={"usage": dataclasses.asdict(usage)})
      run.journal.append(qid, dict(thought=s.thought, request=request, observation=o.observation,
                                   usage=usage.since(before)))
      steps = run.journal.history(qid)
    info = dict(usage=dataclasses.asdict(usage), steps=len(steps))
    if final is None:
      return Outcome(status="no_answer", info=info)
    if not _right(final.answer, q):
      return Outcome(status="rejected", info=dict(info, answer=final.answer))

    def well_formed(r: schemas.Reasoning) -> None:
      trace = check_format(r.reasoning, q.duration)
      if not trace.ok:
        raise ValueError(f"the CoT breaks the format: {trace.problem}")
      if not _right(trace.answer, q):
        raise ValueError(f"its <answer> ({trace.answer!r}) is not the investigation's final answer")

    hint = " Inside <answer></answer> give only the option's letter." if q.options else ""
    r = await ask("cot", qid, roles["convert"], dict(duration_mmss=mmss, question=q.question, options=options,
                                                      answer_hint=hint,
                                                      trajectory=_history(steps) + f"\nFinal answer: {final.answer}"),
                  usage, check=well_formed)
    if r is None:
      return Outcome(status="bad_format", info=info)
    lineage = _lineage(run, "convert", usage, q.lineage.video_spec_hash, qa=q.id, steps=len(steps),
                       reasoner=roles["reasoner"].lineage(), observer=roles["observer"].lineage(),
                       verdicts=q.lineage.extra.get("verdicts"))
    record = CoTRecord(video=q.video, question=q.question, answer=q.answer, question_type=q.question_type, form=q.form,
                       options=q.options, duration=q.duration, reasoning=r.reasoning, lineage=lineage)
    return Outcome([record], info=info)

  return Stage(work, upstream="mc", items_of=lambda r: [r.id] if r.form in forms else [])
