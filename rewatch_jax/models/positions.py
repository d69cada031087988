"""Host-side (numpy) index math for Qwen2.5-VL: vision windows and rotary ids, text M-RoPE ids.

Everything that depends on `grid_thw` is computed here, outside jit, so the compiled model only
sees fixed-shape integer arrays (one program per padded bucket, whatever the video sizes).

Conventions (all per visual item with grid (t, h, w) in patches):
* HF orders the t*h*w patch rows of an item frame by frame, and inside a frame in 2x2 merge
  blocks (block-major). We keep that order for the *input* rows and then permute merge units
  into window order here, exactly like `get_vision_window_index`. The model never permutes.
* Attention segments: window blocks attend within a window, full blocks within one temporal
  patch (one frame pair), as in HF (`cu_seqlens` per t). Windows and frames are padded to fixed
  slot counts so both are exact block-diagonal attention (see `vision_layout`).
"""

from __future__ import annotations

import numpy as np

from rewatch_jax.models.configs import ModelConfig, VisionConfig


def vision_rotary_ids(t: int, h: int, w: int, merge: int) -> np.ndarray:
  """(t*h*w, 2) (row, col) patch coordinates in HF's block-major patch order."""
  hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  shape = (h // merge, merge, w // merge, merge)
  hh = hh.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
  ww = ww.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
  return np.tile(np.stack([hh, ww], -1), (t, 1)).astype(np.int32)


def window_order(t: int, h: int, w: int, cfg: VisionConfig) -> np.ndarray:
  """(t, windows per frame, window_merged^2) merge-unit ids in window order, -1 where a border
  window is padded (the same windows as HF's `get_vision_window_index`, kept at full size)."""
  m, ws = cfg.spatial_merge_size, cfg.window_merged
  gh, gw = h // m, w // m
  nh, nw = -(-gh // ws), -(-gw // ws)
  padded = np.full((t, nh * ws, nw * ws), -1, dtype=np.int64)
  padded[:, :gh, :gw] = np.arange(t * gh * gw).reshape(t, gh, gw)
  return padded.reshape(t, nh, ws, nw, ws).transpose(0, 1, 3, 2, 4).reshape(t, nh * nw, ws * ws)


def frame_slots(h: int, w: int, cfg: VisionConfig) -> int:
  """Patch slots one temporal patch of an (h, w)-patch item takes: whole windows, padded."""
  m, ws = cfg.spatial_merge_size, cfg.window_merged
  return -(-(h // m) // ws) * -(-(w // m) // ws) * ws * ws * cfg.merge_unit


def vision_layout(grids: np.ndarray, cfg: VisionConfig, frame_block: int | None = None) -> dict[str, np.ndarray]:
  """Slot layout of the patch rows of several items (one example), in window order.

  Every window is padded to `window_merged^2` merge units and every temporal patch (frame pair) of
  every item to `frame_block` patch slots, so window attention and full attention are both exact
  block-diagonal attention over fixed-size blocks (no data-dependent shapes, no wasted keys).

  Returns arrays over the S slots (S = frame_block * total temporal patches):
    patch_order: index into the HF-ordered packed patch rows, -1 on padding slots.
    rotary_ids: (S, 2) patch (row, col) for the 2D vision rotary (0 on padding).
    window_segment, frame_segment: attention segment ids, -1 on padding.
    token_slot: for each merged token in HF (natural) order, its row in the merged output.
  """
  mu = cfg.merge_unit
  grids = np.asarray(grids, dtype=np.int64).reshape(-1, 3)
  need = max((frame_slots(h, w, cfg) for _, h, w in grids), default=0)
  frame_block = need if frame_block is None else frame_block
  if frame_block < need or frame_block % (cfg.window_merged**2 * mu):
    raise ValueError(f"frame_block={frame_block} must be a multiple of {cfg.window_merged**2 * mu}"
                     f" and at least {need} (the largest frame's padded windows)")
  block_units = frame_block // mu
  units, wins, frames, rot = [], [], [], []
  unit_offset = win_offset = frame_offset = 0
  for t, h, w in grids:
    order = window_order(t, h, w, cfg)
    n_win = order.shape[1]
    slot_units = np.full((t, block_units), -1, np.int64)
    slot_units[:, :order[0].size] = order.reshape(t, -1)
    slot_wins = np.full((t, block_units), -1, np.int64)
    slot_wins[:, :order[0].size] = np.repeat(np.arange(t * n_win).reshape(t, n_win), order.shape[2], 1)
    valid = slot_units >= 0
    units.append(np.where(valid, slot_units + unit_offset, -1))
    wins.append(np.where(valid, slot_wins + win_offset, -1))
    frames.append(np.where(valid, np.arange(t)[:, None] + frame_offset, -1))
    ids = vision_rotary_ids(t, h, w, cfg.spatial_merge_size).reshape(-1, mu, 2)
    rot.append(np.where(valid[..., None, None], ids[np.maximum(slot_units, 0)], 0))
    unit_offset += t * (h // cfg.spatial_merge_size) * (w // cfg.spatial_merge_size)
    win_offset += t * n_win
    frame_offset += t
  if not units:
    empty = np.zeros((0,), np.int32)
    return dict(patch_order=empty, rotary_ids=np.zeros((0, 2), np.int32), window_segment=empty,
                frame_segment=empty, token_slot=empty, frame_block=frame_block)
  units = np.concatenate([u.reshape(-1) for u in units])
  expand = lambda x: np.repeat(x, mu)
  rows = np.where(expand(units) >= 0, expand(units) * mu + np.tile(np.arange(mu), len(units)), -1)
  token_slot = np.empty(unit_offset, np.int64)
  token_slot[units[units >= 0]] = np.nonzero(units >= 0)[0]
  return dict(
      patch_order=rows.astype(np.int32),
      rotary_ids=np.concatenate([r.reshape(-1, 2) for r in rot]).astype(np.int32),
      window_segment=expand(np.concatenate([x.reshape(-1) for x in wins])).astype(np.int32),
      frame_segment=expand(np.concatenate([x.reshape(-1) for x in frames])).astype(np.int32),
      token_slot=token_slot.astype(np.int32), frame_block=frame_block)


def mrope_positions(
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    vision_items: list[list[tuple[str, tuple[int, int, int], float]]],
    cfg: ModelConfig,
) -> tuple[np.ndarray, np.ndarray]:
  """3D M-RoPE position ids (3, B, L) and the decode offset `delta` (B,) per example.

  `vision_items[b]` lists, in order of appearance, ("image" | "video", grid_thw, second_per_grid).
  Text tokens advance all three ids together. A visual item starting at s gets
  (s + floor(i_t * second_per_grid * tokens_per_second), s + i_h, s + i_w) over its merged grid,
  and the text after it starts at (max id so far) + 1, as in Qwen's original implementation
  (transformers <= 5.2). transformers 5.3+ restarts after a video at s + max(h, w)/merge instead,
  which only differs when the video's temporal extent exceeds its spatial one (docs/model.md).
  Padding positions (mask 0) get id 1 like HF; `delta` = next text id - number of real tokens,
  so decoding token k (0-based over real tokens) uses id k + delta.
  """
  b, length = input_ids.shape
  pos = np.ones((3, b, length), np.int64)
  deltas = np.zeros((b,), np.int64)
  m = cfg.vision.spatial_merge_size
  kind_of = {cfg.image_token_id: "image", cfg.video_token_id: "video"}
  for i in range(b):
    valid = np.nonzero(attention_mask[i])[0]
    ids = input_ids[i, valid]
    out = np.zeros((3, len(ids)), np.int64)
    items = iter(vision_items[i])
    nxt, j = 0, 0
    while j < len(ids):
      kind = kind_of.get(int(ids[j]))
      if kind is None:
        out[:, j] = nxt
        nxt, j = nxt + 1, j + 1
        continue
      item = next(items, None)
      if item is None:
        raise ValueError(f"example {i}: more {kind} tokens than {kind} grids were given")
      ikind, (t, h, w), spg = item
      if ikind != kind:
        raise ValueError(f"example {i}: expected tokens for a {ikind} at position {j}, found {kind} tokens")
      n = t * (h // m) * (w // m)
      span = ids[j:j + n]
      if len(span) < n or np.any(span != ids[j]):
        run = int(np.argmax(np.append(ids[j:] != ids[j], True)))
        raise ValueError(f"example {i}: {kind} grid {(t, h, w)} needs {n} consecutive {kind} tokens,"
                         f" found {run}")
      interval = np.float32(cfg.vision.tokens_per_second) * np.float32(spg) if kind == "video" else np.float32(1)
      tt = (np.arange(t, dtype=np.float32) * interval).astype(np.int64)
      tg, hg, wg = np.meshgrid(tt, np.arange(h // m), np.arange(w // m), indexing="ij")
      out[:, j:j + n] = np.stack([tg.reshape(-1), hg.reshape(-1), wg.reshape(-1)]) + nxt
      nxt = int(out[:, j:j + n].max()) + 1
      j += n
    if next(items, None) is not None:
      raise ValueError(f"example {i}: fewer visual tokens than visual grids were given")
    pos[:, i, valid] = out
    deltas[i] = nxt - len(ids)
  return pos.astype(np.int32), deltas.astype(np.int32)
