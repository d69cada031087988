"""Frames -> Qwen2.5-VL pixel rows, with exactly Hugging Face's patch layout and normalisation.

A video of T frames (already resized to multiples of patch * merge) becomes
(T/2 * H/14 * W/14) rows of 3*2*14*14 values; rows are ordered frame pair by frame pair, and inside
a frame pair in 2x2 merge blocks, which is what `rewatch_jax.models.positions` expects.
"""

from __future__ import annotations

import numpy as np

from rewatch_jax.models.configs import VisionConfig

# OpenAI CLIP statistics, used by the Qwen2-VL / Qwen2.5-VL image and video processors.
IMAGE_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
IMAGE_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def frames_to_patches(frames: np.ndarray, cfg: VisionConfig) -> tuple[np.ndarray, tuple[int, int, int]]:
  """uint8 frames (T, H, W, 3) -> (pixel rows (N, patch_dim) float32, grid (t, h, w) in patches).

  An image is a 1-frame video. T is padded to a multiple of the temporal patch by repeating the
  last frame, as HF does.
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"frames must be (T, H, W, 3), got {frames.shape}")
  p, m, tp = cfg.patch_size, cfg.spatial_merge_size, cfg.temporal_patch_size
  t, h, w, _ = frames.shape
  if h % (p * m) or w % (p * m):
    raise ValueError(f"frame size {h}x{w} must be a multiple of {p * m} (resize first)")
  if t % tp:
    frames = np.concatenate([frames, np.repeat(frames[-1:], tp - t % tp, axis=0)])
  x = (frames.astype(np.float32) / 255.0 - IMAGE_MEAN) / IMAGE_STD
  x = x.transpose(0, 3, 1, 2)  # T, C, H, W
  gt, gh, gw = x.shape[0] // tp, h // p, w // p
  x = x.reshape(gt, tp, 3, gh // m, m, p, gw // m, m, p)
  x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
  return x.reshape(gt * gh * gw, 3 * tp * p * p), (gt, gh, gw)
