"""`ModelInputs`: the fixed-shape arrays the jitted model consumes, built on the host.

`from_hf_inputs` turns what the Hugging Face Qwen2.5-VL processor returns (all images/videos of
the batch packed into one `pixel_values` / `pixel_values_videos` array) into per-example,
window-ordered, padded arrays. The data pipeline builds the same struct from decoded videos.
"""

from __future__ import annotations

import numpy as np
from flax import struct

from rewatch_jax.models.configs import ModelConfig
from rewatch_jax.models.positions import frame_slots, mrope_positions, vision_layout


@struct.dataclass
class ModelInputs:
  input_ids: np.ndarray  # (B, L) int32
  attention_mask: np.ndarray  # (B, L) int32, 1 = real token
  positions: np.ndarray  # (3, B, L) int32 M-RoPE ids
  pixel_values: np.ndarray  # (B, P, patch_dim) window-ordered patch rows, float32 normalised or raw
  # uint8 (normalised by the model); P = 0 for text only
  vision_rotary_ids: np.ndarray  # (B, P, 2)
  window_segment: np.ndarray  # (B, P) int32, -1 on padding
  frame_segment: np.ndarray  # (B, P) int32, -1 on padding
  vision_token_index: np.ndarray  # (B, L) int32: row of the merged vision output, -1 for text
  # Static: patch slots per temporal patch (frame pair); the block size of full attention.
  frame_block: int = struct.field(pytree_node=False, default=0)


# OpenAI CLIP statistics, used by the Qwen2-VL / Qwen2.5-VL image and video processors.
IMAGE_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
IMAGE_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def normalize_rows(rows):
  """uint8 pixel rows (..., patch_dim; channel-major, as processor.frames_to_patches lays them out)
  -> HF's normalised float32 rows. numpy or jax arrays: the vision tower applies it on the device to
  the raw rows the data pipeline sends."""
  per_channel = rows.shape[-1] // 3
  mean, std = np.repeat(IMAGE_MEAN, per_channel), np.repeat(IMAGE_STD, per_channel)
  return (rows.astype(np.float32) / np.float32(255.0) - mean) / std


def _as_np(x, dtype=None):
  if x is None:
    return None
  if hasattr(x, "detach"):  # torch tensor
    x = x.detach().cpu().float().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
  x = np.asarray(x)
  return x.astype(dtype, copy=False) if dtype is not None else x


def _grids(grid, name) -> np.ndarray:
  if grid is None:
    return np.zeros((0, 3), np.int64)
  grid = _as_np(grid, np.int64)
  if grid.ndim != 2 or grid.shape[1] != 3 or np.any(grid <= 0):
    raise ValueError(f"{name} must be a (N, 3) array of positive (t, h, w), got {grid.tolist()}")
  return grid


