"""VideoSpec and the frame count and size it gives a video: qwen-vl-utils' `smart_nframes` and
`smart_resize`, the formulas Qwen2.5-VL and ReWatch-R1 use, re-implemented here."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any

import numpy as np

FACTOR = 28  # patch 14 * merge 2: frame sides are multiples of this
FRAME_FACTOR = 2  # temporal patch: frame counts are even
MAX_RATIO = 200
VIDEO_MAX_PIXELS = 768 * 28 * 28  # qwen-vl-utils' cap on pixels per video frame


@dataclasses.dataclass(frozen=True)
class VideoSpec:
  """How a video becomes frames. Defaults are ReWatch-R1's protocol: 2 fps, at most 192 frames,
  every frame resized to 128*28*28 pixels (min = max), at most 12288*28*28 pixels in total."""
  fps: float = 2.0
  min_frames: int = 4
  max_frames: int = 192
  min_pixels: int = 128 * 28 * 28
  max_pixels: int = 128 * 28 * 28
  total_pixels: int = 12288 * 28 * 28
  sampler: str = "uniform"  # qwen-vl-utils: round(linspace(first, last, n)) over decoded frames
  interpolation: str = "bicubic"  # ffmpeg scaler (HF/torchvision use antialiased bicubic)

  def __post_init__(self):
    if self.sampler != "uniform":
      raise ValueError(f"unknown frame sampler {self.sampler!r} (only 'uniform')")
    if not (self.fps > 0 and 0 < self.min_frames <= self.max_frames and 0 < self.min_pixels <= self.max_pixels):
      raise ValueError(f"inconsistent VideoSpec: {self}")

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @property
  def hash(self) -> str:
    """Stable short hash, stored in every prepared dataset, checkpoint and evaluation report."""
    blob = json.dumps(self.to_dict(), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def round_by_factor(x: float, factor: int) -> int:
  return round(x / factor) * factor


def ceil_by_factor(x: float, factor: int) -> int:
  return math.ceil(x / factor) * factor


def floor_by_factor(x: float, factor: int) -> int:
  return math.floor(x / factor) * factor


def smart_resize(height: int, width: int, factor: int = FACTOR, min_pixels: int = 4 * 28 * 28,
                 max_pixels: int = 16384 * 28 * 28) -> tuple[int, int]:
  """Sides divisible by `factor`, area within [min_pixels, max_pixels], aspect ratio kept."""
  if max(height, width) / min(height, width) > MAX_RATIO:
    raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.0f} exceeds {MAX_RATIO}")
  h_bar = max(factor, round_by_factor(height, factor))
  w_bar = max(factor, round_by_factor(width, factor))
  if h_bar * w_bar > max_pixels:
    beta = math.sqrt(height * width / max_pixels)
    h_bar = max(factor, floor_by_factor(height / beta, factor))
    w_bar = max(factor, floor_by_factor(width / beta, factor))
  elif h_bar * w_bar < min_pixels:
    beta = math.sqrt(min_pixels / (height * width))
    h_bar = ceil_by_factor(height * beta, factor)
    w_bar = ceil_by_factor(width * beta, factor)
  return h_bar, w_bar


def smart_nframes(spec: VideoSpec, total_frames: int, video_fps: float) -> int:
  """Number of frames to sample: `spec.fps` over the video, clamped, even."""
  min_frames = ceil_by_factor(spec.min_frames, FRAME_FACTOR)
  max_frames = floor_by_factor(min(spec.max_frames, total_frames), FRAME_FACTOR)
  n = total_frames / video_fps * spec.fps
  n = floor_by_factor(min(max(n, min_frames), max_frames, total_frames), FRAME_FACTOR)
  if not FRAME_FACTOR <= n <= total_frames:
    raise ValueError(f"cannot sample an even number >= {FRAME_FACTOR} of frames from {total_frames}")
  return n


def frame_size(spec: VideoSpec, height: int, width: int, nframes: int) -> tuple[int, int]:
  """Resized (height, width) of every sampled frame, as qwen-vl-utils' fetch_video computes it:
  the per-frame budget is total_pixels shared by frame pairs, capped at VIDEO_MAX_PIXELS, floored
  at 1.05 * min_pixels, then capped by the spec's max_pixels."""
  budget = max(min(VIDEO_MAX_PIXELS, spec.total_pixels / nframes * FRAME_FACTOR), int(spec.min_pixels * 1.05))
  return smart_resize(height, width, FACTOR, spec.min_pixels, min(spec.max_pixels, budget))


def sample_indices(total_frames: int, nframes: int) -> np.ndarray:
  return np.round(np.linspace(0, total_frames - 1, nframes)).astype(np.int64)

