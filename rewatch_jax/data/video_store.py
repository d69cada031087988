"""The decoded videos of a prepared dataset, stored once per (video file, VideoSpec).

ReWatch asks ~17 questions about each video (170,862 QA over ~10k videos) and the same videos feed
the caption, QA, CoT, RL and evaluation configs, so frames stored with every example would take
that many copies of each video (58 MB of uint8 frames per video at the ReWatch spec). Prepared
examples carry a `video_key` instead, and the frames live here: append-only ArrayRecord files under
`<out_dir>/video_store/`, each finished by a `.keys.json` sidecar that lists its keys and their
headers (frame shape and duration: what preparing another config needs, without reading frames);
a file without one, from a run that died, is ignored. Every `prepare` call (one config, one shard)
adds the videos the store lacks to new files of its own name, finishing one every VIDEOS_PER_FILE
(64) videos: configs prepared one after another share their videos, a rerun after a crash decodes
only what no finished file holds, and hosts preparing shards at once never write the same file.

key = sha256 of the video file, VideoSpec hash, decoder version (the FrameCache key): the same
video under two paths is stored once; frames of another spec or decoder never answer for it.
"""

from __future__ import annotations

import glob
import json
import os
import struct

import numpy as np
from array_record.python.array_record_data_source import ArrayRecordDataSource
from array_record.python.array_record_module import ArrayRecordWriter

from rewatch_jax.data.video import DECODER_VERSION, Video, VideoSpec

STORE_DIR = "video_store"
_OPTIONS = "group_size:1,zstd:3"  # one record per chunk: random access reads one video
VIDEOS_PER_FILE = 64  # a file is finished (readable, kept by a rerun) every this many videos


def video_key(digest: str, spec: VideoSpec) -> str:
  return f"{digest}-{spec.hash}-d{DECODER_VERSION}"


def encode(video: Video) -> bytes:
  """What the store keeps of a decoded video: a JSON header (frame shape, duration, seconds per
  grid), the float32 timestamps, then the uint8 frames. Not np.savez: reading .npy headers runs
  ast.literal_eval, which CPython 3.11 breaks on when Grain's threads call it at once."""
  frames = np.ascontiguousarray(video.frames, np.uint8)
  timestamps = np.ascontiguousarray(video.timestamps, np.float32)
  header = json.dumps({"shape": list(frames.shape), "timestamps": len(timestamps), "duration": float(video.duration),
                       "second_per_grid": float(np.float32(video.second_per_grid(2)))}).encode()
  return struct.pack("<I", len(header)) + header + timestamps.tobytes() + frames.tobytes()


def header(data: bytes) -> dict:
  """An encoded video's header: frame shape, timestamp count, duration, seconds per grid."""
  (n,) = struct.unpack_from("<I", data)
  return json.loads(data[4:4 + n])


def decode(data: bytes) -> dict[str, np.ndarray]:
  """encode's inverse; the arrays are read-only views of `data`."""
  (n,) = struct.unpack_from("<I", data)
  head = json.loads(data[4:4 + n])
  ts = np.frombuffer(data, np.float32, head["timestamps"], 4 + n)
  frames = np.frombuffer(data, np.uint8, int(np.prod(head["shape"])), 4 + n + ts.nbytes)
  return {"frames": frames.reshape(head["shape"]), "timestamps": ts,
          "duration": np.float64(head["duration"]), "second_per_grid": np.float32(head["second_per_grid"])}


def _finished(out_dir: str) -> list[tuple[str, dict]]:
  """(ArrayRecord path, its sidecar: keys and headers in file order) of every finished store file,
  in name order."""
  files = []
  for sidecar in sorted(glob.glob(os.path.join(out_dir, STORE_DIR, "*.keys.json"))):
    path = sidecar[:-len(".keys.json")] + ".array_record"
    if os.path.exists(path):
      with open(sidecar) as f:
        files.append((path, json.load(f)))
  return files


class VideoStoreWriter:
  """Adds the videos the store under `out_dir` lacks to new files `<name>-NNNNN.array_record`,
  each finished (closed, sidecar written) after `per_file` (default VIDEOS_PER_FILE) videos: a
  preparation that dies loses at most that many videos' decoding, and its rerun reads the finished
  ones back. Numbering goes on after this name's finished files; a leftover without a sidecar is
  overwritten."""

  def __init__(self, out_dir: str, name: str, per_file: int | None = None):
    finished = _finished(out_dir)
    self.known = {k for _, side in finished for k in side["keys"]}
    prefix = os.path.join(out_dir, STORE_DIR, f"{name}-")
    numbers = [int(path[len(prefix):-len(".array_record")]) for path, _ in finished
               if path.startswith(prefix) and path[len(prefix):-len(".array_record")].isdigit()]
    self.prefix, self.per_file, self.number = prefix, per_file or VIDEOS_PER_FILE, max(numbers, default=-1) + 1
    self.keys: list[str] = []
    self.headers: list[dict] = []
    self._writer = None

  def add(self, key: str, data: bytes) -> bool:
    """Store one encoded video unless the store has it; returns whether it was written."""
    if key in self.known:
      return False
    if self._writer is None:
      os.makedirs(os.path.dirname(self.prefix), exist_ok=True)
      self._writer = ArrayRecordWriter(f"{self.prefix}{self.number:05d}.array_record", _OPTIONS)
    self._writer.write(data)
    self.keys.append(key)
    self.headers.append(header(data))
    self.known.add(key)
    if len(self.keys) >= self.per_file:
      self.close()
    return True

  def close(self) -> None:
    """Finish the open file: its sidecar is written (atomically) only after its videos are on disk."""
    if self._writer is None:
      return
    self._writer.close()
    self._writer = None
    sidecar = f"{self.prefix}{self.number:05d}.keys.json"
    with open(sidecar + ".tmp", "w") as f:
      json.dump({"keys": self.keys, "headers": self.headers}, f)
    os.replace(sidecar + ".tmp", sidecar)
    self.keys, self.headers, self.number = [], [], self.number + 1


class VideoStore:
  """Random access to the stored videos by key. Picklable (Grain workers): files are opened
  lazily in each process."""

  def __init__(self, out_dir: str):
    files = _finished(out_dir)
    self.paths = [path for path, _ in files]
    self.index: dict[str, int] = {}
    self.headers: dict[str, dict] = {}
    offset = 0
    for _, side in files:
      for i, (key, head) in enumerate(zip(side["keys"], side["headers"])):
        self.index.setdefault(key, offset + i)  # a video two hosts both stored: the first copy
        self.headers.setdefault(key, head)
      offset += len(side["keys"])
    self._source = None

  def __len__(self) -> int:
    return len(self.index)

  def __contains__(self, key: str) -> bool:
    return key in self.index

  def __getitem__(self, key: str) -> dict[str, np.ndarray]:
    if key not in self.index:
      raise KeyError(f"video {key} is not in the prepared data's video store ({len(self.paths)} files): "
                     "were video_store/ and the examples prepared into (or copied from) the same --out?")
    if self._source is None:
      self._source = ArrayRecordDataSource(self.paths)
    return decode(self._source[self.index[key]])

  def attach(self, ex: dict) -> dict:
    """A prepared example with its video's frames, timestamps, duration and seconds per grid."""
    key = ex["video_key"]
    return {**ex, **self[key.decode() if isinstance(key, bytes) else key]}

  def __getstate__(self):
    return {**self.__dict__, "_source": None}
