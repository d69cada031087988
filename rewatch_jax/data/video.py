"""VideoSpec and video decoding: one sampling/resizing protocol for SFT, RL and evaluation.

Frame count and size follow qwen-vl-utils (`smart_nframes`, `smart_resize`): the formulas that
Qwen2.5-VL and ReWatch-R1 use, re-implemented here. Decoding runs the ffmpeg shipped by
`imageio-ffmpeg` as a subprocess (arguments as a list, never a shell): it selects the sampled
frames and scales them inside ffmpeg, so Python only ever sees the small resized frames, and the
frames' true presentation times come back from ffmpeg's `showinfo`. In H.264 MP4s, the packets of
unsampled non-reference frames, and of frames after the last sampled one of a closed group of
pictures, are dropped before the decoder (`_drop_plan`). Long videos that this cannot thin, sampled
sparsely, are sampled by seeking to each frame instead (`_decode_seeking`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import math
import mmap
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
_ROTATION = re.compile(r"rotation of (-?[\d.]+) degrees", re.IGNORECASE)


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


def _video_track(f):
  """(trak, mdia, stbl) payload spans of the first video track of an MP4/MOV, or None."""
  moov = _child(f, 0, os.fstat(f.fileno()).st_size, "moov")
  for kind, a, b in _boxes(f, *moov) if moov else ():
    mdia = _child(f, a, b, "mdia") if kind == "trak" else None
    hdlr = mdia and _child(f, *mdia, "hdlr")
    if hdlr:
      f.seek(hdlr[0] + 8)
      if f.read(4) == b"vide":
        return (a, b), mdia, _child(f, *_child(f, *mdia, "minf"), "stbl")
  return None


def _edit_start(f, trak) -> int | None:
  """Media time where the track's single edit starts (0 without an edit list); None for several
  edits or an empty edit (a delay)."""
  edts = _child(f, *trak, "edts")
  if not edts:
    return 0
  elst = _child(f, *edts, "elst")
  f.seek(elst[0])
  version, count = f.read(1)[0], struct.unpack(">3xI", f.read(7))[0]
  f.seek(8 if version else 4, 1)  # segment duration
  media_time = struct.unpack(">q" if version else ">i", f.read(8 if version else 4))[0] if count else 0
  return None if count > 1 or media_time < 0 else media_time


def _mp4_probe(path: str) -> Probe | None:
  """Read size, frame count and duration of the first video track from an MP4/MOV header in
  Python (no subprocess). None when the file is not a plain MP4 (or has an edit list that
  shifts frames): the caller then asks ffmpeg."""
  try:
    with open(path, "rb") as f:
      track = _video_track(f)
      if track is None or _edit_start(f, track[0]) is None:  # several edits or a delay: ask ffmpeg
        return None
      trak, mdia, stbl = track
      f.seek(_child(f, *stbl, "stsd")[0] + 8 + 32)  # coded size in the visual sample entry
      width, height = struct.unpack(">HH", f.read(4))
      tkhd = _child(f, *trak, "tkhd")
      f.seek(tkhd[1] - 44)
      m = struct.unpack(">9i", f.read(36))
      if m[0] == 0 and m[4] == 0:  # rotated by 90 or 270 degrees: ffmpeg autorotates
        width, height = height, width
      timescale = _timescale(f, mdia)
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


def _timescale(f, mdia) -> int:
  mdhd = _child(f, *mdia, "mdhd")
  f.seek(mdhd[0])
  version = f.read(1)[0]
  f.seek(mdhd[0] + (20 if version else 12))
  return struct.unpack(">I", f.read(4))[0]


def _rows(f, box, width: int, dtype: str = ">u4", skip: int = 0) -> np.ndarray:
  """The table of a full box: version/flags, `skip` bytes, a 32-bit count, then count rows of
  `width` fields. Raises ValueError when the table does not fit in the box."""
  f.seek(box[0] + 4 + skip)
  (count,) = struct.unpack(">I", f.read(4))
  size = count * width * np.dtype(dtype).itemsize
  if box[0] + 8 + skip + size > box[1]:
    raise ValueError("sample table overruns its box")
  return np.frombuffer(f.read(size), dtype).reshape(count, width).astype(np.int64)


def _runs(counts: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
  """The first n of `values[i]` repeated `counts[i]` times (a run-length sample table)."""
  which = np.searchsorted(np.cumsum(counts), np.arange(n), side="right")
  if n and which[-1] >= len(values):
    raise ValueError("sample table shorter than the sample count")
  return values[which]


_VCL = {1, 2, 3, 4, 5, 20, 21}  # coded slice NAL unit types (partitions, IDR, MVC/3D extensions)


def _is_nonref(m, pos: int, end: int, nal_len: int) -> bool:
  """True when an AVC sample (length-prefixed NAL units in [pos, end)) is a non-reference
  picture: every slice is a plain slice (type 1) with nal_ref_idc 0, and the NAL units tile the
  sample exactly. Anything else (IDR, a reference slice, an odd layout) is False."""
  slices = 0
  while pos + nal_len < end:
    header = m[pos + nal_len]
    if header & 0x1F in _VCL:
      if header != 0x01:  # forbidden bit 0, nal_ref_idc 0, type 1 (a non-IDR slice)
        return False
      slices += 1
    pos += nal_len + int.from_bytes(m[pos:pos + nal_len], "big")
  return slices > 0 and pos == end


def _is_idr(m, pos: int, end: int, nal_len: int) -> bool:
  """True when every slice of an AVC sample is an IDR slice (type 5): no later frame predicts from
  a frame before it, so it starts a closed group of pictures."""
  slices = 0
  while pos + nal_len < end:
    kind = m[pos + nal_len] & 0x1F
    if kind in _VCL:
      if kind != 5:
        return False
      slices += 1
    pos += nal_len + int.from_bytes(m[pos:pos + nal_len], "big")
  return slices > 0 and pos == end


def _avc_frames(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None] | None:
  """For the H.264 (avc1/avc3) video track of an MP4, per frame in display order: its decode
  index, whether it is a non-reference picture (no other frame predicts from it, so when it is
  not sampled its packet can be dropped before the decoder), and its presentation time in seconds
  from the first frame; and per frame in decode order whether it starts a closed group of pictures
  (a sync sample that is an IDR picture), or None where some sync sample is not an IDR (open GOPs:
  frames after it may predict from frames before it). None for any other codec or layout, or a
  table this parser does not trust; the caller then decodes every frame."""
  try:
    with open(path, "rb") as f:
      track = _video_track(f)
      if track is None:
        return None
      trak, mdia, stbl = track
      edit = _edit_start(f, trak)
      stsd = _child(f, *stbl, "stsd")
      f.seek(stsd[0] + 4)
      entries, size, codec = struct.unpack(">II4s", f.read(12))
      if edit is None or entries != 1 or codec not in (b"avc1", b"avc3"):
        return None
      avcc = _child(f, stsd[0] + 16 + 78, stsd[0] + 8 + size, "avcC")  # after the visual sample entry
      f.seek(avcc[0] + 4)
      nal_len = (f.read(1)[0] & 3) + 1
      box = lambda kind: _child(f, *stbl, kind)
      f.seek(box("stsz")[0] + 4)
      uniform, count = struct.unpack(">II", f.read(8))
      if not count or uniform * count > os.fstat(f.fileno()).st_size:
        return None
      sizes = np.full(count, uniform, np.int64) if uniform else _rows(f, box("stsz"), 1, skip=4)[:, 0]
      chunks = _rows(f, box("stco"), 1)[:, 0] if box("stco") else _rows(f, box("co64"), 1, ">u8")[:, 0]
      stsc = _rows(f, box("stsc"), 3)
      stts = _rows(f, box("stts"), 2)
      ctts = _rows(f, box("ctts"), 2) if box("ctts") else np.array([[count, 0]])
      stss = _rows(f, box("stss"), 1)[:, 0] if box("stss") else np.arange(1, count + 1)  # none: all sync
      if not len(stss) or stss.min() < 1 or stss.max() > count:
        return None
      sync = np.zeros(count, bool)
      sync[stss - 1] = True
      timescale = _timescale(f, mdia)
      # stsc: runs of chunks (numbered from 1) with the same number of samples
      first = stsc[:, 0] - 1
      if nal_len == 3 or not (len(first) and first[0] == 0 and first[-1] < len(chunks)) or np.any(np.diff(first) <= 0):
        return None
      per_chunk = _runs(np.diff(np.append(first, len(chunks))), stsc[:, 1], len(chunks))
      chunk = _runs(per_chunk, np.arange(len(chunks)), count)
      starts = np.cumsum(sizes) - sizes
      offsets = chunks[chunk] + starts - starts[np.searchsorted(chunk, chunk)]
      deltas = _runs(stts[:, 0], stts[:, 1], count)
      dts = np.cumsum(deltas) - deltas
      cts = dts + _runs(ctts[:, 0], ctts[:, 1], count).astype(np.uint32).view(np.int32)
      if edit > cts.min():  # the edit cuts frames off: the demuxer's packet numbering may differ
        return None
      with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        if (offsets + sizes).max() > len(m) or offsets.min() < 0:
          return None
        spans = list(zip(offsets.tolist(), (offsets + sizes).tolist()))
        head = [_is_nonref(m, a, b, nal_len) for a, b in spans[:64]]
        # encoders that make non-reference pictures make them from the start
        nonref = np.array(head + [_is_nonref(m, a, b, nal_len) for a, b in spans[64:]] if any(head) else
                          np.zeros(count, bool))
        closed = sync[0] and all(_is_idr(m, *spans[i], nal_len) for i in np.flatnonzero(sync))
        if not (nonref.any() or closed):
          return None
  except (OSError, struct.error, TypeError, IndexError, ValueError):
    return None
  order = np.argsort(cts, kind="stable")
  times = (cts[order] - cts[order[0]]) / timescale
  return order, nonref[order], times, (sync if closed else None)


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
  block = err[stream.start():]
  end = block.find("Stream #", 1)  # the video stream's lines only
  rotation = _ROTATION.search(block if end < 0 else block[:end])  # its display matrix (phone videos)
  if rotation and round(float(rotation.group(1))) % 180 == 90:  # ffmpeg autorotates: frames come out transposed
    width, height = height, width
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


def _member_tree(values: list[int]) -> str:
  """ffmpeg expression: 1 when n is in the sorted `values`, as a binary search (if() evaluates one
  branch, so a packet costs O(log len) comparisons, not one per value)."""
  if len(values) <= 3:
    return "+".join(f"eq(n\\,{v})" for v in values)
  mid = len(values) // 2
  return f"if(lt(n\\,{values[mid]})\\,{_member_tree(values[:mid])}\\,{_member_tree(values[mid:])})"


def _drop_plan(path: str, unique: np.ndarray, total: int):
  """(decode-order packet numbers to drop, the sampled frames' numbers among the frames left, the
  sampled frames' times from the first frame) or None when nothing can be dropped.

  A non-reference H.264 picture that is not sampled need not be decoded at all: no other frame
  predicts from it. Nor, in a closed group of pictures (from an IDR picture to the next), need any
  frame that comes after the group's last sampled frame in decode order: the tail of every group,
  and every group without a sampled frame (long videos, sampled sparsely). Dropping those packets
  before the decoder (x264's default B-frames are ~45% of all frames) leaves every other frame
  bit-identical, and the sampled frames are then found by their rank among the frames left."""
  table = _avc_frames(path)
  if table is None or len(table[0]) != total:
    return None
  order, nonref, times, sync = table
  keep = ~nonref
  keep[unique] = True
  if sync is not None:  # in decode order: nothing after the last sampled frame of its group
    group = np.cumsum(sync) - 1
    sampled = np.zeros(total, bool)
    sampled[order[unique]] = True
    last = np.full(group[-1] + 1, -1)
    np.maximum.at(last, group[sampled], np.flatnonzero(sampled))
    keep &= (np.arange(total) <= last[group])[order]
  if keep.all():
    return None
  return np.sort(order[~keep]), (np.cumsum(keep) - 1)[unique], times[unique]


def _scale(height: int, width: int, spec: VideoSpec) -> str:
  return f"scale={width}:{height}:flags={spec.interpolation},format=gbrp,showinfo=checksum=0"


# Where the sampled frames lie this far apart on average (seconds) and the decoder would otherwise
# see most frames (no drop plan, or one that keeps over half: open groups of pictures, I/P only),
# the sampled frames are found by seeking instead (_decode_seeking), each decoded from the keyframe
# before it: half a group of pictures on average. 20 min of 360p in MKV, 192 frames 6.25 s apart:
# keyframes every 2 s 2.2 s against 5.7 s whole, every 10 s (x264's default) 4.7 s against 6.1 s.
# Much closer, half a long group per frame costs more than the frames between them.
SEEK_GAP = 5.0
SEEK_MEMORY = 512 * 2**20  # decoded pictures one seeking process may hold: 28 inputs of 1080p, 7 of 4K
_BRANCH_PTS = re.compile(r"showinfo@s(\d+) [^\n]*?n:\s*0 [^\n]*?pts_time:([-\d.e]+)")


def _decode_seeking(path: str, unique: np.ndarray, fps: float, source_pixels: int, height: int, width: int,
                    spec: VideoSpec, threads: int, timeout: float) -> tuple[np.ndarray, np.ndarray] | None:
  """The sampled frames by seeking to each (`-ss` before `-i`: ffmpeg jumps to the keyframe before
  it and decodes from there, dropping frames before the time), so a long video sampled sparsely is
  not decoded whole. One ffmpeg process opens the file once per frame of a group (an input each,
  first frame only, the groups' frames concatenated): per-frame processes spent most of their time
  starting (an hour of 360p, 192 frames on 2 cores: 3.1 s, in groups of 32 1.4 s). Groups hold
  fewer frames for large sources, whose decoders hold more memory; `threads` processes at a time.
  The same pixels as the full decode (the same pictures through the same scaler; tested). None
  where a frame's time is not its index's (variable frame rate, a demuxer that seeks inexactly) or
  a run fails: the caller then decodes the video in full."""
  per_process = int(np.clip(SEEK_MEMORY // (6 * 1.5 * source_pixels), 1, 32))  # ~6 reference frames a decoder

  def group(indices: list[int]):
    starts = [(i - 0.5) / fps for i in indices]  # the first frame at or after it is frame i (constant rate)
    inputs = [a for t in starts for a in ("-ss", f"{t:.6f}", "-an", "-sn", "-dn", "-threads", "1", "-i", path)]
    branch = _scale(height, width, spec)
    graph = ";".join(f"[{k}:v:0]trim=end_frame=1,{branch.replace('showinfo=', f'showinfo@s{k}=')}[v{k}]"
                     for k in range(len(indices)))
    graph += ";" + "".join(f"[v{k}]" for k in range(len(indices))) + f"concat=n={len(indices)}:v=1:a=0[out]"
    out = _run([*inputs, "-filter_complex_threads", "1", "-filter_complex", graph, "-map", "[out]",
                "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], path, timeout)
    pts = {int(k): float(t) for k, t in _BRANCH_PTS.findall(out.stderr.decode(errors="replace"))}
    if out.returncode != 0 or len(out.stdout) != len(indices) * height * width * 3 or len(pts) != len(indices):
      return None
    return np.frombuffer(out.stdout, np.uint8).reshape(-1, height, width, 3), [t + pts[k] for k, t in enumerate(starts)]

  groups = [unique[i:i + per_process].tolist() for i in range(0, len(unique), per_process)]
  with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
    got = list(pool.map(group, groups))
  if any(g is None for g in got):
    return None
  times = np.concatenate([t for _, t in got])
  if np.abs(times - unique / fps).max() > 0.5 / fps:
    return None
  return np.concatenate([f for f, _ in got]), times


def _decode(path: str, select: np.ndarray, drop: np.ndarray | None, height: int, width: int, spec: VideoSpec,
            threads: int, timeout: float) -> tuple[np.ndarray, np.ndarray | None]:
  """Frames number `select` (sorted, among the frames the decoder outputs, in display order) and
  their showinfo times (None when they could not be read). `drop`: packets (numbered in decode
  order) discarded by a bitstream filter before the decoder."""
  with tempfile.TemporaryDirectory() as tmp:
    # The select expression can be long (192 terms): pass it through a filter script file, as a
    # balanced sum (ffmpeg's expression parser fails on ~100 terms chained linearly).
    filters, bsf = os.path.join(tmp, "filters.txt"), os.path.join(tmp, "bsf.txt")
    with open(filters, "w") as f:
      select_expr = _sum_tree(["eq(n\\," + str(i) + ")" for i in select])
      # Scale into planar RGB: the scaler then interpolates chroma to every output pixel (mean error
      # 0.24 against full-resolution RGB resized with PIL bicubic on bigbuckbunny, against 1.84 when
      # it scales straight to packed rgb24, which reuses one chroma sample per pixel pair), and the
      # packing into rgb24 after it has a fast path: ~7% faster too (docs/data.md).
      f.write(f"select='{select_expr}',{_scale(height, width, spec)}")
    pre = []
    if drop is not None:
      with open(bsf, "w") as f:
        f.write(f"noise=drop={_member_tree(drop.tolist())}")
      pre = ["-/bsf:v", bsf]  # an input option: applies to the demuxed packets
    out = _run(["-threads", str(threads), "-filter_threads", "1", "-an", "-sn", "-dn", *pre, "-i", path,
                "-map", "0:v:0", "-/filter:v", filters, "-fps_mode", "passthrough",
                "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], path, timeout)
  err = out.stderr.decode(errors="replace")
  frame_bytes = height * width * 3
  got = len(out.stdout) // frame_bytes
  if out.returncode != 0 or got == 0:
    raise VideoError(f"{path}: decoding failed after {got} of {len(select)} frames ({_last_error(err)})")
  if got < len(select):
    raise VideoError(f"{path}: truncated or corrupt: decoded {got} of {len(select)} sampled frames")
  frames = np.frombuffer(out.stdout[:got * frame_bytes], np.uint8).reshape(got, height, width, 3)
  pts = np.array([float(t) for _, t in _PTS.findall(err)][:got])
  return frames, (pts if len(pts) == got else None)


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
  info = probe(path, timeout)
  timeout += info.duration
  try:
    n = smart_nframes(spec, info.total_frames, info.fps)
    height, width = frame_size(spec, info.height, info.width, n)
  except ValueError as e:
    raise VideoError(f"{path}: {e} ({info.total_frames} frames, {info.width}x{info.height})") from e
  indices = sample_indices(info.total_frames, n)
  unique = np.unique(indices)
  decoded = None
  plan = _drop_plan(path, unique, info.total_frames)
  if info.duration / len(unique) >= SEEK_GAP and (plan is None or len(plan[0]) < info.total_frames / 2):
    decoded = _decode_seeking(path, unique, info.fps, info.width * info.height, height, width, spec, threads, timeout)
  if decoded is None and plan is not None:  # (also where seeking failed: the plan still thins the decode)
    drop, select, times = plan
    try:
      decoded = _decode(path, select, drop, height, width, spec, threads, timeout)
    except VideoError:
      pass  # decoded again below, every frame, for the error message of the plain path
    # The frames must be the sampled ones: their times from ffmpeg must match the MP4 table's.
    if decoded is not None and (decoded[1] is None or np.abs(decoded[1] - decoded[1][0] - (times - times[0])).max() > 0.5 / info.fps):
      decoded = None
  if decoded is None:
    decoded = _decode(path, unique, None, height, width, spec, threads, timeout)
  frames, pts = decoded
  if pts is None:
    pts = unique / info.fps
  position = np.searchsorted(unique, indices)  # repeated indices (short videos) reuse a frame
  return Video(frames=frames[position], timestamps=pts[position], path=path, source_fps=info.fps,
               total_frames=info.total_frames, duration=info.duration, spec_hash=spec.hash)


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

  def load(self, path: str, spec: VideoSpec = VideoSpec(), digest: str | None = None, threads: int = 0) -> Video:
    """`digest`: the file's sha256 where the caller has it already (hashing a long video takes a
    while); `threads`: as load_video's."""
    _check_file(path)
    entry = self._path(digest or file_digest(path), spec)
    if os.path.exists(entry):
      try:
        with np.load(entry) as z:
          meta = json.loads(str(z["meta"]))
          return Video(frames=z["frames"], timestamps=z["timestamps"], path=path, **meta)
      except (OSError, ValueError, KeyError):
        os.remove(entry)  # a damaged entry is decoded again
    video = load_video(path, spec, threads=threads)
    os.makedirs(os.path.dirname(entry), exist_ok=True)
    meta = dict(source_fps=video.source_fps, total_frames=video.total_frames,
                duration=video.duration, spec_hash=video.spec_hash)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(entry), suffix=".tmp.npz")
    with os.fdopen(fd, "wb") as f:
      np.savez(f, frames=video.frames, timestamps=video.timestamps, meta=json.dumps(meta))
    os.replace(tmp, entry)
    return video
