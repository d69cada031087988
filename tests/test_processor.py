"""Our numpy processor against Hugging Face's Qwen2-VL processors: the (PIL) image processor bit for
bit, and the video processor where torchvision is installed."""

import numpy as np
import pytest

from rewatch_jax.data.processor import frames_to_patches
from rewatch_jax.models import from_hf_inputs, get_preset
from rewatch_jax.models.inputs import normalize_rows


@pytest.mark.parametrize("h, w", [(56, 84), (112, 56), (28 * 6, 28 * 5)])
def test_image_rows_match_hf(h, w):
  pil = pytest.importorskip("PIL.Image")
  proc_mod = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
  img = (np.random.default_rng(h * w).random((h, w, 3)) * 255).astype(np.uint8)
  proc = proc_mod.Qwen2VLImageProcessorPil(min_pixels=h * w, max_pixels=h * w)
  out = proc(images=[pil.fromarray(img)], return_tensors="np")
  rows, grid = frames_to_patches(img[None], get_preset("tiny").vision)
  assert list(out["image_grid_thw"][0]) == list(grid)
  np.testing.assert_allclose(rows, out["pixel_values"], atol=1e-6)


@pytest.mark.parametrize("t, h, w", [(4, 56, 84), (5, 112, 56), (8, 28 * 3, 28 * 4)])
def test_video_rows_match_hf_video_processor(t, h, w):
  """Frames at the spec's size (our decoder resizes inside ffmpeg, so HF's resize is off) -> the same
  rows (layout, temporal padding, normalisation) and grid as transformers' video processor."""
  pytest.importorskip("torchvision", reason="transformers' Qwen2-VL video processor needs torchvision, "
                      "and PyPI has no CPU torchvision build for torch 2.13 (the image processor tests run)")
  from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
  frames = (np.random.default_rng(t * h * w).random((t, h, w, 3)) * 255).astype(np.uint8)
  out = Qwen2VLVideoProcessor()(videos=[frames], do_resize=False, do_sample_frames=False,
                                cap_pixels_per_frame=False, return_tensors="np")
  rows, grid = frames_to_patches(frames, get_preset("tiny").vision)
  assert list(out["video_grid_thw"][0]) == list(grid)
  np.testing.assert_allclose(rows, out["pixel_values_videos"], atol=1e-5)


def test_video_rows_feed_the_model_layout():
  cfg = get_preset("tiny")
  frames = (np.random.default_rng(0).random((5, 56, 112, 3)) * 255).astype(np.uint8)
  rows, grid = frames_to_patches(frames, cfg.vision)
  assert grid == (3, 4, 8)  # 5 frames padded to 6 by repeating the last
  np.testing.assert_array_equal(rows[-32:], frames_to_patches(frames[[4, 4]], cfg.vision)[0])
  n = int(np.prod(grid)) // 4
  ids = np.array([[cfg.vision_start_token_id] + [cfg.video_token_id] * n + [cfg.vision_end_token_id]])
  inputs = from_hf_inputs(cfg, input_ids=ids, pixel_values_videos=rows, video_grid_thw=np.array([grid]))
  assert inputs.pixel_values.shape == (1, len(rows), cfg.vision.patch_dim)


def test_raw_rows_are_normalised_on_the_device_to_the_same_logits():
  """The Grain pipeline sends uint8 rows (a quarter of the bytes); the vision tower normalises them.
  Same rows as the host normalisation, same logits as HF-style float rows; one dtype per batch."""
  import jax
  from flax import nnx

  from rewatch_jax.models import Qwen25VL
  from rewatch_jax.models.qwen2_5_vl import _forward
  cfg = get_preset("tiny")
  frames = (np.random.default_rng(1).random((4, 56, 84, 3)) * 255).astype(np.uint8)
  rows, grid = frames_to_patches(frames, cfg.vision)
  raw, raw_grid = frames_to_patches(frames, cfg.vision, normalize=False)
  assert raw.dtype == np.uint8 and raw_grid == grid
  np.testing.assert_array_equal(normalize_rows(raw), rows)
  n = int(np.prod(grid)) // 4
  ids = np.array([[cfg.vision_start_token_id] + [cfg.video_token_id] * n + [cfg.vision_end_token_id, 5, 6]])
  model = Qwen25VL(cfg, rngs=nnx.Rngs(0))
  logits = [np.asarray(_forward(model, jax.tree.map(jax.numpy.asarray, from_hf_inputs(
      cfg, input_ids=ids, pixel_values_videos=r, video_grid_thw=np.array([grid]), pad_patches_to=128))))
      for r in (rows, raw)]
  np.testing.assert_allclose(logits[1], logits[0], atol=1e-5)
  with pytest.raises(ValueError, match="both be raw uint8 or both normalised"):
    from_hf_inputs(cfg, input_ids=ids, pixel_values_videos=raw, video_grid_thw=np.array([grid]),
                   pixel_values=np.zeros((0, cfg.vision.patch_dim), np.float32))


def test_bad_frames():
  cfg = get_preset("tiny").vision
  with pytest.raises(ValueError, match="uint8"):
    frames_to_patches(np.zeros((2, 56, 56, 3), np.float32), cfg)
  with pytest.raises(ValueError, match="multiple of 28"):
    frames_to_patches(np.zeros((2, 30, 56, 3), np.uint8), cfg)
  with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
    frames_to_patches(np.zeros((56, 56, 3), np.uint8), cfg)