def from_hf_inputs(
    cfg: ModelConfig,
    input_ids,
    attention_mask=None,
    pixel_values=None,
    image_grid_thw=None,
    pixel_values_videos=None,
    video_grid_thw=None,
    second_per_grid_ts=None,
    pad_patches_to: int | None = None,
    frame_block: int | None = None,
    **unused,
) -> ModelInputs:
  """Host-side preparation of HF-processor-style inputs. Raises ValueError on inconsistent input.

  A bucketed pipeline passes `pad_patches_to` and `frame_block` (patch slots per temporal patch of
  its largest frame, see positions.frame_slots) so every batch of a bucket compiles once.
  """
  unused.pop("mm_token_type_ids", None)  # derived from input_ids here
  if unused:
    raise TypeError(f"unexpected inputs: {sorted(unused)}")
  v = cfg.vision
  ids = _as_np(input_ids, np.int64)
  if ids.ndim != 2:
    raise ValueError(f"input_ids must be (batch, length), got shape {ids.shape}")
  mask = np.ones_like(ids) if attention_mask is None else _as_np(attention_mask, np.int64)
  if mask.shape != ids.shape:
    raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
  if ids.min(initial=0) < 0 or ids.max(initial=0) >= cfg.text.vocab_size:
    raise ValueError(f"input_ids outside [0, vocab_size={cfg.text.vocab_size})")

  # Pixel rows are HF's normalised floats, or raw uint8 (processor.frames_to_patches(normalize=False);
  # the model normalises those on the device), one kind for the whole batch.
  pixel_values, pixel_values_videos = _as_np(pixel_values), _as_np(pixel_values_videos)
  given = [x for x in (pixel_values, pixel_values_videos) if x is not None]
  raw = bool(given) and given[0].dtype == np.uint8
  if any((x.dtype == np.uint8) != raw for x in given):
    raise ValueError(f"pixel_values and pixel_values_videos must both be raw uint8 or both normalised floats, "
                     f"got {[str(x.dtype) for x in given]}")
  dtype = np.uint8 if raw else np.float32
  streams = {}
  for kind, pixels, grid in (("image", pixel_values, image_grid_thw),
                             ("video", pixel_values_videos, video_grid_thw)):
    grid = _grids(grid, f"{kind}_grid_thw")
    pixels = np.zeros((0, v.patch_dim), dtype) if pixels is None else _as_np(pixels, dtype)
    if pixels.ndim != 2 or pixels.shape[1] != v.patch_dim:
      raise ValueError(f"{kind} pixel rows must be (N, {v.patch_dim}) = (N, channels*temporal_patch*"
                       f"patch^2), got {pixels.shape}")
    rows = grid.prod(-1)
    if rows.sum() != pixels.shape[0]:
      raise ValueError(f"{kind}_grid_thw {grid.tolist()} describes {rows.sum()} patch rows but "
                       f"{pixels.shape[0]} were given")
    m = v.spatial_merge_size
    if np.any(grid[:, 1:] % m):
      raise ValueError(f"{kind}_grid_thw {grid.tolist()}: h and w must be multiples of {m}")
    starts = np.concatenate([[0], np.cumsum(rows)])
    streams[kind] = [(tuple(int(x) for x in g), pixels[starts[i]:starts[i + 1]]) for i, g in enumerate(grid)]
  spg = (np.ones(len(streams["video"])) if second_per_grid_ts is None
         else _as_np(second_per_grid_ts, np.float32).reshape(-1))
  if len(spg) != len(streams["video"]):
    raise ValueError(f"second_per_grid_ts has {len(spg)} entries for {len(streams['video'])} videos")

  # Assign visual items to examples in order of appearance (HF packs them in that order).
  kind_of = {cfg.image_token_id: "image", cfg.video_token_id: "video"}
  cursor = {"image": 0, "video": 0}
  items, item_rows = [], []
  for b in range(ids.shape[0]):
    seq = ids[b, mask[b].astype(bool)]
    mine, rows, j = [], [], 0
    while j < len(seq):
      kind = kind_of.get(int(seq[j]))
      if kind is None:
        j += 1
        continue
      if cursor[kind] >= len(streams[kind]):
        raise ValueError(f"more {kind} placeholder tokens in input_ids than the {kind} grids cover: "
                         f"example {b}, token {j} is past the {len(streams[kind])} given "
                         f"({[g for g, _ in streams[kind]]}, {v.merge_unit} patches per token)")
      grid, pix = streams[kind][cursor[kind]]
      n = grid[0] * grid[1] * grid[2] // v.merge_unit
      mine.append((kind, grid, float(spg[cursor[kind]]) if kind == "video" else 1.0))
      rows.append(pix)
      cursor[kind] += 1
      j += n
    items.append(mine)
    item_rows.append(rows)
  for kind, used in cursor.items():
    if used != len(streams[kind]):
      raise ValueError(f"{len(streams[kind])} {kind} grids were given but input_ids hold "
                       f"placeholders for only {used}")

  positions, _ = mrope_positions(ids, mask, items, cfg)
  grids = [np.array([g for _, g, _ in it], np.int64).reshape(-1, 3) for it in items]
  need = max((frame_slots(h, w, v) for g in grids for _, h, w in g), default=0)
  if frame_block is None:
    frame_block = max(need, v.window_merged**2 * v.merge_unit)
  elif frame_block < need:
    raise ValueError(f"an item needs {need} patch slots per frame, more than frame_block={frame_block}")
  layouts = [vision_layout(g, v, frame_block) for g in grids]
  num = max((len(lay["patch_order"]) for lay in layouts), default=0)
  if pad_patches_to is not None:
    if num > pad_patches_to:
      raise ValueError(f"an example needs {num} patch slots, more than the bucket size {pad_patches_to}")
    if pad_patches_to % frame_block:
      raise ValueError(f"pad_patches_to={pad_patches_to} must be a multiple of frame_block={frame_block}")
    num = pad_patches_to
  bsz = ids.shape[0]
  pixels = np.zeros((bsz, num, v.patch_dim), dtype)
  rot = np.zeros((bsz, num, 2), np.int32)
  wseg = np.full((bsz, num), -1, np.int32)
  fseg = np.full((bsz, num), -1, np.int32)
  token_index = np.full(ids.shape, -1, np.int32)
  for b, lay in enumerate(layouts):
    order = lay["patch_order"]
    n = len(order)
    if n:
      packed = np.concatenate(item_rows[b])
      pixels[b, :n][order >= 0] = packed[order[order >= 0]]
    rot[b, :n], wseg[b, :n], fseg[b, :n] = lay["rotary_ids"], lay["window_segment"], lay["frame_segment"]
    vis = np.nonzero(mask[b].astype(bool) & np.isin(ids[b], list(kind_of)))[0]
    token_index[b, vis] = lay["token_slot"]
  return ModelInputs(
      input_ids=ids.astype(np.int32), attention_mask=mask.astype(np.int32), positions=positions,
      pixel_values=pixels, vision_rotary_ids=rot, window_segment=wseg, frame_segment=fseg,
      vision_token_index=token_index, frame_block=frame_block)
