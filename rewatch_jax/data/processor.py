"""A conversation and a decoded video -> one example (`encode_example`): token ids, loss mask and
Qwen2.5-VL pixel rows, with exactly Hugging Face's patch layout and normalisation.

A video of T frames (already resized to multiples of patch * merge) becomes
(T/2 * H/14 * W/14) rows of 3*2*14*14 values; rows are ordered frame pair by frame pair, and inside
a frame pair in 2x2 merge blocks, which is what `rewatch_jax.models.positions` expects.
"""

from __future__ import annotations

import numpy as np

from rewatch_jax.data import chat
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


def encode_tokens(tokenizer, messages: list[dict], frames_shape, vision: VisionConfig) -> chat.Encoded:
  """Token ids and loss mask of a conversation around a video of decoded frames of `frames_shape`
  (T, H, W, ...): its placeholder (chat.VIDEO) expands to the video's merged tokens. A conversation
  that ends before an assistant turn is a prompt: it ends with the generation prompt."""
  prompt = messages[-1]["role"] != "assistant"
  tokens = video_tokens(video_grid(*frames_shape[:3], vision), vision)
  return chat.encode(tokenizer, messages, tokens, add_generation_prompt=prompt)


def encode_pixels(frames: np.ndarray, second_per_grid: float, vision: VisionConfig) -> dict[str, np.ndarray]:
  """A decoded video's pixel rows (raw uint8: the model normalises them on the device, and a
  quarter of the bytes travel), patch grid and seconds per temporal patch."""
  pixels, grid = frames_to_patches(frames, vision, normalize=False)
  return dict(pixel_values=pixels, video_grid_thw=np.asarray(grid, np.int64),
              second_per_grid=np.float32(second_per_grid))


def encode_example(tokenizer, messages: list[dict], video, vision: VisionConfig) -> dict[str, np.ndarray]:
  """The one encoder: a conversation (chat.conversation renders a record in a prompt mode) around a
  decoded video (`rewatch_jax.data.video.Video`) -> the example `batching.Collate` batches.
  Preparing data runs its two halves apart: encode_tokens when the records are prepared (the frames
  go to the video store), encode_pixels when the pipeline reads them back with their frames."""
  enc = encode_tokens(tokenizer, messages, video.frames.shape, vision)
  pixels = encode_pixels(video.frames, video.second_per_grid(vision.temporal_patch_size), vision)
  return dict(input_ids=enc.input_ids, loss_mask=enc.loss_mask, **pixels)
