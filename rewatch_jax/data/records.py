"""Typed ReWatch records (caption, QA, CoT), JSONL I/O with validation, and importers.

Every record has a stable id (a hash of what defines it), the video path relative to a video root,
and lineage (where it came from, which model and prompt version made it). Readers validate every
line and name the file and line of a bad one; writers are atomic.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

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


_SEGMENT = re.compile(r"^\s*\[\s*(\d+(?::\d+){1,2})\s*-\s*(\d+(?::\d+){1,2})\s*\]\s*(.+?)\s*$")


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
  path = os.path.realpath(os.path.join(root, safe_video_path(video)))
  if os.path.commonpath([path, os.path.realpath(root)]) != os.path.realpath(root):
    raise RecordError(f"video path {video!r} resolves outside {root} (symlink?)")
  return path


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

_TYPE_ALIASES = {"ocr": "reading", "spatial_perception": "spatial", "numerical_reasoning": "numerical",
                 "causal_reasoning": "causal", "event_location": "event_localization",
                 "temporal_location": "temporal_localization", "regression": "numerical"}


def _normalise_type(name: str) -> str:
  name = str(name).strip().lower().replace(" ", "_").replace("-", "_")
  return _TYPE_ALIASES.get(name, name)


def _qa_fields(item: dict, question_type: str) -> dict[str, Any]:
  """Question, answer (the `<answer>` content if tagged; a bare letter for MC) and options."""
  options = [re.sub(r"^\(?[A-H][.):]\s*", "", str(o)).strip() for o in item.get("options") or []]
  answer = str(item.get("answer", item.get("solution", ""))).strip()
  m = re.search(r"<answer>(.*?)</answer>", answer, re.S)
  answer = (m.group(1) if m else answer).strip()
  if options:
    answer = answer.strip("() .")[:1].upper()
  return dict(question=str(item.get("question", item.get("problem", ""))).strip(), answer=answer,
              question_type=_normalise_type(question_type), form="mc" if options else "open",
              options=tuple(options))


def import_rewatch(path: str, kind: str, model: str = "") -> list[Record]:
  """Records from a released ReWatch annotation file (a JSON list; each item has `source` and a
  relative `video_path`; captions in `caption`, QA in `question`/`answer`/`question_type`
  (+ `options`), CoT reasoning in `cot`, `reasoning` or `response`)."""
  with open(path) as f:
    items = json.load(f)
  out = []
  for i, item in enumerate(items):
    where = f"{path}[{i}]"
    try:
      lineage = Lineage(source=str(item.get("source", "")), model=model,
                        extra={"imported_from": os.path.basename(path)})
      video = safe_video_path(item["video_path"])  # must stay inside its source's folder
      video = os.path.join(item["source"], video) if item.get("source") else video
      if kind == "caption":
        caption = item["caption"]
        text = "\n".join(caption) if isinstance(caption, list) else caption
        segments = parse_caption(text)
        out.append(CaptionRecord(video=video, duration=float(item.get("duration", segments[-1].end)),
                                 segments=tuple(segments), lineage=lineage))
      else:
        fields = _qa_fields(item, item.get("question_type", item.get("type", "")))
        if kind == "qa":
          out.append(QARecord(video=video, lineage=lineage, **fields))
        else:
          reasoning = item.get("cot") or item.get("reasoning") or item.get("response") or ""
          out.append(CoTRecord(video=video, lineage=lineage, reasoning=reasoning, **fields))
    except (KeyError, TypeError) as e:
      raise RecordError(f"{where}: missing or malformed field {e}") from None
    except RecordError as e:
      raise RecordError(f"{where}: {e}") from None
  return out


_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


def import_video_r1(path: str) -> list[QARecord]:
  """Video-R1-style records: problem, problem_type, options, solution `<answer>X</answer>`, path.
  Its problem types map to ReWatch's question types where they coincide (OCR -> reading,
  numerical/regression -> numerical; the rest, multiple choice and free-form, become 'other') and
  are kept whole as the record's answer_type, which decides how the RL reward scores the answer.
  Image records (Video-R1-260k mixes them in: `data_type` "image", or an image file) are left out,
  with a warning: this pipeline trains on videos."""
  with open(path) as f:
    items = json.load(f)
  out, images = [], 0
  for i, item in enumerate(items):
    if isinstance(item, dict) and (item.get("data_type") == "image"
                                   or str(item.get("path", "")).lower().endswith(_IMAGE_SUFFIXES)):
      images += 1
      continue
    try:
      problem = str(item.get("problem_type", "")).strip()
      qtype = _normalise_type(problem)
      fields = _qa_fields(item, qtype if qtype in ("reading", "numerical") else "other")
      answer_type = {t.lower(): t for t in ANSWER_TYPES}.get(problem.lower(), "")  # scored as Video-R1 scores it
      out.append(QARecord(video=item["path"], lineage=Lineage(source=str(item.get("data_source", "Video-R1"))),
                          answer_type=answer_type, **fields))
    except (KeyError, TypeError) as e:
      raise RecordError(f"{path}[{i}]: missing or malformed field {e}") from None
    except RecordError as e:
      raise RecordError(f"{path}[{i}]: {e}") from None
  if images:
    logging.getLogger(__name__).warning("%s: left out %d image records of %d (videos only)", path, images, len(items))
  return out
