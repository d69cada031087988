"""What a video file holds: size, frame rate, exact frame count and duration, read from the MP4
header where it can be, else by letting ffmpeg demux the stream."""

from __future__ import annotations

import dataclasses
import os
import struct

from rewatch_jax.data.video import ffmpeg, mp4
from rewatch_jax.data.video.ffmpeg import VideoError


@dataclasses.dataclass(frozen=True)
class Probe:
  width: int
  height: int
  fps: float
  total_frames: int
  duration: float


def probe_header(path: str) -> Probe | None:
  """Read size, frame count and duration of the first video track from an MP4/MOV header in
  Python (no subprocess). None when the file is not a plain MP4 (or has an edit list that
  shifts frames): the caller then asks ffmpeg."""
  try:
    with open(path, "rb") as f:
      track = mp4.video_track(f)
      if track is None or mp4.edit_start(f, track[0]) is None:  # several edits or a delay: ask ffmpeg
        return None
      trak, mdia, stbl = track
      f.seek(mp4.child(f, *stbl, "stsd")[0] + 8 + 32)  # coded size in the visual sample entry
      width, height = struct.unpack(">HH", f.read(4))
      tkhd = mp4.child(f, *trak, "tkhd")
      f.seek(tkhd[1] - 44)
      m = struct.unpack(">9i", f.read(36))
      if m[0] == 0 and m[4] == 0:  # rotated by 90 or 270 degrees: ffmpeg autorotates
        width, height = height, width
      timescale = mp4.timescale(f, mdia)
      stsz, stts = mp4.child(f, *stbl, "stsz"), mp4.child(f, *stbl, "stts")
      f.seek(stsz[0] + 8)
      total = struct.unpack(">I", f.read(4))[0]
      f.seek(stts[0] + 4)
      (n,) = struct.unpack(">I", f.read(4))
      ticks = sum(c * d for c, d in struct.iter_unpack(">II", f.read(8 * n)))
      if not (total and ticks and timescale and width and height):
        return None
      duration = ticks / timescale
      return Probe(width, height, total / duration, total, duration)
  except (OSError, struct.error, TypeError, IndexError):
    return None


def probe(path: str, timeout: float = 60.0) -> Probe:
  """Size, frame rate, exact frame count and duration: from the MP4 header when possible, else
  by letting ffmpeg demux the video stream (no decoding)."""
  check_file(path)
  fast = probe_header(path)
  if fast is not None:
    return fast
  return probe_ffmpeg(path, timeout)


def probe_ffmpeg(path: str, timeout: float = 60.0) -> Probe:
  out = ffmpeg.run(["-i", path, "-map", "0:v:0", "-c", "copy", "-f", "null", "-"], path, timeout)
  err = out.stderr.decode(errors="replace")
  stream = ffmpeg.STREAM.search(err)
  if stream is None:
    if "Stream #" in err and "Video:" not in err:
      raise VideoError(f"{path}: has no video stream (audio or data only)")
    raise VideoError(f"{path}: not a readable video ({ffmpeg.last_error(err)})")
  if out.returncode != 0:
    raise VideoError(f"{path}: ffmpeg failed to demux the video stream ({ffmpeg.last_error(err)})")
  width, height = int(stream.group(1)), int(stream.group(2))
  block = err[stream.start():]
  end = block.find("Stream #", 1)  # the video stream's lines only
  rotation = ffmpeg.ROTATION.search(block if end < 0 else block[:end])  # its display matrix (phone videos)
  if rotation and round(float(rotation.group(1))) % 180 == 90:  # ffmpeg autorotates: frames come out transposed
    width, height = height, width
  fps = float(stream.group(3) or stream.group(4))
  frames = [int(x) for x in ffmpeg.FRAMES.findall(err)]
  total = frames[-1] if frames else 0
  d = ffmpeg.DURATION.search(err)
  duration = int(d.group(1)) * 3600 + int(d.group(2)) * 60 + float(d.group(3)) if d else total / fps
  if total <= 0:
    raise VideoError(f"{path}: the video stream holds no frames")
  return Probe(width, height, fps, total, duration)


def check_file(path: str) -> None:
  if not os.path.exists(path):
    raise VideoError(f"{path}: no such file")
  if os.path.isdir(path):
    raise VideoError(f"{path}: is a directory, not a video")
  if os.path.getsize(path) == 0:
    raise VideoError(f"{path}: empty file (0 bytes)")

