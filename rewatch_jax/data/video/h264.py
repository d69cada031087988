"""H.264 in MP4: which frames no other frame predicts from, and which packets a decode of the
sampled frames can drop before the decoder (`drop_plan`)."""

from __future__ import annotations

import mmap
import os
import struct

import numpy as np

from rewatch_jax.data.video import mp4

_VCL = {1, 2, 3, 4, 5, 20, 21}  # coded slice NAL unit types (partitions, IDR, MVC/3D extensions)


def is_nonref(m, pos: int, end: int, nal_len: int) -> bool:
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


def is_idr(m, pos: int, end: int, nal_len: int) -> bool:
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


def avc_frames(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None] | None:
  """For the H.264 (avc1/avc3) video track of an MP4, per frame in display order: its decode
  index, whether it is a non-reference picture (no other frame predicts from it, so when it is
  not sampled its packet can be dropped before the decoder), and its presentation time in seconds
  from the first frame; and per frame in decode order whether it starts a closed group of pictures
  (a sync sample that is an IDR picture), or None where some sync sample is not an IDR (open GOPs:
  frames after it may predict from frames before it). None for any other codec or layout, or a
  table this parser does not trust; the caller then decodes every frame."""
  try:
    with open(path, "rb") as f:
      track = mp4.video_track(f)
      if track is None:
        return None
      trak, mdia, stbl = track
      edit = mp4.edit_start(f, trak)
      stsd = mp4.child(f, *stbl, "stsd")
      f.seek(stsd[0] + 4)
      entries, size, codec = struct.unpack(">II4s", f.read(12))
      if edit is None or entries != 1 or codec not in (b"avc1", b"avc3"):
        return None
      avcc = mp4.child(f, stsd[0] + 16 + 78, stsd[0] + 8 + size, "avcC")  # after the visual sample entry
      f.seek(avcc[0] + 4)
      nal_len = (f.read(1)[0] & 3) + 1
      box = lambda kind: mp4.child(f, *stbl, kind)
      f.seek(box("stsz")[0] + 4)
      uniform, count = struct.unpack(">II", f.read(8))
      if not count or uniform * count > os.fstat(f.fileno()).st_size:
        return None
      sizes = np.full(count, uniform, np.int64) if uniform else mp4.rows(f, box("stsz"), 1, skip=4)[:, 0]
      chunks = mp4.rows(f, box("stco"), 1)[:, 0] if box("stco") else mp4.rows(f, box("co64"), 1, ">u8")[:, 0]
      stsc = mp4.rows(f, box("stsc"), 3)
      stts = mp4.rows(f, box("stts"), 2)
      ctts = mp4.rows(f, box("ctts"), 2) if box("ctts") else np.array([[count, 0]])
      stss = mp4.rows(f, box("stss"), 1)[:, 0] if box("stss") else np.arange(1, count + 1)  # none: all sync
      if not len(stss) or stss.min() < 1 or stss.max() > count:
        return None
      sync = np.zeros(count, bool)
      sync[stss - 1] = True
      timescale = mp4.timescale(f, mdia)
      # stsc: runs of chunks (numbered from 1) with the same number of samples
      first = stsc[:, 0] - 1
      if nal_len == 3 or not (len(first) and first[0] == 0 and first[-1] < len(chunks)) or np.any(np.diff(first) <= 0):
        return None
      per_chunk = mp4.runs(np.diff(np.append(first, len(chunks))), stsc[:, 1], len(chunks))
      chunk = mp4.runs(per_chunk, np.arange(len(chunks)), count)
      starts = np.cumsum(sizes) - sizes
      offsets = chunks[chunk] + starts - starts[np.searchsorted(chunk, chunk)]
      deltas = mp4.runs(stts[:, 0], stts[:, 1], count)
      dts = np.cumsum(deltas) - deltas
      cts = dts + mp4.runs(ctts[:, 0], ctts[:, 1], count).astype(np.uint32).view(np.int32)
      if edit > cts.min():  # the edit cuts frames off: the demuxer's packet numbering may differ
        return None
      with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        if (offsets + sizes).max() > len(m) or offsets.min() < 0:
          return None
        spans = list(zip(offsets.tolist(), (offsets + sizes).tolist()))
        head = [is_nonref(m, a, b, nal_len) for a, b in spans[:64]]
        # encoders that make non-reference pictures make them from the start
        nonref = np.array(head + [is_nonref(m, a, b, nal_len) for a, b in spans[64:]] if any(head) else
                          np.zeros(count, bool))
        closed = sync[0] and all(is_idr(m, *spans[i], nal_len) for i in np.flatnonzero(sync))
        if not (nonref.any() or closed):
          return None
  except (OSError, struct.error, TypeError, IndexError, ValueError):
    return None
  order = np.argsort(cts, kind="stable")
  times = (cts[order] - cts[order[0]]) / timescale
  return order, nonref[order], times, (sync if closed else None)


def drop_plan(path: str, unique: np.ndarray, total: int):
  """(decode-order packet numbers to drop, the sampled frames' numbers among the frames left, the
  sampled frames' times from the first frame) or None when nothing can be dropped.

  A non-reference H.264 picture that is not sampled need not be decoded at all: no other frame
  predicts from it. Nor, in a closed group of pictures (from an IDR picture to the next), need any
  frame that comes after the group's last sampled frame in decode order: the tail of every group,
  and every group without a sampled frame (long videos, sampled sparsely). Dropping those packets
  before the decoder (x264's default B-frames are ~45% of all frames) leaves every other frame
  bit-identical, and the sampled frames are then found by their rank among the frames left."""
  table = avc_frames(path)
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

