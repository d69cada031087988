"""Sampling a long, sparsely sampled video by seeking to each frame instead of decoding it whole."""

from __future__ import annotations

import concurrent.futures
import re

import numpy as np

from rewatch_jax.data.video import ffmpeg
from rewatch_jax.data.video.spec import VideoSpec

# Where the sampled frames lie this far apart on average (seconds) and the decoder would otherwise
# see most frames (no drop plan, or one that keeps over half: open groups of pictures, I/P only),
# the sampled frames are found by seeking instead (decode_seeking), each decoded from the keyframe
# before it: half a group of pictures on average. 20 min of 360p in MKV, 192 frames 6.25 s apart:
# keyframes every 2 s 2.2 s against 5.7 s whole, every 10 s (x264's default) 4.7 s against 6.1 s.
# Much closer, half a long group per frame costs more than the frames between them.
SEEK_GAP = 5.0
SEEK_MEMORY = 512 * 2**20  # decoded pictures one seeking process may hold: 28 inputs of 1080p, 7 of 4K
_BRANCH_PTS = re.compile(r"showinfo@s(\d+) [^\n]*?n:\s*0 [^\n]*?pts_time:([-\d.e]+)")


def decode_seeking(path: str, unique: np.ndarray, fps: float, source_pixels: int, height: int, width: int,
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
    branch = ffmpeg.scale_filter(height, width, spec)
    graph = ";".join(f"[{k}:v:0]trim=end_frame=1,{branch.replace('showinfo=', f'showinfo@s{k}=')}[v{k}]"
                     for k in range(len(indices)))
    graph += ";" + "".join(f"[v{k}]" for k in range(len(indices))) + f"concat=n={len(indices)}:v=1:a=0[out]"
    out = ffmpeg.run([*inputs, "-filter_complex_threads", "1", "-filter_complex", graph, "-map", "[out]",
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

