"""`load_video`: a video file -> the VideoSpec's frames and their times."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from rewatch_jax.data.video import ffmpeg, h264, seeking, source
from rewatch_jax.data.video.ffmpeg import VideoError
from rewatch_jax.data.video.spec import VideoSpec, frame_size, sample_indices, smart_nframes


@dataclasses.dataclass
class Video:
  frames: np.ndarray  # (T, H, W, 3) uint8, resized by the spec
  timestamps: np.ndarray  # (T,) seconds: presentation time of each sampled frame
  path: str
  source_fps: float
  total_frames: int
  duration: float
  spec_hash: str

  @property
  def sample_fps(self) -> float:
    """Sampled frames per second of video (what HF's processor calls fps)."""
    return len(self.frames) / self.total_frames * self.source_fps

  def second_per_grid(self, temporal_patch_size: int = 2) -> float:
    return temporal_patch_size / self.sample_fps


def cpu_cores() -> int:
  """CPU cores this process may run on (its affinity mask, which containers and `taskset` narrow)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def load_video(path: str, spec: VideoSpec = VideoSpec(), threads: int = 0, timeout: float = 600.0) -> Video:
  """Decode `path` into the spec's frames. Raises VideoError (a ValueError) naming the file.

  `threads`: decoder threads; 0 = one per CPU core up to 8 (ffmpeg's own "auto" starts cores + 1,
  which measurably slows small decodes on few cores; the filters run on one thread). Where several
  videos decode at once, give each cores / videos: one video per core with one thread each decodes
  1.2-1.5x more frames per second on 2 cores than one video at a time with two frame threads
  (benchmarks/RESULTS.md), and cores x processes threads oversubscribe.
  `timeout`: seconds for the probe, and for each decode plus one per second of video (an hour-long
  video, as in LVBench, can take many minutes on one thread: a hang is caught, a long video not)."""
  threads = threads or min(cpu_cores(), 8)
  path = os.fspath(path)
  info = source.probe(path, timeout)
  timeout += info.duration
  try:
    n = smart_nframes(spec, info.total_frames, info.fps)
    height, width = frame_size(spec, info.height, info.width, n)
  except ValueError as e:
    raise VideoError(f"{path}: {e} ({info.total_frames} frames, {info.width}x{info.height})") from e
  indices = sample_indices(info.total_frames, n)
  unique = np.unique(indices)
  decoded = None
  plan = h264.drop_plan(path, unique, info.total_frames)
  if info.duration / len(unique) >= seeking.SEEK_GAP and (plan is None or len(plan[0]) < info.total_frames / 2):
    decoded = seeking.decode_seeking(path, unique, info.fps, info.width * info.height, height, width, spec, threads,
                                     timeout)
  if decoded is None and plan is not None:  # (also where seeking failed: the plan still thins the decode)
    drop, select, times = plan
    try:
      decoded = ffmpeg.decode_frames(path, select, drop, height, width, spec, threads, timeout)
    except VideoError:
      pass  # decoded again below, every frame, for the error message of the plain path
    # The frames must be the sampled ones: their times from ffmpeg must match the MP4 table's.
    if decoded is not None and (decoded[1] is None or
                                np.abs(decoded[1] - decoded[1][0] - (times - times[0])).max() > 0.5 / info.fps):
      decoded = None
  if decoded is None:
    decoded = ffmpeg.decode_frames(path, unique, None, height, width, spec, threads, timeout)
  frames, pts = decoded
  if pts is None:
    pts = unique / info.fps
  position = np.searchsorted(unique, indices)  # repeated indices (short videos) reuse a frame
  return Video(frames=frames[position], timestamps=pts[position], path=path, source_fps=info.fps,
               total_frames=info.total_frames, duration=info.duration, spec_hash=spec.hash)

