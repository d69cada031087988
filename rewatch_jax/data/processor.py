"""Frames -> Qwen2.5-VL pixel rows, with exactly Hugging Face's patch layout and normalisation.

A video of T frames (already resized to multiples of patch * merge) becomes
(T/2 * H/14 * W/14) rows of 3*2*14*14 values; rows are ordered frame pair by frame pair, and inside
a frame pair in 2x2 merge blocks, which is what `rewatch_jax.models.positions` expects.
"""

from __future__ import annotations

import numpy as np

from rewatch_jax.models.configs import VisionConfig
from rewatch_jax.models.inputs import normalize_rows

def frames_to_patches(frames: np.ndarray, cfg: VisionConfig,
                      normalize: bool = True) -> tuple[np.ndarray, tuple[int, int, int]]:
  """uint8 frames (T, H, W, 3) -> (pixel rows (N, patch_dim), grid (t, h, w) in patches).

  Rows are HF's normalised float32, or with `normalize=False` the raw uint8 values in the same
  layout (a quarter of the bytes to move: the Grain pipeline keeps them so, the model normalises
  them on the device). An image is a 1-frame video. T is padded to a multiple of the temporal patch
  by repeating the last frame, as HF does.
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
  p, m, tp = cfg.patch_size, cfg.spatial_merge_size, cfg.temporal_patch_size
  t, h, w, _ = frames.shape
  if h % (p * m) or w % (p * m):
    raise ValueError(f"frame size {h}x{w} must be a multiple of {p * m} (resize first)")
  if t % tp:
    frames = np.concatenate([frames, np.repeat(frames[-1:], tp - t % tp, axis=0)])
  x = frames.transpose(0, 3, 1, 2)  # T, C, H, W
  gt, gh, gw = x.shape[0] // tp, h // p, w // p
  x = x.reshape(gt, tp, 3, gh // m, m, p, gw // m, m, p)
  x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(gt * gh * gw, 3 * tp * p * p)
  return (normalize_rows(x) if normalize else x), (gt, gh, gw)


def video_grid(frames, height, width, cfg: VisionConfig):
  """Patch grid (t, h, w) of `frames` decoded frames of height x width pixels (T padded to whole
  temporal patches, as frames_to_patches does); elementwise on numpy arrays too."""
  return -(-frames // cfg.temporal_patch_size), height // cfg.patch_size, width // cfg.patch_size


def video_tokens(grid: tuple[int, int, int], cfg: VisionConfig) -> int:
  t, h, w = grid
  return t * h * w // cfg.merge_unit


def encode_example(record, video, tokenizer, mode: str, cfg, with_answer: bool = True) -> dict:
  """One training/evaluation example: the record's conversation in `mode` around its decoded
  video (a `rewatch_jax.data.video.Video`), as token ids, loss mask and pixel rows."""
  from rewatch_jax.data import chat
  pixels, grid = frames_to_patches(video.frames, cfg.vision)
  messages = chat.conversation(mode, record, video.duration, with_answer=with_answer)
  enc = chat.encode(tokenizer, messages, video_tokens(grid, cfg.vision),
                    add_generation_prompt=not with_answer)
  return dict(input_ids=enc.input_ids, loss_mask=enc.loss_mask, pixel_values=pixels,
              video_grid_thw=np.asarray(grid, np.int64),
              second_per_grid=np.float32(video.second_per_grid(cfg.vision.temporal_patch_size)))
