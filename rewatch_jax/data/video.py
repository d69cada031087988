"""VideoSpec and video decoding: one sampling/resizing protocol for SFT, RL and evaluation.

Frame count and size follow qwen-vl-utils (`smart_nframes`, `smart_resize`): the formulas that
Qwen2.5-VL and ReWatch-R1 use, re-implemented here. Decoding runs the ffmpeg shipped by
`imageio-ffmpeg` as a subprocess (arguments as a list, never a shell): it selects the sampled
frames and scales them inside ffmpeg, so Python only ever sees the small resized frames, and the
frames' true presentation times come back from ffmpeg's `showinfo`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import struct
import subprocess
import tempfile
from typing import Any

import numpy as np

FACTOR = 28  # patch 14 * merge 2: frame sides are multiples of this
FRAME_FACTOR = 2  # temporal patch: frame counts are even
MAX_RATIO = 200
VIDEO_MAX_PIXELS = 768 * 28 * 28  # qwen-vl-utils' cap on pixels per video frame


class VideoError(ValueError):
  """A video that cannot be read or sampled; the message names the file."""


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


def ffmpeg_exe() -> str:
  import imageio_ffmpeg
  return imageio_ffmpeg.get_ffmpeg_exe()


_STREAM = re.compile(r"Stream #\S+: Video: .*?, (\d{2,5})x(\d{2,5})[, ].*?(?:([\d.]+) fps|([\d.]+) tbr)")
_DURATION = re.compile(r"Duration: (\d+):(\d+):([\d.]+)")
_FRAMES = re.compile(r"frame=\s*(\d+)")
_PTS = re.compile(r"n:\s*(\d+) .*?pts_time:([-\d.e]+)")


@dataclasses.dataclass(frozen=True)
class Probe:
  width: int
  height: int
  fps: float
  total_frames: int
  duration: float


def _run(args: list[str], path: str, timeout: float) -> subprocess.CompletedProcess:
  try:
    return subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", *args], capture_output=True,
                          timeout=timeout, check=False)
  except subprocess.TimeoutExpired as e:
    raise VideoError(f"{path}: ffmpeg timed out after {timeout:.0f}s") from e


def _last_error(stderr: str) -> str:
  lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
  return lines[-1] if lines else "no output"


def _boxes(f, start: int, end: int):
  """ISO-BMFF boxes in [start, end): (type, payload start, box end)."""
  pos = start
  while pos + 8 <= end:
    f.seek(pos)
    size, kind = struct.unpack(">I4s", f.read(8))
    header = 8
    if size == 1:
      size, header = struct.unpack(">Q", f.read(8))[0], 16
    elif size == 0:
      size = end - pos
    if size < header:
      return
    yield kind.decode("latin-1"), pos + header, pos + size
    pos += size


def _child(f, start, end, kind):
  return next(((a, b) for k, a, b in _boxes(f, start, end) if k == kind), None)


def _mp4_probe(path: str) -> Probe | None:
  """Read size, frame count and duration of the first video track from an MP4/MOV header in
  Python (no subprocess). None when the file is not a plain MP4 (or has an edit list that
  shifts frames): the caller then asks ffmpeg."""
  try:
    with open(path, "rb") as f:
      end = os.fstat(f.fileno()).st_size
      moov = _child(f, 0, end, "moov")
      if moov is None:
        return None
      for kind, a, b in _boxes(f, *moov):
        if kind != "trak":
          continue
        mdia = _child(f, a, b, "mdia")
        hdlr = mdia and _child(f, *mdia, "hdlr")
        if not hdlr:
          continue
        f.seek(hdlr[0] + 8)
        if f.read(4) != b"vide":
          continue
        edts = _child(f, a, b, "edts")
        if edts:
          elst = _child(f, *edts, "elst")
          f.seek(elst[0])
          version, count = f.read(1)[0], struct.unpack(">3xI", f.read(7))[0]
          f.seek(8 if version else 4, 1)  # segment duration
          media_time = struct.unpack(">q" if version else ">i", f.read(8 if version else 4))[0] if count else 0
          if count > 1 or media_time < 0:  # several edits, or an empty edit (delay): ask ffmpeg
            return None
        stbl = _child(f, *_child(f, *mdia, "minf"), "stbl")
        f.seek(_child(f, *stbl, "stsd")[0] + 8 + 32)  # coded size in the visual sample entry
        width, height = struct.unpack(">HH", f.read(4))
        tkhd = _child(f, a, b, "tkhd")
        f.seek(tkhd[1] - 44)
        m = struct.unpack(">9i", f.read(36))
        if m[0] == 0 and m[4] == 0:  # rotated by 90 or 270 degrees: ffmpeg autorotates
          width, height = height, width
        mdhd = _child(f, *mdia, "mdhd")
        f.seek(mdhd[0])
        version = f.read(1)[0]
        f.seek(mdhd[0] + (20 if version else 12))
        timescale = struct.unpack(">I", f.read(4))[0]
        stsz, stts = _child(f, *stbl, "stsz"), _child(f, *stbl, "stts")
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
  return None


def probe(path: str, timeout: float = 60.0) -> Probe:
  """Size, frame rate, exact frame count and duration: from the MP4 header when possible, else
  by letting ffmpeg demux the video stream (no decoding)."""
  _check_file(path)
  fast = _mp4_probe(path)
  if fast is not None:
    return fast
  return _ffmpeg_probe(path, timeout)


def _ffmpeg_probe(path: str, timeout: float = 60.0) -> Probe:
  out = _run(["-i", path, "-map", "0:v:0", "-c", "copy", "-f", "null", "-"], path, timeout)
  err = out.stderr.decode(errors="replace")
  stream = _STREAM.search(err)
  if stream is None:
    if "Stream #" in err and "Video:" not in err:
      raise VideoError(f"{path}: has no video stream (audio or data only)")
    raise VideoError(f"{path}: not a readable video ({_last_error(err)})")
  if out.returncode != 0:
    raise VideoError(f"{path}: ffmpeg failed to demux the video stream ({_last_error(err)})")
  width, height = int(stream.group(1)), int(stream.group(2))
  fps = float(stream.group(3) or stream.group(4))
  frames = [int(x) for x in _FRAMES.findall(err)]
  total = frames[-1] if frames else 0
  d = _DURATION.search(err)
  duration = int(d.group(1)) * 3600 + int(d.group(2)) * 60 + float(d.group(3)) if d else total / fps
  if total <= 0:
    raise VideoError(f"{path}: the video stream holds no frames")
  return Probe(width, height, fps, total, duration)


def _check_file(path: str) -> None:
  if not os.path.exists(path):
    raise VideoError(f"{path}: no such file")
  if os.path.isdir(path):
    raise VideoError(f"{path}: is a directory, not a video")
  if os.path.getsize(path) == 0:
    raise VideoError(f"{path}: empty file (0 bytes)")


def _sum_tree(terms: list[str]) -> str:
  if len(terms) == 1:
    return terms[0]
  mid = len(terms) // 2
  return f"({_sum_tree(terms[:mid])}+{_sum_tree(terms[mid:])})"


def load_video(path: str, spec: VideoSpec = VideoSpec(), threads: int = 0, timeout: float = 600.0) -> Video:
  """Decode `path` into the spec's frames. Raises VideoError (a ValueError) naming the file.

  `threads`: decoder threads; 0 = one per CPU core up to 8 (ffmpeg's own "auto" starts cores + 1,
  which measurably slows small decodes on few cores; the filters run on one thread)."""
  threads = threads or min(os.cpu_count() or 1, 8)
  path = os.fspath(path)
  info = probe(path, timeout)
  try:
    n = smart_nframes(spec, info.total_frames, info.fps)
    height, width = frame_size(spec, info.height, info.width, n)
  except ValueError as e:
    raise VideoError(f"{path}: {e} ({info.total_frames} frames, {info.width}x{info.height})") from e
  indices = sample_indices(info.total_frames, n)
  unique = np.unique(indices)
  with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=True) as expr_file:
    # The select expression can be long (192 terms): pass it through a filter script file, as a
    # balanced sum (ffmpeg's expression parser fails on ~100 terms chained linearly).
    select = _sum_tree(["eq(n\\," + str(i) + ")" for i in unique])
    expr_file.write(f"select='{select}',scale={width}:{height}:flags={spec.interpolation},showinfo=checksum=0")
    expr_file.flush()
    out = _run(["-threads", str(threads), "-filter_threads", "1", "-an", "-sn", "-dn", "-i", path, "-map", "0:v:0",
                "-/filter:v", expr_file.name, "-fps_mode", "passthrough",
                "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], path, timeout)
  err = out.stderr.decode(errors="replace")
  frame_bytes = height * width * 3
  got = len(out.stdout) // frame_bytes
  if out.returncode != 0 or got == 0:
    raise VideoError(f"{path}: decoding failed after {got} of {len(unique)} frames ({_last_error(err)})")
  if got < len(unique):
    raise VideoError(f"{path}: truncated or corrupt: decoded {got} of {len(unique)} sampled frames")
  frames = np.frombuffer(out.stdout[:got * frame_bytes], np.uint8).reshape(got, height, width, 3)
  pts = np.array([float(t) for _, t in _PTS.findall(err)][:got])
  if len(pts) != got:
    pts = unique[:got] / info.fps
  position = np.searchsorted(unique, indices)  # repeated indices (short videos) reuse a frame
  return Video(frames=frames[position], timestamps=pts[position], path=path, source_fps=info.fps,
               total_frames=info.total_frames, duration=info.duration, spec_hash=spec.hash)


def file_digest(path: str, chunk: int = 1 << 22) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(chunk):
      h.update(block)
  return h.hexdigest()


class FrameCache:
  """Content-addressed decoded frames: key = (sha256 of the video file, VideoSpec hash), so a video
  is decoded once per spec for SFT, RL and evaluation, whatever its path. Writes are atomic."""

  def __init__(self, directory: str):
    self.directory = directory
    os.makedirs(directory, exist_ok=True)

  def _path(self, digest: str, spec: VideoSpec) -> str:
    return os.path.join(self.directory, digest[:2], f"{digest}-{spec.hash}.npz")

  def load(self, path: str, spec: VideoSpec = VideoSpec()) -> Video:
    _check_file(path)
    entry = self._path(file_digest(path), spec)
    if os.path.exists(entry):
      try:
        with np.load(entry) as z:
          meta = json.loads(str(z["meta"]))
          return Video(frames=z["frames"], timestamps=z["timestamps"], path=path, **meta)
      except (OSError, ValueError, KeyError):
        os.remove(entry)  # a damaged entry is decoded again
    video = load_video(path, spec)
    os.makedirs(os.path.dirname(entry), exist_ok=True)
    meta = dict(source_fps=video.source_fps, total_frames=video.total_frames,
                duration=video.duration, spec_hash=video.spec_hash)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(entry), suffix=".tmp.npz")
    with os.fdopen(fd, "wb") as f:
      np.savez(f, frames=video.frames, timestamps=video.timestamps, meta=json.dumps(meta))
    os.replace(tmp, entry)
    return video
