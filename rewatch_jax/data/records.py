"""Typed ReWatch records (caption, QA, CoT), JSONL I/O with validation, and importers.

Every record has a stable id (a hash of what defines it), the video path relative to a video root,
and lineage (where it came from, which model and prompt version made it). Readers validate every
line and name the file and line of a bad one; writers are atomic.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

QUESTION_TYPES = (
    "event_localization", "temporal_localization", "counting", "causal", "reading",
    "spatial", "object_recognition", "state_change", "numerical", "counterfactual",
    "other",  # imported data whose type is not one of ReWatch's ten (e.g. Video-R1 free-form)
)
FORMS = ("mc", "open")
# How an answer is scored (rewards/accuracy.py), as Video-R1 scores its RL data: by option letter,
# by value, by relative error, by word error rate, by ROUGE, by the overlap of time spans; "open":
# the normalised text (numbers by value), or an answer judge where one is configured.
ANSWER_TYPES = ("multiple choice", "numerical", "regression", "OCR", "free-form", "time span", "open")
LETTERS = "ABCDEFGH"


class RecordError(ValueError):
  """A malformed record; the message names the file and line when read from disk."""


# ---- time and caption text ----

def format_timestamp(seconds: float) -> str:
  """MM:SS (minutes may exceed 59, as in ReWatch's captions of long videos)."""
  s = int(round(max(0.0, seconds)))
  return f"{s // 60:02d}:{s % 60:02d}"


def parse_timestamp(text: str) -> float:
  parts = text.strip().split(":")
  if not 2 <= len(parts) <= 3 or not all(p.strip().isdigit() for p in parts):
    raise RecordError(f"bad timestamp {text!r} (want MM:SS or HH:MM:SS)")
  value = 0
  for p in parts:
    value = value * 60 + int(p)
  return float(value)


# a time span "[MM:SS-MM:SS]" (or HH:MM:SS), as captions and CoT observations open with it
SPAN = r"\[\s*(\d+(?::\d+){1,2})\s*-\s*(\d+(?::\d+){1,2})\s*\]"
_SEGMENT = re.compile(rf"^\s*{SPAN}\s*(.+?)\s*$")


@dataclasses.dataclass(frozen=True)
class Segment:
  start: float
  end: float
  text: str

  def render(self) -> str:
    return f"[{format_timestamp(self.start)}-{format_timestamp(self.end)}] {self.text}"


def parse_caption(text: str) -> list[Segment]:
  """`[MM:SS-MM:SS] description` lines -> segments (blank lines ignored, others are errors)."""
  segments = []
  for line in text.splitlines():
    if not line.strip():
      continue
    m = _SEGMENT.match(line)
    if m is None:
      raise RecordError(f"caption line is not '[MM:SS-MM:SS] text': {line.strip()[:80]!r}")
    segments.append(Segment(parse_timestamp(m.group(1)), parse_timestamp(m.group(2)), m.group(3)))
  return segments


def render_caption(segments: Iterable[Segment]) -> str:
  return "\n".join(s.render() for s in segments)


# ---- records ----

@dataclasses.dataclass(frozen=True)
class Lineage:
  source: str = ""  # dataset or generator the record came from (e.g. "Video-R1", "toyworld")
  model: str = ""  # model that wrote it, if any
  prompt_version: str = ""
  video_spec_hash: str = ""
  extra: dict = dataclasses.field(default_factory=dict)


def safe_video_path(video: str) -> str:
  """Relative, normalised, inside the video root: absolute paths and `..` escapes are rejected."""
  if not isinstance(video, str) or not video.strip():
    raise RecordError("video path is empty")
  norm = os.path.normpath(video.replace("\\", "/"))
  if os.path.isabs(norm) or norm == ".." or norm.startswith("../") or re.match(r"^[A-Za-z]:", norm):
    raise RecordError(f"video path {video!r} escapes the video root")
  return norm


def resolve_video(root: str, video: str) -> str:
  """The file of a record's video under `root`. The path itself may not leave the root (`..`,
  absolute paths); symlinks inside the root are followed wherever they point: a root the user
  names may be made of links to where each source's videos live (ReWatch keeps one root a source)."""
  return os.path.join(root, safe_video_path(video))


def _stable_id(kind: str, *parts: Any) -> str:
  blob = json.dumps([kind, *parts], sort_keys=True, ensure_ascii=False).encode()
  return f"{kind}-{hashlib.sha256(blob).hexdigest()[:16]}"


@dataclasses.dataclass(frozen=True)
class CaptionRecord:
  video: str
  duration: float
  segments: tuple[Segment, ...]
  lineage: Lineage = Lineage()
  id: str = ""
  kind: str = "caption"

  def __post_init__(self):
    object.__setattr__(self, "video", safe_video_path(self.video))
    object.__setattr__(self, "segments", tuple(
        s if isinstance(s, Segment) else Segment(**s) for s in self.segments))
    if not self.segments:
      raise RecordError(f"caption of {self.video} has no segments")
    for s in self.segments:
      if not 0 <= s.start <= s.end or not s.text.strip():
        raise RecordError(f"caption of {self.video}: bad segment {s}")
    if not self.id:
      object.__setattr__(self, "id", _stable_id("caption", self.video, render_caption(self.segments)))

  @property
  def text(self) -> str:
    return render_caption(self.segments)


@dataclasses.dataclass(frozen=True)
class QARecord:
  video: str
  question: str
  answer: str  # open form: the answer text; MC: the option letter
  question_type: str
  form: str = "open"
  options: tuple[str, ...] = ()  # MC option texts, in letter order
  duration: float = 0.0
  lineage: Lineage = Lineage()
  id: str = ""
  kind: str = "qa"
  answer_type: str = ""  # a key of ANSWER_TYPES; "": "multiple choice" for mc, "open" otherwise


  def __post_init__(self):
    object.__setattr__(self, "video", safe_video_path(self.video))
    object.__setattr__(self, "options", tuple(self.options))
    where = f"QA on {self.video}"
    if not self.question.strip() or not str(self.answer).strip():
      raise RecordError(f"{where}: empty question or answer")
    if self.question_type not in QUESTION_TYPES:
      raise RecordError(f"{where}: question_type {self.question_type!r} not in {QUESTION_TYPES}")
    if self.form not in FORMS:
      raise RecordError(f"{where}: form must be 'mc' or 'open', got {self.form!r}")
    if self.form == "mc":
      letters = LETTERS[:len(self.options)]
      if len(self.options) < 2 or self.answer not in letters:
        raise RecordError(f"{where}: MC answer {self.answer!r} must be one of {list(letters)} "
                          f"({len(self.options)} options)")
    elif self.options:
      raise RecordError(f"{where}: open questions have no options")
    if not self.answer_type:
      object.__setattr__(self, "answer_type", "multiple choice" if self.form == "mc" else "open")
    if self.answer_type not in ANSWER_TYPES:
      raise RecordError(f"{where}: answer_type {self.answer_type!r} not in {ANSWER_TYPES}")
    if (self.answer_type == "multiple choice") != (self.form == "mc"):
      raise RecordError(f"{where}: answer_type {self.answer_type!r} does not go with form {self.form!r}")
    if not self.id:
      object.__setattr__(self, "id", _stable_id(self.kind, self.video, self.question, self.answer,
                                                list(self.options), getattr(self, "reasoning", "")))

  @property
  def answer_text(self) -> str:
    """The answer as words (the option text for MC)."""
    return self.options[LETTERS.index(self.answer)] if self.form == "mc" else self.answer


@dataclasses.dataclass(frozen=True)
class CoTRecord(QARecord):
  reasoning: str = ""  # first-person text with <action>, <observation> and a final <answer>
  kind: str = "cot"

  def __post_init__(self):
    super().__post_init__()
    if "<answer>" not in self.reasoning or "</answer>" not in self.reasoning:
      raise RecordError(f"CoT on {self.video}: reasoning has no <answer>...</answer>")
    if self.reasoning.count("<action>") != self.reasoning.count("</action>") or (
        self.reasoning.count("<observation>") != self.reasoning.count("</observation>")):
      raise RecordError(f"CoT on {self.video}: unbalanced <action>/<observation> tags")


Record = CaptionRecord | QARecord | CoTRecord
_KINDS = {"caption": CaptionRecord, "qa": QARecord, "cot": CoTRecord}


def to_json(record: Record) -> dict[str, Any]:
  return dataclasses.asdict(record)


def from_json(d: dict[str, Any]) -> Record:
  if not isinstance(d, dict):
    raise RecordError(f"record must be a JSON object, got {type(d).__name__}")
  kind = d.get("kind")
  if kind not in _KINDS:
    raise RecordError(f"unknown record kind {kind!r} (want one of {sorted(_KINDS)})")
  cls = _KINDS[kind]
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = set(d) - fields
  if unknown:
    raise RecordError(f"unknown fields {sorted(unknown)} for a {kind} record")
  d = dict(d)
  d["lineage"] = Lineage(**d.get("lineage", {}))
  try:
    return cls(**d)
  except TypeError as e:
    raise RecordError(f"{kind} record: {e}") from e


def write_jsonl(path: str, records: Iterable[Record]) -> int:
  """Atomically write records (temp file + rename). Returns the count."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
  n = 0
  with os.fdopen(fd, "w") as f:
    for r in records:
      f.write(json.dumps(to_json(r), ensure_ascii=False) + "\n")
      n += 1
  os.replace(tmp, path)
  return n


def read_jsonl(path: str) -> Iterator[Record]:
  with open(path) as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        yield from_json(json.loads(line))
      except (json.JSONDecodeError, RecordError) as e:
        raise RecordError(f"{path}:{lineno}: {e}") from None


# ---- importers ----
#
# Released files are imported as users have them: a JSON list or JSONL, one bad row skipped and
# reported (never the whole file), question-type spellings mapped where they can be and counted
# where not (kept as "other"), absolute video paths accepted inside the video root, each format's
# fields kept (Video-R1's problem type as the answer type, its CoT as reasoning).

FORMATS = ("jsonl", "rewatch", "video_r1", "longvideo_reason")

_TYPE_ALIASES = {"ocr": "reading", "spatial_perception": "spatial", "numerical_reasoning": "numerical",
                 "causal_reasoning": "causal", "event_location": "event_localization",
                 "temporal_location": "temporal_localization", "regression": "numerical",
                 "event_localisation": "event_localization", "temporal_localisation": "temporal_localization",
                 "temporal_reasoning": "temporal_localization", "counting_problem": "counting", "count": "counting",
                 "object_recognition_": "object_recognition", "object": "object_recognition",
                 "action_recognition": "object_recognition", "state_changes": "state_change",
                 "counterfactual_reasoning": "counterfactual", "text_recognition": "reading", "reading_text": "reading"}


class Imported(NamedTuple):
  records: list
  skipped: list[tuple[str, str]]  # (where: "file[i]" or "file:line", why), records left out
  unmapped_types: dict[str, int]  # question-type spellings outside the alias table (imported as "other")


def import_records(path: str, fmt: str, kind: str, video_root: str = "", model: str = "") -> Imported:
  """The records of one file in format `fmt` (FORMATS) as records of `kind` (caption, qa or cot).
  `video_root`: absolute video paths inside it become relative to it (others are skipped)."""
  if fmt not in FORMATS:
    raise RecordError(f"unknown records format {fmt!r}; choose from {FORMATS}")
  out, skipped, unmapped = [], [], collections.Counter()
  images = 0
  for where, item in _items(path):
    try:
      if isinstance(item, RecordError):
        raise item
      if not isinstance(item, dict):
        raise RecordError(f"a row must be a JSON object, got {type(item).__name__}")
      if fmt == "jsonl":
        rec = from_json(item)
      elif fmt == "rewatch":
        rec = _rewatch_row(item, kind, path, model, video_root, unmapped)
      elif fmt == "video_r1":
        rec = _video_r1_row(item, kind, video_root, unmapped)
        if rec is None:
          images += 1
          continue
      else:
        rec = _longvideo_reason_row(item, kind, video_root, unmapped)
      if kind == "cot":
        _check_cot_answer(rec)
      out.append(rec)
    except (KeyError, TypeError) as e:
      skipped.append((where, f"missing or malformed field {e}"))
    except RecordError as e:
      skipped.append((where, str(e)))
  if images:
    log.warning("%s: left out %d image records (videos only)", path, images)
  return Imported(out, skipped, dict(unmapped))


def _items(path: str):
  """(where, item) for every row of a JSON list or a JSONL file (a bad line: a RecordError item)."""
  with open(path) as f:
    text = f.read()
  if text.lstrip().startswith("["):
    try:
      items = json.loads(text)
    except json.JSONDecodeError as e:
      raise RecordError(f"{path}: not valid JSON ({e}); a JSONL file holds one object per line") from None
    yield from ((f"{path}[{i}]", item) for i, item in enumerate(items))
    return
  for lineno, line in enumerate(text.splitlines(), 1):
    if line.strip():
      try:
        yield f"{path}:{lineno}", json.loads(line)
      except json.JSONDecodeError as e:
        yield f"{path}:{lineno}", RecordError(f"not JSON: {e}")


def _video(path: str, video_root: str) -> str:
  """A record's video, relative to the video root (an absolute path must lie inside it)."""
  path = str(path)
  if os.path.isabs(path):
    root = os.path.abspath(video_root) if video_root else ""
    if not root or os.path.commonpath([os.path.normpath(path), root]) != root:
      raise RecordError(f"absolute video path {path!r} is not inside the video root {video_root or '(none given)'}")
    path = os.path.relpath(os.path.normpath(path), root)
  return safe_video_path(path)


def _question_type(name, unmapped: collections.Counter) -> str:
  qtype = _normalise_type(name) if name else "other"
  if qtype not in QUESTION_TYPES:
    unmapped[str(name)] += 1
    return "other"
  return qtype


def _normalise_type(name: str) -> str:
  name = str(name).strip().lower().replace(" ", "_").replace("-", "_")
  return _TYPE_ALIASES.get(name, name)


def _answer_text(value) -> str:
  answer = str(value).strip()
  m = re.search(r"<answer>(.*?)</answer>", answer, re.S)
  return (m.group(1) if m else answer).strip()


def _qa_fields(item: dict, question_type: str, options=None, question=None) -> dict[str, Any]:
  """Question, answer (the `<answer>` content if tagged; a bare letter for MC) and options."""
  options = [re.sub(r"^\(?[A-H][.):]\s*", "", str(o)).strip() for o in (item.get("options") or [])
             if str(o).strip()] if options is None else options
  answer = _answer_text(item.get("answer", item.get("solution", "")))
  if options:
    letter = re.match(r"^\(?([A-Ha-h])(?:[.):]|\s|$)", answer)
    answer = letter.group(1).upper() if letter else answer
  question = str(item.get("question", item.get("problem", ""))).strip() if question is None else question
  return dict(question=question, answer=answer, question_type=question_type, form="mc" if options else "open",
              options=tuple(options))


def _check_cot_answer(rec) -> None:
  """A CoT whose final answer is not the record's is not trained on (reported instead)."""
  from rewatch_jax.rewards.answers import parse_answer  # (rewards imports records)
  final = parse_answer(rec.reasoning, rec.options if rec.form == "mc" else None)
  if final is None or (final != rec.answer if rec.form == "mc" else final.lower() != rec.answer.lower()):
    raise RecordError(f"the CoT's final answer {final!r} is not the record's {rec.answer!r}")


def _rewatch_row(item: dict, kind: str, path: str, model: str, video_root: str, unmapped) -> Record:
  """A released ReWatch row: `source` and `video_path` relative to that source's root (captions in
  `caption`, QA in `question`/`answer`/`question_type` (+ `options`), CoT in `cot`, `reasoning` or
  `response`)."""
  lineage = Lineage(source=str(item.get("source", "")), model=model, extra={"imported_from": os.path.basename(path)})
  video = _video(item.get("video_path", item.get("video")), video_root)  # inside its source's folder
  video = os.path.join(item["source"], video) if item.get("source") and not os.path.isabs(
      str(item.get("video_path", ""))) else video
  if kind == "caption":
    caption = item["caption"]
    text = "\n".join(caption) if isinstance(caption, list) else caption
    segments = parse_caption(text)
    return CaptionRecord(video=video, duration=float(item.get("duration", segments[-1].end)),
                         segments=tuple(segments), lineage=lineage)
  fields = _qa_fields(item, _question_type(item.get("question_type", item.get("type", "")), unmapped))
  if kind == "qa":
    return QARecord(video=video, lineage=lineage, **fields)
  reasoning = item.get("cot") or item.get("reasoning") or item.get("response") or ""
  return CoTRecord(video=video, lineage=lineage, reasoning=reasoning, **fields)


_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


def _video_r1_row(item: dict, kind: str, video_root: str, unmapped) -> Record | None:
  """A Video-R1 row (problem, problem_type, options, solution `<answer>X</answer>`, path; the CoT
  file's `process` too), or None for an image row (Video-R1-260k mixes them in). Its problem type
  maps to ReWatch's question types where they coincide (OCR -> reading, numerical/regression ->
  numerical; multiple choice and free-form -> other) and is kept whole as the answer type, which
  decides how the RL reward scores the answer. A CoT is `process` then `solution`, as Video-R1's
  own SFT target."""
  if item.get("data_type") == "image" or str(item.get("path", "")).lower().endswith(_IMAGE_SUFFIXES):
    return None
  problem = str(item.get("problem_type", "")).strip()
  qtype = _normalise_type(problem)
  fields = _qa_fields(item, qtype if qtype in ("reading", "numerical") else "other")
  answer_type = {t.lower(): t for t in ANSWER_TYPES}.get(problem.lower())
  if answer_type is None:
    unmapped[problem] += 1
    answer_type = ""
  common = dict(video=_video(item["path"], video_root), answer_type=answer_type,
                lineage=Lineage(source=str(item.get("data_source", "Video-R1"))), **fields)
  if kind != "cot":
    return QARecord(**common)
  if not str(item.get("process", "")).strip():
    raise RecordError("a Video-R1 row without `process` has no CoT")
  return CoTRecord(reasoning=f"{item['process'].strip()}\n{item['solution'].strip()}", **common)


_OPTION_LINE = re.compile(r"^\s*\(?([A-H])[.):]\s*(.+?)\s*$")


def _longvideo_reason_row(item: dict, kind: str, video_root: str, unmapped) -> Record:
  """A LongVideo-Reason row: `problem` (the question, its options on lines "A. ..." after it),
  `answer`, `videos` (a path or a list of one), `reasoning` (its CoT)."""
  videos = item["videos"]
  video = videos[0] if isinstance(videos, list) else videos
  lines = str(item["problem"]).strip().splitlines()
  options, first = [], None
  for i, line in enumerate(lines):
    m = _OPTION_LINE.match(line)
    if m and m.group(1) == "ABCDEFGH"[len(options)]:
      first = i if first is None else first
      options.append(m.group(2))
  question = "\n".join(lines[:first]).strip() if len(options) >= 2 else "\n".join(lines).strip()
  options = options if len(options) >= 2 else []
  fields = _qa_fields(item, _question_type(item.get("question_type", item.get("type", "")), unmapped),
                      options=options, question=question)
  common = dict(video=_video(video, video_root), lineage=Lineage(source="LongVideo-Reason"), **fields)
  if kind != "cot":
    return QARecord(**common)
  reasoning = str(item.get("reasoning", "")).strip()
  if "<answer>" not in reasoning:  # its reasoning ends before the answer: the answer closes it
    reasoning = f"{reasoning}\n<answer>{item['answer']}</answer>"
  return CoTRecord(reasoning=reasoning, **common)


def import_rewatch(path: str, kind: str, model: str = "") -> list[Record]:
  """Records of a released ReWatch file; raises on the first bad row (import_records skips and
  reports instead)."""
  return _strict(import_records(path, "rewatch", kind, model=model))


def import_video_r1(path: str, kind: str = "qa") -> list[Record]:
  """Records of a Video-R1 file (videos only); raises on the first bad row (import_records skips
  and reports instead)."""
  return _strict(import_records(path, "video_r1", kind))


def _strict(imported: Imported) -> list[Record]:
  if imported.skipped:
    where, why = imported.skipped[0]
    raise RecordError(f"{where}: {why}")
  return imported.records
