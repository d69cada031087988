"""Decoded frames kept on disk by content: a video is decoded once per VideoSpec."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

import numpy as np

from rewatch_jax.data.video import decode, source
from rewatch_jax.data.video.spec import VideoSpec


def file_digest(path: str, chunk: int = 1 << 22) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(chunk):
      h.update(block)
  return h.hexdigest()


# Bump when load_video returns other pixels for the same file and spec (2: scaling into planar
# RGB; 3: rotated videos that ffmpeg probes, not the MP4 header, no longer squeezed into the
# stored aspect), so that no FrameCache or video store serves frames of an older decoder.
DECODER_VERSION = 3


class FrameCache:
  """Content-addressed decoded frames: key = (sha256 of the video file, VideoSpec hash,
  DECODER_VERSION), so a video is decoded once per spec for SFT, RL and evaluation, whatever its
  path. Writes are atomic."""

  def __init__(self, directory: str):
    self.directory = directory
    os.makedirs(directory, exist_ok=True)

  def _path(self, digest: str, spec: VideoSpec) -> str:
    return os.path.join(self.directory, digest[:2], f"{digest}-{spec.hash}-d{DECODER_VERSION}.npz")

  def load(self, path: str, spec: VideoSpec = VideoSpec(), digest: str | None = None, threads: int = 0) -> decode.Video:
    """`digest`: the file's sha256 where the caller has it already (hashing a long video takes a
    while); `threads`: as load_video's."""
    source.check_file(path)
    entry = self._path(digest or file_digest(path), spec)
    if os.path.exists(entry):
      try:
        with np.load(entry) as z:
          meta = json.loads(str(z["meta"]))
          return decode.Video(frames=z["frames"], timestamps=z["timestamps"], path=path, **meta)
      except (OSError, ValueError, KeyError):
        os.remove(entry)  # a damaged entry is decoded again
    video = decode.load_video(path, spec, threads=threads)
    os.makedirs(os.path.dirname(entry), exist_ok=True)
    meta = dict(source_fps=video.source_fps, total_frames=video.total_frames,
                duration=video.duration, spec_hash=video.spec_hash)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(entry), suffix=".tmp.npz")
    with os.fdopen(fd, "wb") as f:
      np.savez(f, frames=video.frames, timestamps=video.timestamps, meta=json.dumps(meta))
    os.replace(tmp, entry)
    return video
