"""Examples -> one padded batch in a static bucket (`Collate`), and which bucket an example needs.

A bucket fixes a batch's shapes (tokens, patch slots, frame block, trained tokens), so each
compiles once; an example's needs (grid, tokens, trained tokens) come from the example, or from the
shapes `prepare` keeps beside the data (tfds_rewatch.example_shapes) without reading it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from rewatch_jax.data import tfds_rewatch
from rewatch_jax.data.processor import video_grid
from rewatch_jax.models.configs import ModelConfig
from rewatch_jax.models.inputs import from_hf_inputs
from rewatch_jax.models.positions import frame_slots

# Columns of needs(): the patch grid (t, h, w) and the tokens and trained tokens of an example.
GRID_T, GRID_H, GRID_W, TOKENS, TRAINED = range(5)


@dataclasses.dataclass(frozen=True)
class Bucket:
  length: int  # tokens per example
  patches: int  # patch slots per example (a multiple of frame_block)
  frame_block: int  # patch slots per temporal patch (see models.positions.frame_slots)
  loss_tokens: int = 0  # trained tokens per example (0: = length); logits are computed only there


def _fits(t, h, w, tokens, trained, bucket: Bucket, cfg: ModelConfig):
  """Whether examples of grid (t, h, w) (patches), `tokens` tokens and `trained` trained tokens fit
  `bucket`; elementwise over numpy arrays."""
  return ((tokens <= bucket.length) & (frame_slots(h, w, cfg.vision) <= bucket.frame_block)
          & (t * bucket.frame_block <= bucket.patches) & (trained <= (bucket.loss_tokens or bucket.length)))


def needs(ex: dict) -> np.ndarray:
  """What decides an example's bucket: grid t, h, w (patches), tokens, trained tokens."""
  return np.array([*ex["video_grid_thw"], len(ex["input_ids"]), int(ex["loss_mask"].sum())], np.int64)


def needs_of_shapes(shapes: np.ndarray, cfg: ModelConfig) -> np.ndarray:
  """needs() of every example from the shapes prepare keeps (frames T, H, W, tokens, trained)."""
  frames, height, width, tokens, trained = shapes.T.astype(np.int64)
  return np.stack([*video_grid(frames, height, width, cfg.vision), tokens, trained], axis=1)


def fits(ex: dict, bucket: Bucket, cfg: ModelConfig) -> bool:
  return bool(_fits(*needs(ex), bucket, cfg))


def unfit_summary(data_dir: str, name: str, cfg: ModelConfig, buckets: Sequence[Bucket],
                  fate: str = "train as zero-weight stand-ins") -> str | None:
  """A line saying how many examples of the prepared set `name` fit none of `buckets` (and their
  `fate`), or None when all fit or the data predates the shape record. Read from the shapes
  `prepare` keeps beside each shard, so it costs no pass over the data."""
  shapes = tfds_rewatch.example_shapes(data_dir, name)
  if shapes is None or not len(shapes):
    return None
  t, h, w, tokens, trained = needs_of_shapes(shapes, cfg).T
  ok = np.zeros(len(shapes), bool)
  for b in buckets:
    ok |= _fits(t, h, w, tokens, trained, b, cfg)
  if ok.all():
    return None
  bad = ~ok
  return (f"{name}: {bad.sum()} of {len(shapes)} prepared examples ({bad.mean():.1%}) fit no bucket "
          f"and {fate}; the largest needs {tokens[bad].max()} tokens, "
          f"{trained[bad].max()} trained, {frame_slots(h[bad], w[bad], cfg.vision).max()} patch slots a frame pair "
          f"and {t[bad].max()} frame pairs")


