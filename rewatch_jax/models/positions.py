"""Host-side (numpy) index math for Qwen2.5-VL: vision windows and rotary ids, text M-RoPE ids.

Everything that depends on `grid_thw` is computed here, outside jit, so the compiled model only
sees fixed-shape integer arrays (one program per padded bucket, whatever the video sizes).

Conventions (all per visual item with grid (t, h, w) in patches):
* HF orders the t*h*w patch rows of an item frame by frame, and inside a frame in 2x2 merge
  blocks (block-major). We keep that order for the *input* rows and then permute merge units
  into window order here, exactly like `get_vision_window_index`. The model never permutes.
* Attention segments: window blocks attend within a window, full blocks within one temporal
  patch (one frame pair), as in HF (`cu_seqlens` per t).
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


def window_order(t: int, h: int, w: int, cfg: VisionConfig) -> tuple[np.ndarray, np.ndarray]:
  """Merge-unit permutation into window order, and the window id of each permuted unit."""
  m, ws = cfg.spatial_merge_size, cfg.window_merged
  gh, gw = h // m, w // m
  index = np.arange(t * gh * gw).reshape(t, gh, gw)
  nh, nw = -(-gh // ws), -(-gw // ws)
  padded = np.full((t, nh * ws, nw * ws), -1, dtype=np.int64)
  padded[:, :gh, :gw] = index
  padded = padded.reshape(t, nh, ws, nw, ws).transpose(0, 1, 3, 2, 4).reshape(t * nh * nw, ws * ws)
  window_id = np.broadcast_to(np.arange(padded.shape[0])[:, None], padded.shape)
  keep = padded >= 0
  return padded[keep], window_id[keep]


def vision_layout(grids: np.ndarray, cfg: VisionConfig) -> dict[str, np.ndarray]:
  """Layout of the packed patch rows of several items (one example) in window order.

  Returns
    patch_order: (P,) index into the HF-ordered packed rows, giving the window-ordered rows.
    rotary_ids: (P, 2) patch (row, col) for the 2D vision rotary, window order.
    window_segment, frame_segment: (P,) attention segment ids (>= 0), window order.
    token_slot: (P // merge_unit,) for each merged token in HF (natural) order, its row in the
      window-ordered merged output.
  """
  mu = cfg.merge_unit
  orders, rot, win, frame, slots = [], [], [], [], []
  unit_offset = win_offset = frame_offset = 0
  for t, h, w in np.asarray(grids, dtype=np.int64).reshape(-1, 3):
    units, wid = window_order(t, h, w, cfg)
    rows = (units[:, None] * mu + np.arange(mu)).reshape(-1)
    orders.append(rows + unit_offset * mu)
    rot.append(vision_rotary_ids(t, h, w, cfg.spatial_merge_size)[rows])
    win.append(np.repeat(wid, mu) + win_offset)
    frame.append(rows // (h * w) + frame_offset)
    slots.append(np.argsort(units, kind="stable") + unit_offset)
    n_units = t * h * w // mu
    unit_offset += n_units
    win_offset += int(wid.max()) + 1
    frame_offset += t
  cat = lambda xs, d: np.concatenate(xs).astype(np.int32) if xs else np.zeros(d, np.int32)
  return dict(patch_order=cat(orders, (0,)), rotary_ids=cat(rot, (0, 2)),
              window_segment=cat(win, (0,)), frame_segment=cat(frame, (0,)),
              token_slot=cat(slots, (0,)))


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
