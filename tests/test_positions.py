"""Host-side index math against Hugging Face's own functions, over many grid shapes."""

import itertools

import numpy as np
import pytest
from transformers import vision_utils

from rewatch_jax.models import from_hf_inputs
from rewatch_jax.models.positions import mrope_positions, vision_layout
from tests.hf_reference import build_hf_model, make_batch, tiny_config, torch

GRIDS = [(t, h, w) for t, h, w in itertools.product((1, 2, 3), (2, 4, 6, 8, 10, 16), (2, 4, 12, 14))]


@pytest.mark.parametrize("window_size", [56, 112])
def test_vision_layout_matches_hf(window_size):
  cfg = tiny_config().vision.__class__(window_size=window_size)
  rng = np.random.default_rng(0)
  for _ in range(40):
    grids = np.array([GRIDS[i] for i in rng.choice(len(GRIDS), size=rng.integers(1, 4))])
    lay = vision_layout(grids, cfg)
    g = torch.from_numpy(grids)
    win, cu_win = vision_utils.get_vision_window_index(g, 2, window_size, 14)
    cu_full = vision_utils.get_vision_cu_seqlens(g)
    pos = vision_utils.get_vision_position_ids(g, 2).numpy()
    real = lay["patch_order"] >= 0
    order = lay["patch_order"][real]
    np.testing.assert_array_equal(order.reshape(-1, 4)[:, 0] // 4, win.numpy())
    np.testing.assert_array_equal(lay["rotary_ids"][real], pos[order])
    for seg, cu in ((lay["window_segment"], cu_win), (lay["frame_segment"], cu_full)):
      seg = seg[real]  # without padding, segment boundaries are HF's cu_seqlens
      bounds = np.concatenate([[0], np.nonzero(np.diff(seg))[0] + 1, [len(seg)]])
      np.testing.assert_array_equal(bounds, cu.numpy())
    # padding sits only at window/frame ends: every window block and frame block holds one segment
    wb, fb = cfg.window_merged**2 * 4, lay["frame_block"]
    for seg, block in ((lay["window_segment"], wb), (lay["frame_segment"], fb)):
      for chunk in seg.reshape(-1, block):
        assert len(set(chunk[chunk >= 0])) <= 1
    merged_real = real.reshape(-1, 4)[:, 0]
    np.testing.assert_array_equal(np.nonzero(merged_real)[0][np.argsort(win.numpy())], lay["token_slot"])


def _hf_rope_index(model, batch):
  ids = torch.from_numpy(batch["input_ids"])
  types = torch.zeros_like(ids)
  types[ids == model.config.image_token_id] = 1
  types[ids == model.config.video_token_id] = 2
  g = lambda k: torch.from_numpy(batch[k]) if k in batch else None
  pos, delta = model.model.get_rope_index(
      ids, types, image_grid_thw=g("image_grid_thw"), video_grid_thw=g("video_grid_thw"),
      second_per_grid_ts=g("second_per_grid_ts"), attention_mask=torch.from_numpy(batch["attention_mask"]))
  return pos.numpy(), delta.numpy()[:, 0]


@pytest.fixture(scope="module")
def ref():
  return build_hf_model(tiny_config())


def test_mrope_matches_hf_for_images_and_short_videos(ref):
  cfg = tiny_config()
  batch = make_batch(cfg, [
      [3, ("image", (1, 10, 12)), 5, ("image", (1, 4, 4)), 2],
      [2, ("video", (2, 8, 8), 1.0), 4],  # temporal ids 0, 2 < spatial extent 4
      [6],
  ])
  ours = from_hf_inputs(cfg, **batch).positions
  theirs, _ = _hf_rope_index(ref, batch)
  real = batch["attention_mask"].astype(bool)
  np.testing.assert_array_equal(ours[:, real], theirs[:, real])


def test_mrope_text_after_long_video_follows_qwen_original(ref):
  """Qwen's original code (and transformers <= 5.2) continues text at max id + 1 after a video;
  transformers 5.3+ continues at start + max(h, w) / 2. We keep the original (the released
  weights were trained with it). Here: 4 temporal grids at 1.5 s -> ids 0, 3, 6, 9 > spatial 4."""
  cfg = tiny_config()
  batch = make_batch(cfg, [[2, ("video", (4, 4, 8), 1.5), 3]])
  ours, delta = mrope_positions(batch["input_ids"], batch["attention_mask"],
                                [[("video", (4, 4, 8), 1.5)]], cfg)
  start = 3  # 2 text tokens + vision_start
  video = ours[:, 0, start:start + 4 * 2 * 4]
  np.testing.assert_array_equal(np.unique(video[0]), start + np.array([0, 3, 6, 9]))
  np.testing.assert_array_equal(ours[:, 0, start + 32], [start + 10] * 3)  # vision_end
  assert delta[0] == ours[0, 0, -1] + 1 - batch["input_ids"].shape[1]
  theirs, _ = _hf_rope_index(ref, batch)
  np.testing.assert_array_equal(theirs[:, 0, :start + 32], ours[:, 0, :start + 32])
  assert theirs[0, 0, start + 32] == start + 4  # transformers 5.24's restart, differs from ours


def test_fractional_time_interval_floors_per_grid():
  cfg = tiny_config()
  ids = np.array([[cfg.video_token_id] * 4])
  pos, _ = mrope_positions(ids, np.ones_like(ids), [[("video", (4, 2, 2), 0.25)]], cfg)
  np.testing.assert_array_equal(pos[0, 0], [0, 0, 1, 1])  # floor(i * 0.25 * 2)