class Collate:
  """A list of examples -> one padded batch in the smallest bucket that fits them all.
  Tensors go to the device; strings (ids, answers, captions) stay on the host under "meta".

  `stand_in`: (training) an example that fits no bucket (too many tokens, trained tokens or frame
  slots) is replaced by a copy of the shortest one that does, with nothing trained, and its id is
  listed under meta["unfit"]; the batch keeps its shape, the run goes on (and a resumed run does
  not stop at the same batch again). Without it (evaluation), or when nothing in the batch fits,
  the batch raises."""

  def __init__(self, cfg: ModelConfig, buckets: Sequence[Bucket], pad_id: int, stand_in: bool = False):
    self.cfg, self.buckets, self.pad_id = cfg, sorted(buckets, key=lambda b: (b.length, b.patches)), pad_id
    self.stand_in = stand_in

  def choose(self, rows: np.ndarray) -> tuple[Bucket | None, np.ndarray]:
    """For examples with `rows` of needs(): the smallest bucket that holds them all (with stand-ins:
    all that fit some bucket), or None; and which of them fit some bucket."""
    fit = np.stack([_fits(*rows.T, b, self.cfg) for b in self.buckets])
    ok = fit.any(0)
    held = ok if self.stand_in and ok.any() else np.ones_like(ok)
    return next((b for b, f in zip(self.buckets, fit) if f[held].all()), None), ok

  def __call__(self, examples: Sequence[dict], bucket: Bucket | None = None,
               stand_in: dict | None = None) -> dict[str, Any]:
    """`bucket`: the one the whole global batch takes (GlobalBatches; default: the smallest that
    holds these examples); `stand_in`: the example to copy when none of these fits."""
    own, ok = self.choose(np.stack([needs(e) for e in examples]))
    bucket = bucket or own
    unfit = [e["id"] for e, fine in zip(examples, ok) if not fine]
    given, replaced = examples, False
    if unfit and self.stand_in:
      fitting = [e for e, fine in zip(examples, ok) if fine] or ([stand_in] if stand_in is not None else [])
      if fitting:
        shortest = min(fitting, key=lambda e: len(e["input_ids"]))
        blank = dict(shortest, loss_mask=np.zeros_like(shortest["loss_mask"]))
        examples, replaced = [e if fine else blank for e, fine in zip(examples, ok)], True
    if bucket is None or (unfit and not replaced):
      # (or each fits some bucket but none holds them all: buckets that are not nested)
      worst = next((e for e, fine in zip(given, ok) if not fine), max(given, key=lambda e: len(e["input_ids"])))
      raise ValueError(f"example {worst['id']} ({len(worst['input_ids'])} tokens, {int(worst['loss_mask'].sum())} "
                       f"trained, grid {worst['video_grid_thw'].tolist()}) fits no bucket {self.buckets}"
                       + ("" if unfit else " together with the rest of its batch"))
    wrong = [e["id"] for e in examples if not fits(e, bucket, self.cfg)]
    if wrong:
      raise ValueError(f"examples {wrong[:4]} do not fit {bucket}, which the shapes kept beside the data "
                       f"({tfds_rewatch.SHAPES_FILE}) chose for their global batch: those no longer match the "
                       "data; prepare it again")
    n = len(examples)
    ids = np.full((n, bucket.length), self.pad_id, np.int64)
    attention = np.zeros((n, bucket.length), np.int64)
    mask = np.zeros((n, bucket.length), bool)
    for i, ex in enumerate(examples):
      k = len(ex["input_ids"])
      ids[i, :k], attention[i, :k], mask[i, :k] = ex["input_ids"], 1, ex["loss_mask"]
    inputs = from_hf_inputs(
        self.cfg, input_ids=ids, attention_mask=attention,
        pixel_values_videos=np.concatenate([e["pixel_values"] for e in examples]),
        video_grid_thw=np.stack([e["video_grid_thw"] for e in examples]),
        second_per_grid_ts=np.array([e["second_per_grid"] for e in examples], np.float32),
        pad_patches_to=bucket.patches, frame_block=bucket.frame_block)
    # Next-token loss only where the target is a trained token: position j predicts token j + 1.
    k = bucket.loss_tokens or bucket.length
    loss_index = np.zeros((n, k), np.int32)
    loss_targets = np.zeros((n, k), np.int32)
    loss_weights = np.zeros((n, k), np.float32)
    for i in range(n):
      pos = np.nonzero(mask[i, 1:])[0]
      loss_index[i, :len(pos)], loss_targets[i, :len(pos)], loss_weights[i, :len(pos)] = pos, ids[i, pos + 1], 1
    meta = {k: [e[k] for e in examples] for k in ("id", "answer", "caption", "question_type", "record")
            if k in examples[0]}
    meta["unfit"] = unfit
    return dict(inputs=inputs, loss_index=loss_index, loss_targets=loss_targets, loss_weights=loss_weights,
                task=np.stack([e["task"] for e in examples]), meta=meta)
