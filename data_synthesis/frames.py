"""Frames for the hosted model: the project's decoder and VideoSpec, sent as JPEG data URLs, each
after a text part giving its time (seconds from `offset`, the segment's start). A video is encoded
once, right after decoding (`load`), and only its JPEGs are kept while its requests are out: a
fraction of the decoded frames' memory."""

from __future__ import annotations

import base64
import dataclasses
import io

import numpy as np
from PIL import Image

from rewatch_jax.data.video.decode import Video, load_video
from rewatch_jax.data.video.spec import VideoSpec


def spec(fps: float, pixels: int, max_frames: int) -> VideoSpec:
  """Frames at `fps` (at most `max_frames` over the video) of about `pixels` pixels each."""
  return VideoSpec(fps=fps, min_frames=2, max_frames=max_frames, min_pixels=pixels, max_pixels=pixels,
                   total_pixels=pixels * max_frames)


@dataclasses.dataclass(frozen=True)
class Frames:
  timestamps: np.ndarray  # (T,) seconds
  urls: tuple[str, ...]  # JPEG data URLs


def load(path: str, video_spec: VideoSpec) -> Frames:
  video: Video = load_video(path, video_spec, threads=1)
  return Frames(video.timestamps, tuple(data_url(f) for f in video.frames))


def data_url(frame: np.ndarray, quality: int = 85) -> str:
  buf = io.BytesIO()
  Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
  return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def parts(video: Frames, start: float, end: float, limit: int, offset: float = 0.0) -> list[dict]:
  """The chat-message parts for the frames of `video` in [start, end] (at most `limit`, evenly
  spread), each labelled with its time minus `offset`."""
  inside = np.flatnonzero((video.timestamps >= start - 1e-6) & (video.timestamps <= end + 1e-6))
  if len(inside) == 0:  # a span shorter than the frame interval: its nearest frame
    inside = np.array([int(np.argmin(np.abs(video.timestamps - (start + end) / 2)))])
  if len(inside) > limit:
    inside = inside[np.round(np.linspace(0, len(inside) - 1, limit)).astype(int)]
  out = []
  for i in inside:
    out.append({"type": "text", "text": f"{video.timestamps[i] - offset:.1f}s"})
    out.append({"type": "image_url", "image_url": {"url": video.urls[i]}})
  return out
