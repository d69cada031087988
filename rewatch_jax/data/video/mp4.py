"""ISO-BMFF (MP4/MOV) boxes and sample tables, read in Python: the video track's header and tables
without starting ffmpeg."""

from __future__ import annotations

import os
import struct

import numpy as np


def boxes(f, start: int, end: int):
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


def child(f, start, end, kind):
  return next(((a, b) for k, a, b in boxes(f, start, end) if k == kind), None)


def video_track(f):
  """(trak, mdia, stbl) payload spans of the first video track of an MP4/MOV, or None."""
  moov = child(f, 0, os.fstat(f.fileno()).st_size, "moov")
  for kind, a, b in boxes(f, *moov) if moov else ():
    mdia = child(f, a, b, "mdia") if kind == "trak" else None
    hdlr = mdia and child(f, *mdia, "hdlr")
    if hdlr:
      f.seek(hdlr[0] + 8)
      if f.read(4) == b"vide":
        return (a, b), mdia, child(f, *child(f, *mdia, "minf"), "stbl")
  return None


def edit_start(f, trak) -> int | None:
  """Media time where the track's single edit starts (0 without an edit list); None for several
  edits or an empty edit (a delay)."""
  edts = child(f, *trak, "edts")
  if not edts:
    return 0
  elst = child(f, *edts, "elst")
  f.seek(elst[0])
  version, count = f.read(1)[0], struct.unpack(">3xI", f.read(7))[0]
  f.seek(8 if version else 4, 1)  # segment duration
  media_time = struct.unpack(">q" if version else ">i", f.read(8 if version else 4))[0] if count else 0
  return None if count > 1 or media_time < 0 else media_time


def timescale(f, mdia) -> int:
  mdhd = child(f, *mdia, "mdhd")
  f.seek(mdhd[0])
  version = f.read(1)[0]
  f.seek(mdhd[0] + (20 if version else 12))
  return struct.unpack(">I", f.read(4))[0]


def rows(f, box, width: int, dtype: str = ">u4", skip: int = 0) -> np.ndarray:
  """The table of a full box: version/flags, `skip` bytes, a 32-bit count, then count rows of
  `width` fields. Raises ValueError when the table does not fit in the box."""
  f.seek(box[0] + 4 + skip)
  (count,) = struct.unpack(">I", f.read(4))
  size = count * width * np.dtype(dtype).itemsize
  if box[0] + 8 + skip + size > box[1]:
    raise ValueError("sample table overruns its box")
  return np.frombuffer(f.read(size), dtype).reshape(count, width).astype(np.int64)


def runs(counts: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
  """The first n of `values[i]` repeated `counts[i]` times (a run-length sample table)."""
  which = np.searchsorted(np.cumsum(counts), np.arange(n), side="right")
  if n and which[-1] >= len(values):
    raise ValueError("sample table shorter than the sample count")
  return values[which]


