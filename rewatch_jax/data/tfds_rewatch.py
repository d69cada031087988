"""TFDS builder `rewatch`: JSONL records + a video folder -> ArrayRecord of tokens, and decoded frames.

Each prepared set (a builder config) has a name and a kind. Kinds: caption (caption prompt), qa
(direct-answer prompt), cot (thinking prompt), rl (thinking prompt without the answer, plus ground
truth and the video's caption for the O&R reward), and qa_eval (direct-answer prompt without the
answer, plus ground truth). A set's name is its kind unless given (`prepare(..., kind=)`): a subset
of QA records prepared under a name of its own trains as a task of its own (the demo's
"perception"). Each video is decoded once with the VideoSpec and its resized frames are stored once
for all records and sets in the prepared folder's video store (`video_store.py`; examples carry its
`video_key`); the dataset metadata records the spec's hash and the tokenizer's
(`chat.tokenizer_hash`): what the frames and the tokens were made with. No TensorFlow is needed to
build or read.

Bad videos or records are skipped and listed in `prepare_report.json` (or stop the build with
`on_error="raise"`). So are captions that run past their decoded video by more than
`duration_tolerance` (default 1 s: timestamps are whole seconds), with the records of rl sets whose
video's caption does: their times would be taught, or rewarded, wrong. Such captions are also
listed with their end and the decoded duration (`caption_overruns`), as are records whose own
`duration` differs from the decoded one by more than the tolerance (`duration_mismatches`; kept;
qa_eval sets keep their records too, their caption unused). Many hosts can prepare disjoint shards of
one dataset (`num_shards`, `shard_index`); `data_sources` reads all shards back.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import multiprocessing
import multiprocessing.util
import os
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from rewatch_jax.data import chat, processor, records, video_store
from rewatch_jax.data.video import FrameCache, VideoSpec, cpu_cores, file_digest, load_video
from rewatch_jax.models.configs import VisionConfig

VERSION = "1.1.0"  # 1.1: frames in the shared video store, not in every example
# Seconds a caption may end past its decoded video, or a record's duration differ from the decoded
# one, and pass unreported: caption timestamps are whole seconds (MM:SS), so a 30.4 s video's caption
# may rightly end at 00:31; past that it was written for another (longer) file.
DURATION_TOLERANCE = 1.0

log = logging.getLogger(__name__)


class Kind(NamedTuple):
  records: tuple[type, ...]  # the record types a set of this kind holds
  mode: str  # the prompt they are rendered in (chat.MODES)
  prompt_only: bool = False  # generation prompt + ground truth, no assistant turn


KINDS = {"caption": Kind((records.CaptionRecord,), "caption"), "qa": Kind((records.QARecord,), "direct"),
         "cot": Kind((records.CoTRecord,), "thinking"), "rl": Kind((records.QARecord,), "thinking", True),
         "qa_eval": Kind((records.QARecord,), "direct", True)}


@dataclasses.dataclass(eq=False)
class SetConfig(tfds.core.BuilderConfig):
  """A prepared set: its name (the builder config's) and its kind (a key of KINDS)."""
  kind: str = ""


def _features(prompt_only: bool) -> tfds.features.FeaturesDict:
  t = tfds.features.Tensor
  feats = {
      "id": tfds.features.Text(), "kind": tfds.features.Text(), "video": tfds.features.Text(),
      "record": tfds.features.Text(),  # the full record as JSON (lineage included)
      "video_key": tfds.features.Text(),  # the decoded video in the prepared folder's video store
      "input_ids": t(shape=(None,), dtype=np.int32),
      "loss_mask": t(shape=(None,), dtype=np.bool_),
  }
  if prompt_only:
    feats.update(answer=tfds.features.Text(), caption=tfds.features.Text(),
                 question_type=tfds.features.Text())
  return tfds.features.FeaturesDict(feats)


@dataclasses.dataclass
class _Job:
  """One video, the records (of this set and shard) about it, and how to prepare them."""
  path: str
  records: list
  kind: str
  spec: VideoSpec
  tokenizer: str | None  # tokenizer.json or a folder with one; None: the Qwen vocabulary
  cache_dir: str | None
  caption: records.CaptionRecord | None  # the video's caption (prompt-only sets; rl's O&R reward reads it)
  threads: int  # decoder threads
  tolerance: float  # DURATION_TOLERANCE


_STORE: video_store.VideoStore | None = None  # the prepared folder's store as the call began, per process
_WRITER: video_store.VideoStoreWriter | None = None  # a pool worker's own store files


def _open_store(store_dir: str, writer_name: str = "", slots=None, per_file: int = 0) -> None:
  """Per process: the store as it is, and in a pool worker its own writer (files named by a slot
  taken from the shared counter `slots`, so a rerun's workers overwrite a killed run's leftovers;
  `per_file` videos a file, so a killed run loses about as much work as with one writer).
  Workers write the videos they decode themselves: sending ~54 MB of frames to the parent and
  compressing them there capped a host at ~8 videos/s whatever the process count."""
  global _STORE, _WRITER
  _STORE = video_store.VideoStore(store_dir)
  if writer_name:
    with slots.get_lock():
      slot, slots.value = slots.value, slots.value + 1
    _WRITER = video_store.VideoStoreWriter(store_dir, f"{writer_name}-w{slot:03d}", per_file)
    multiprocessing.util.Finalize(_WRITER, _WRITER.close, exitpriority=10)  # at the pool's close + join


def _overrun(caption: records.CaptionRecord, duration: float, tolerance: float):
  """A caption's report entry and the reason it is not used if it ends more than `tolerance`
  seconds past the decoded video's `duration`, else None."""
  end = max(s.end for s in caption.segments)
  if end <= duration + tolerance:
    return None
  entry = {"id": caption.id, "video": caption.video, "caption_end": end, "duration": round(duration, 3)}
  return entry, f"caption ends at {records.format_timestamp(end)} past the video's {duration:.1f} s"


def _checks(job: _Job, duration: float) -> tuple[dict, dict]:
  """The decoded duration against the captions and records of a job: ({report list: [entries]},
  {record id: why it is skipped}). A caption ending past the video skips itself (caption sets) or
  the records it is the reward's reference for (rl sets; qa_eval sets, which do not read it, keep
  theirs); a record's own duration that differs from the decoded one is only reported."""
  notes, skip = {"caption_overruns": [], "duration_mismatches": []}, {}
  captions = [r for r in job.records if isinstance(r, records.CaptionRecord)]
  for rec in job.records + ([job.caption] if job.caption is not None else []):
    if rec.duration and abs(rec.duration - duration) > job.tolerance:
      notes["duration_mismatches"].append({"id": rec.id, "video": rec.video, "record_duration": rec.duration,
                                           "duration": round(duration, 3)})
  for cap in captions:
    if (over := _overrun(cap, duration, job.tolerance)) is not None:
      notes["caption_overruns"].append(over[0])
      skip[cap.id] = over[1]
  if job.caption is not None and (over := _overrun(job.caption, duration, job.tolerance)) is not None:
    notes["caption_overruns"].append(over[0])
    if job.kind == "rl":
      skip.update((rec.id, f"its video's {over[1]} (the O&R reward's reference)") for rec in job.records)
  return notes, skip


def _decode(job: _Job):
  """Worker: the frames of one video (from the video store if an earlier prepare stored it, else
  decoded, through `cache_dir`'s frame cache if one is given) and the conversations of its records.
  Returns (video key, its frames' shape, the video encoded for the store or None if it is there
  or this worker stored it, whether this worker stored it, [(record id, example, error)], report
  notes (`_checks`)); a video that fails fails each of its records."""
  try:
    digest = file_digest(job.path)
    key = video_store.video_key(digest, job.spec)
    if _STORE is not None and key in _STORE:  # its header is enough: frames stay where they are
      head = _STORE.headers[key]
      frames_shape, duration, encoded = tuple(head["shape"]), head["duration"], None
    else:
      if job.cache_dir:
        video = FrameCache(job.cache_dir).load(job.path, job.spec, digest, threads=job.threads)
      else:
        video = load_video(job.path, job.spec, threads=job.threads)
      frames_shape, duration, encoded = video.frames.shape, video.duration, video_store.encode(video)
  except (ValueError, OSError) as e:  # VideoError is a ValueError
    return None, None, None, False, [(rec.id, None, f"{type(e).__name__}: {e}") for rec in job.records], {}
  notes, skip = _checks(job, duration)
  tokenizer = chat.qwen_tokenizer(job.tokenizer)
  kind = KINDS[job.kind]
  out = []
  for rec in job.records:
    if rec.id in skip:
      out.append((rec.id, None, skip[rec.id]))
      continue
    try:
      messages = chat.conversation(kind.mode, rec, duration, with_answer=not kind.prompt_only)
      # (the patching every Qwen2.5-VL size shares: VisionConfig's defaults)
      enc = processor.encode_tokens(tokenizer, messages, frames_shape, VisionConfig())
      ex = {"id": rec.id, "kind": rec.kind, "video": rec.video, "record": json.dumps(records.to_json(rec)),
            "video_key": key, "input_ids": enc.input_ids, "loss_mask": enc.loss_mask}
      if kind.prompt_only:
        ex.update(answer=rec.answer, caption=job.caption.text if job.caption is not None else "",
                  question_type=rec.question_type)
      out.append((rec.id, ex, None))
    except ValueError as e:  # RecordError is a ValueError
      out.append((rec.id, None, f"{type(e).__name__}: {e}"))
  stored = False
  if _WRITER is not None and encoded is not None:  # stored here, not sent (as the parent: if any record needs it)
    stored = any(error is None for _, _, error in out) and _WRITER.add(key, encoded)
    encoded = None
  return key, tuple(frames_shape), encoded, stored, out, notes


class Rewatch(tfds.core.GeneratorBasedBuilder):
  """ReWatch SFT/RL data prepared for training (see module docstring)."""

  VERSION = tfds.core.Version(VERSION)
  BUILDER_CONFIGS = [SetConfig(name=k, kind=k) for k in KINDS]

  def __init__(self, *, records=(), video_root: str = "", spec: VideoSpec = VideoSpec(),
               tokenizer: str | None = None, captions=(), cache_dir: str | None = None,
               on_error: str = "skip", processes: int = 1, num_shards: int = 1, shard_index: int = 0,
               store_dir: str = "", duration_tolerance: float = DURATION_TOLERANCE, **kwargs):
    """`store_dir`: the prepared folder whose video store (`store_dir`/video_store) gets the frames;
    `prepare` passes its `out_dir`, shared by every shard and set. `duration_tolerance`: seconds a
    caption may end past its decoded video (beyond: skipped, see the module docstring), or a
    record's duration differ from the decoded one (beyond: reported)."""
    if on_error not in ("skip", "raise"):
      raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    if not duration_tolerance >= 0:
      raise ValueError(f"duration_tolerance must be >= 0 seconds, got {duration_tolerance!r}")
    if not 0 <= shard_index < num_shards:
      raise ValueError(f"shard_index {shard_index} outside [0, {num_shards})")
    self._records, self._video_root, self._spec = list(records), video_root, spec
    self._tokenizer, self._cache_dir, self._on_error = tokenizer, cache_dir, on_error
    self._captions = {c.video: c for c in captions}
    self._tolerance = float(duration_tolerance)
    self._processes, self._num_shards, self._shard_index = processes, num_shards, shard_index
    self._store_dir = store_dir or kwargs.get("data_dir", "")
    self.report = {}
    super().__init__(**kwargs)
    self._kind = self.builder_config.kind

  def _info(self):
    # disable_shuffling: stored in the order generated (TFDS would reorder by key hash), so the
    # shapes kept beside the shard line up with its examples (pipeline.GlobalBatches reads them by index)
    prompt_only = KINDS[self.builder_config.kind].prompt_only
    return self.dataset_info_from_configs(features=_features(prompt_only), disable_shuffling=True,
                                          metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    set_name = self.builder_config.name
    wanted = KINDS[self._kind].records
    typed = sorted((r for r in self._records if type(r) in wanted), key=lambda r: r.id)
    # Shards split the videos, not the records: each video's records meet in one shard, which
    # stores the video once.
    videos = sorted({r.video for r in typed})[self._shard_index::self._num_shards]
    ours = set(videos)
    mine = [r for r in typed if r.video in ours]
    skipped, by_video, seen = [], {}, set()
    for rec in mine:
      if rec.id in seen:
        skipped.append({"id": rec.id, "video": rec.video, "error": "duplicate record id"})
        continue
      seen.add(rec.id)
      try:
        path = records.resolve_video(self._video_root, rec.video)
      except records.RecordError as e:
        skipped.append({"id": rec.id, "video": rec.video, "error": str(e)})
        continue
      by_video.setdefault(path, []).append(rec)
    # Several processes decode one video each at once: their decoders share the cores (0: all of them).
    threads = max(1, cpu_cores() // self._processes) if self._processes > 1 else 0
    jobs = [_Job(path, recs, self._kind, self._spec, self._tokenizer, self._cache_dir,
                 self._captions.get(recs[0].video) if KINDS[self._kind].prompt_only else None, threads,
                 self._tolerance)
            for path, recs in by_video.items()]
    name = f"{set_name}-{self._shard_index:05d}-of-{self._num_shards:05d}"
    store = video_store.VideoStoreWriter(self._store_dir, name)
    written = stored = 0
    notes = {"caption_overruns": [], "duration_mismatches": []}
    shapes = []  # per example: frames (T, H, W), tokens, trained tokens: what decides its bucket
    pool = None
    if self._processes > 1:
      ctx = multiprocessing.get_context("spawn")
      per_file = max(4, video_store.VIDEOS_PER_FILE // self._processes)
      pool = ctx.Pool(self._processes, _open_store, (self._store_dir, name, ctx.Value("i", 0), per_file))
    else:
      _open_store(self._store_dir)
    try:
      results = pool.imap(_decode, jobs, chunksize=1) if pool else map(_decode, jobs)
      progress = tqdm(results, total=len(jobs), desc=f"{set_name} videos", unit="video", dynamic_ncols=True)
      for key, frames_shape, encoded, stored_there, outcomes, found in progress:
        stored += stored_there
        for what, entries in found.items():
          notes[what] += entries
        for rec_id, example, error in outcomes:
          if error is not None:
            if self._on_error == "raise":
              raise ValueError(f"preparing {rec_id}: {error}")
            skipped.append({"id": rec_id, "error": error})
            continue
          if encoded is not None:
            stored += store.add(key, encoded)
          written += 1
          shapes.append((*frames_shape[:3], len(example["input_ids"]), int(np.sum(example["loss_mask"]))))
          yield rec_id, example
      if pool:  # the workers finish their store files as they exit
        pool.close()
        pool.join()
    finally:
      if pool:
        pool.terminate()
    store.close()
    _warn(set_name, self._kind, notes, self._tolerance)
    if not written:  # TFDS would only say "No examples were yielded"
      kinds = "/".join(k.__name__ for k in wanted)
      why = "; ".join(f"{s['id']}: {s['error']}" for s in skipped[:3])
      raise ValueError(f"set {set_name!r} ({self._kind}), shard {self._shard_index} of {self._num_shards}: no "
                       f"example written ({len(self._records)} records given, {len(mine)} of kind {kinds} in this "
                       f"shard, {len(skipped)} skipped{': ' + why if why else ''})")
    self.shapes = np.array(shapes, np.int32).reshape(-1, 5)
    tokenizer_hash = chat.tokenizer_hash(chat.qwen_tokenizer(self._tokenizer))
    self.report = {"config": set_name, "kind": self._kind, "video_spec": self._spec.to_dict(),
                   "video_spec_hash": self._spec.hash, "tokenizer_hash": tokenizer_hash,
                   "shard": [self._shard_index, self._num_shards], "records": len(mine),
                   "written": written, "videos": len(by_video), "videos_stored": stored, "skipped": skipped,
                   "duration_tolerance": self._tolerance, **notes}
    self.info.metadata.update(kind=self._kind, video_spec_hash=self._spec.hash, video_spec=self._spec.to_dict(),
                              tokenizer_hash=tokenizer_hash, prompt_version=chat.PROMPT_VERSION, written=written,
                              skipped=len(skipped))


def _warn(set_name: str, kind: str, notes: dict, tolerance: float) -> None:
  """One warning for each kind of note (`_checks`); prepare_report.json lists them all."""
  over, off = notes["caption_overruns"], notes["duration_mismatches"]
  if over:
    fate = "records kept: evaluation does not read it" if kind == "qa_eval" else "not trained on (skipped)"
    log.warning("%s: %d caption%s more than %.1f s past the decoded video, %s (e.g. %s: ends at %s, the "
                "video holds %.1f s); listed in prepare_report.json", set_name, len(over),
                " ends" if len(over) == 1 else "s end",
                tolerance, fate, over[0]["video"], records.format_timestamp(over[0]["caption_end"]),
                over[0]["duration"])
  if off:
    log.warning("%s: %d record%s a duration more than %.1f s off the decoded video's (e.g. %s: %.1f s, the "
                "video holds %.1f s); kept, listed in prepare_report.json", set_name, len(off),
                " states" if len(off) == 1 else "s state",
                tolerance, off[0]["video"], off[0]["record_duration"], off[0]["duration"])


def shard_dir(out_dir: str, num_shards: int, shard_index: int) -> str:
  return out_dir if num_shards == 1 else os.path.join(out_dir, f"shard-{shard_index:05d}-of-{num_shards:05d}")


def prepare(out_dir: str, name: str, records, video_root: str, spec: VideoSpec = VideoSpec(),
            kind: str | None = None, **kwargs) -> dict:
  """Build the prepared set `name` (one shard of it) of `kind` (a key of KINDS; default: the name)
  and write its report next to the data. Returns the report. Frames go to out_dir's video store once
  per video (`video_store.py`), and a video already there is read back, not decoded, so a video
  shared by many records and sets is decoded once. `tokenizer`: tokenizer.json or a folder with one
  (default: the Qwen vocabulary); `cache_dir`: a FrameCache to decode through as well (e.g. shared
  by several prepared folders); `duration_tolerance`: how far past the decoded video a caption may
  end and still be used (see the module docstring)."""
  kind = kind or name
  if kind not in KINDS:
    raise ValueError(f"unknown kind of prepared set {kind!r}; choose from {sorted(KINDS)}")
  config = SetConfig(name=name, kind=kind) if name != kind else name
  data_dir = shard_dir(out_dir, kwargs.get("num_shards", 1), kwargs.get("shard_index", 0))
  builder = Rewatch(config=config, records=records, video_root=video_root, spec=spec, data_dir=data_dir,
                    store_dir=out_dir, file_format="array_record", **kwargs)
  builder.download_and_prepare()
  report = os.path.join(builder.data_dir, "prepare_report.json")
  if not builder.report:  # prepared before: TFDS generated nothing, the first run's report stands
    with open(report) as f:
      return json.load(f)
  with open(report, "w") as f:
    json.dump(builder.report, f, indent=2)
  np.save(os.path.join(builder.data_dir, SHAPES_FILE), builder.shapes)
  return builder.report


# Beside each prepared shard: (T, H, W, tokens, trained) of example i in row i.
SHAPES_FILE = "shapes.npy"


def set_dirs(out_dir: str, name: str) -> list[str]:
  """The prepared folders of every shard of the set `name` under out_dir."""
  return sorted(glob.glob(os.path.join(out_dir, "rewatch", name, VERSION)) +
                glob.glob(os.path.join(out_dir, "shard-*", "rewatch", name, VERSION)))


def example_shapes(out_dir: str, name: str) -> np.ndarray | None:
  """(T, H, W, tokens, trained tokens) of every prepared example of the set `name`, row i for
  example i of pipeline.source(out_dir, name), or None for data prepared before they were kept."""
  parts = [os.path.join(d, SHAPES_FILE) for d in set_dirs(out_dir, name)]
  if not parts or not all(os.path.exists(p) for p in parts):
    return None
  return np.concatenate([np.load(p) for p in parts])


def data_sources(out_dir: str, name: str) -> tuple[list, dict]:
  """Every prepared shard of the set `name` under out_dir as TFDS data sources (random access,
  decoded; frames not attached: `video_store.VideoStore(out_dir).attach`), and their common
  metadata. Raises if shards disagree on the VideoSpec or the tokenizer."""
  if "://" in out_dir:
    raise ValueError(f"prepared data is read from a filesystem path, not {out_dir}: mount the bucket with "
                     "Cloud Storage FUSE (gcsfuse, e.g. at /gcs/BUCKET) and pass that path")
  dirs = set_dirs(out_dir, name)
  if not dirs:
    old = sorted({os.path.basename(d) for d in glob.glob(os.path.join(out_dir, "rewatch", name, "*")) +
                  glob.glob(os.path.join(out_dir, "shard-*", "rewatch", name, "*"))})
    if old:
      raise FileNotFoundError(f"'{name}' under {out_dir} was prepared in format {', '.join(old)}; this version reads "
                              f"{VERSION} (frames in a shared video store): prepare it again (launch/prepare.py)")
    raise FileNotFoundError(f"no prepared '{name}' data under {out_dir} (run launch/prepare.py)")
  sources, metas = [], []
  for d in dirs:
    builder = tfds.builder_from_directory(d)
    sources.append(builder.as_data_source(split="train"))
    metas.append(dict(builder.info.metadata))
  for key, what in (("video_spec_hash", "VideoSpecs"), ("tokenizer_hash", "tokenizers")):
    hashes = {m.get(key) for m in metas}
    if len(hashes) != 1:
      raise ValueError(f"shards of {out_dir}/{name} were prepared with different {what}: {hashes}")
  return sources, metas[0]


def identity(out_dir: str, names) -> dict:
  """What the prepared sets `names` under out_dir were made with: {"video_spec", "video_spec_hash",
  "tokenizer_hash"} (the tokenizer's is None for data prepared before it was recorded). Raises where
  they differ: a model trained or scored on frames of two specs, or on tokens of two tokenizers."""
  metas = {n: data_sources(out_dir, n)[1] for n in names}
  for key, what in (("video_spec_hash", "VideoSpecs"), ("tokenizer_hash", "tokenizers")):
    hashes = {n: m.get(key) for n, m in metas.items()}
    if len(set(hashes.values())) != 1:
      raise ValueError(f"the prepared sets under {out_dir} were made with different {what}: {hashes}")
  meta = next(iter(metas.values()))
  return {"video_spec": meta.get("video_spec"), "video_spec_hash": meta.get("video_spec_hash"),
          "tokenizer_hash": meta.get("tokenizer_hash")}
