"""TFDS builder `rewatch`: JSONL records + a video folder -> ArrayRecord of tokens, and decoded frames.

Configs: caption (caption prompt), qa (direct-answer prompt), cot (thinking prompt), perception
(direct-answer prompt, a QA subset trained as its own task), rl (thinking prompt without the answer,
plus ground truth and the video's caption for the O&R reward), and qa_eval (direct-answer prompt
without the answer, plus ground truth). Each video is decoded once with the VideoSpec and its
resized frames are stored once for all records and configs in the prepared folder's video store
(`video_store.py`; examples carry its `video_key`); the spec's hash is written into the dataset
metadata. No TensorFlow is needed to build or read.

Bad videos or records are skipped and listed in `prepare_report.json` (or stop the build with
`on_error="raise"`). Many hosts can prepare disjoint shards of one dataset (`num_shards`,
`shard_index`); `data_sources` reads all shards back.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import multiprocessing
import multiprocessing.util
import os

import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from rewatch_jax.data import chat, records, video_store
from rewatch_jax.data.processor import video_grid, video_tokens
from rewatch_jax.data.video import FrameCache, VideoSpec, cpu_cores, file_digest, load_video
from rewatch_jax.models.configs import VisionConfig

VERSION = "1.1.0"  # 1.1: frames in the shared video store, not in every example
MODES = {"caption": "caption", "qa": "direct", "cot": "thinking", "perception": "direct", "rl": "thinking",
         "qa_eval": "direct"}
KINDS = {"caption": (records.CaptionRecord,), "qa": (records.QARecord,), "cot": (records.CoTRecord,), "perception": (records.QARecord,),
         "rl": (records.QARecord,), "qa_eval": (records.QARecord,)}
PROMPT_ONLY = ("rl", "qa_eval")  # generation prompt + ground truth, no assistant turn


def _features(config: str) -> tfds.features.FeaturesDict:
  t = tfds.features.Tensor
  feats = {
      "id": tfds.features.Text(), "kind": tfds.features.Text(), "video": tfds.features.Text(),
      "record": tfds.features.Text(),  # the full record as JSON (lineage included)
      "video_key": tfds.features.Text(),  # the decoded video in the prepared folder's video store
      "input_ids": t(shape=(None,), dtype=np.int32),
      "loss_mask": t(shape=(None,), dtype=np.bool_),
  }
  if config in PROMPT_ONLY:
    feats.update(answer=tfds.features.Text(), caption=tfds.features.Text(),
                 question_type=tfds.features.Text())
  return tfds.features.FeaturesDict(feats)


@dataclasses.dataclass
class _Job:
  """One video and the records (of this config and shard) about it."""
  path: str
  records: list


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


def _decode(job_and_args):
  """Worker: the frames of one video (from the video store if an earlier prepare stored it, else
  decoded, through `cache_dir`'s frame cache if one is given) and the conversations of its records.
  Returns (video key, its frames' shape, the video encoded for the store or None if it is there
  or this worker stored it, whether this worker stored it, [(record id, example, error)]); a
  video that fails fails each of its records."""
  job, config, spec, tokenizer_path, cache_dir, caption_text, threads = job_and_args
  try:
    digest = file_digest(job.path)
    key = video_store.video_key(digest, spec)
    if _STORE is not None and key in _STORE:  # its header is enough: frames stay where they are
      head = _STORE.headers[key]
      frames_shape, duration, encoded = tuple(head["shape"]), head["duration"], None
    else:
      if cache_dir:
        video = FrameCache(cache_dir).load(job.path, spec, digest, threads=threads)
      else:
        video = load_video(job.path, spec, threads=threads)
      frames_shape, duration, encoded = video.frames.shape, video.duration, video_store.encode(video)
  except (ValueError, OSError) as e:  # VideoError is a ValueError
    return None, None, None, False, [(rec.id, None, f"{type(e).__name__}: {e}") for rec in job.records]
  tokenizer = chat.qwen_tokenizer(tokenizer_path)
  rl = config in PROMPT_ONLY
  out = []
  for rec in job.records:
    try:
      enc = chat.encode(tokenizer, chat.conversation(MODES[config], rec, duration, with_answer=not rl),
                        video_tokens=_video_tokens(frames_shape), add_generation_prompt=rl)
      ex = {"id": rec.id, "kind": rec.kind, "video": rec.video, "record": json.dumps(records.to_json(rec)),
            "video_key": key, "input_ids": enc.input_ids, "loss_mask": enc.loss_mask}
      if rl:
        ex.update(answer=rec.answer, caption=caption_text or "", question_type=rec.question_type)
      out.append((rec.id, ex, None))
    except ValueError as e:  # RecordError is a ValueError
      out.append((rec.id, None, f"{type(e).__name__}: {e}"))
  stored = False
  if _WRITER is not None and encoded is not None:  # stored here, not sent (as the parent: if any record needs it)
    stored = any(error is None for _, _, error in out) and _WRITER.add(key, encoded)
    encoded = None
  return key, tuple(frames_shape), encoded, stored, out


def _video_tokens(frames_shape, vision: VisionConfig = VisionConfig()) -> int:
  """Merged video tokens of decoded frames (T, H, W, 3) for Qwen2.5-VL's patching."""
  return video_tokens(video_grid(*frames_shape[:3], vision), vision)


class Rewatch(tfds.core.GeneratorBasedBuilder):
  """ReWatch SFT/RL data prepared for training (see module docstring)."""

  VERSION = tfds.core.Version(VERSION)
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n) for n in MODES]

  def __init__(self, *, records=(), video_root: str = "", spec: VideoSpec = VideoSpec(),
               tokenizer: str | None = None, captions=(), cache_dir: str | None = None,
               on_error: str = "skip", processes: int = 1, num_shards: int = 1, shard_index: int = 0,
               store_dir: str = "", **kwargs):
    """`store_dir`: the prepared folder whose video store (`store_dir`/video_store) gets the frames;
    `prepare` passes its `out_dir`, shared by every shard and config."""
    if on_error not in ("skip", "raise"):
      raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    if not 0 <= shard_index < num_shards:
      raise ValueError(f"shard_index {shard_index} outside [0, {num_shards})")
    self._records, self._video_root, self._spec = list(records), video_root, spec
    self._tokenizer, self._cache_dir, self._on_error = tokenizer, cache_dir, on_error
    self._captions = {c.video: c.text for c in captions}
    self._processes, self._num_shards, self._shard_index = processes, num_shards, shard_index
    self._store_dir = store_dir or kwargs.get("data_dir", "")
    self.report = {}
    super().__init__(**kwargs)

  def _info(self):
    # disable_shuffling: stored in the order generated (TFDS would reorder by key hash), so the
    # shapes kept beside the shard line up with its examples (pipeline.GlobalBatches reads them by index)
    return self.dataset_info_from_configs(features=_features(self.builder_config.name), disable_shuffling=True,
                                          metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    config = self.builder_config.name
    wanted = KINDS[config]
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
    jobs = [(_Job(path, recs), config, self._spec, self._tokenizer, self._cache_dir,
             self._captions.get(recs[0].video), threads) for path, recs in by_video.items()]
    name = f"{config}-{self._shard_index:05d}-of-{self._num_shards:05d}"
    store = video_store.VideoStoreWriter(self._store_dir, name)
    written = stored = 0
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
      progress = tqdm(results, total=len(jobs), desc=f"{config} videos", unit="video", dynamic_ncols=True)
      for key, frames_shape, encoded, stored_there, outcomes in progress:
        stored += stored_there
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
    if not written:  # TFDS would only say "No examples were yielded"
      kinds = "/".join(k.__name__ for k in wanted)
      why = "; ".join(f"{s['id']}: {s['error']}" for s in skipped[:3])
      raise ValueError(f"config {config!r}, shard {self._shard_index} of {self._num_shards}: no example written "
                       f"({len(self._records)} records given, {len(mine)} of kind {kinds} in this shard, "
                       f"{len(skipped)} skipped{': ' + why if why else ''})")
    self.shapes = np.array(shapes, np.int32).reshape(-1, 5)
    self.report = {"config": config, "video_spec": self._spec.to_dict(), "video_spec_hash": self._spec.hash,
                   "shard": [self._shard_index, self._num_shards], "records": len(mine),
                   "written": written, "videos": len(by_video), "videos_stored": stored, "skipped": skipped}
    self.info.metadata.update(video_spec_hash=self._spec.hash, video_spec=self._spec.to_dict(),
                              prompt_version=chat.PROMPT_VERSION, written=written, skipped=len(skipped))


def shard_dir(out_dir: str, num_shards: int, shard_index: int) -> str:
  return out_dir if num_shards == 1 else os.path.join(out_dir, f"shard-{shard_index:05d}-of-{num_shards:05d}")


def prepare(out_dir: str, config: str, records, video_root: str, spec: VideoSpec = VideoSpec(),
            **kwargs) -> dict:
  """Build one config (one shard of it) and write its report next to the data. Returns the report.
  Frames go to out_dir's video store once per video (`video_store.py`), and a video already there
  is read back, not decoded, so a video shared by many records and configs is decoded once.
  `cache_dir`: a FrameCache to decode through as well (e.g. shared by several prepared folders)."""
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


# Beside each prepared shard: (T, H, W, tokens, trained) of example i in row i. (Data prepared on
# 2026-11-30 kept them in an `example_shapes.npy` in generation order, which TFDS had reordered:
# not read.)
SHAPES_FILE = "shapes.npy"


def config_dirs(out_dir: str, config: str) -> list[str]:
  """The prepared folders of every shard of `config` under out_dir."""
  return sorted(glob.glob(os.path.join(out_dir, "rewatch", config, VERSION)) +
                glob.glob(os.path.join(out_dir, "shard-*", "rewatch", config, VERSION)))


def example_shapes(out_dir: str, config: str) -> np.ndarray | None:
  """(T, H, W, tokens, trained tokens) of every prepared example of `config`, row i for example i
  of pipeline.source(out_dir, config), or None for data prepared before they were kept."""
  parts = [os.path.join(d, SHAPES_FILE) for d in config_dirs(out_dir, config)]
  if not parts or not all(os.path.exists(p) for p in parts):
    return None
  return np.concatenate([np.load(p) for p in parts])


def data_sources(out_dir: str, config: str) -> tuple[list, dict]:
  """Every prepared shard of `config` under out_dir as TFDS data sources (random access, decoded;
  frames not attached: `video_store.VideoStore(out_dir).attach`), and their common metadata.
  Raises if shards disagree on the VideoSpec."""
  if "://" in out_dir:
    raise ValueError(f"prepared data is read from a filesystem path, not {out_dir}: mount the bucket with "
                     "Cloud Storage FUSE (gcsfuse, e.g. at /gcs/BUCKET) and pass that path")
  dirs = config_dirs(out_dir, config)
  if not dirs:
    old = sorted({os.path.basename(d) for d in glob.glob(os.path.join(out_dir, "rewatch", config, "*")) +
                  glob.glob(os.path.join(out_dir, "shard-*", "rewatch", config, "*"))})
    if old:
      raise FileNotFoundError(f"'{config}' under {out_dir} was prepared in format {', '.join(old)}; this version reads "
                              f"{VERSION} (frames in a shared video store): prepare it again (launch/prepare.py)")
    raise FileNotFoundError(f"no prepared '{config}' data under {out_dir} (run launch/prepare.py)")
  sources, metas = [], []
  for d in dirs:
    builder = tfds.builder_from_directory(d)
    sources.append(builder.as_data_source(split="train"))
    metas.append(dict(builder.info.metadata))
  hashes = {m.get("video_spec_hash") for m in metas}
  if len(hashes) != 1:
    raise ValueError(f"shards of {out_dir}/{config} were prepared with different VideoSpecs: {hashes}")
  return sources, metas[0]


def video_spec_of(out_dir: str, configs) -> dict:
  """{"video_spec": ..., "video_spec_hash": ...} that the prepared `configs` under out_dir were
  decoded with; raises where they differ (a model trained or scored on frames of two specs)."""
  specs = {c: data_sources(out_dir, c)[1] for c in configs}
  hashes = {c: m.get("video_spec_hash") for c, m in specs.items()}
  if len(set(hashes.values())) != 1:
    raise ValueError(f"the prepared configs under {out_dir} were decoded with different VideoSpecs: {hashes}")
  meta = next(iter(specs.values()))
  return {"video_spec": meta.get("video_spec"), "video_spec_hash": meta.get("video_spec_hash")}
