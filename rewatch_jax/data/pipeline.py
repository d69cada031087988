"""Grain pipelines from prepared ReWatch data to fixed-shape batches on the mesh.

SFT mixes the caption / direct-QA / CoT sets by weight (by default one task per batch, so short
QA batches use a short bucket); RL yields prompts with their ground truth and caption (kept on
the host for rewards); evaluation reads a set once, in order. Every process builds the same seeded
global order (shuffle, repeat, mix) and reads only its own slice of it
(`process_index::process_count`), so global batch k holds the same examples whatever the number
of processes (rows interleaved), and every batch is padded to one of a few static buckets (tokens,
patch slots, frame block) so the trainer compiles once per bucket. Iterator state
(`iterator.get_state()`) restores exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import grain
import jax
import numpy as np

from rewatch_jax.data import tfds_rewatch
from rewatch_jax.data.video_store import VideoStore
from rewatch_jax.data.processor import frames_to_patches, video_grid
from rewatch_jax.models import positions as P
from rewatch_jax.models.configs import ModelConfig
from rewatch_jax.models.inputs import ModelInputs, from_hf_inputs
from rewatch_jax.models.sharding import DEFAULT_RULES

# ReWatch's three SFT tasks, then "perception": direct-answer QA on a chosen subset that needs no
# binding (the toy world's backdrop questions), a task of its own so that a run can weight it
# (the demo's first stage trains on it alone; docs/training.md).
TASKS = ("caption", "qa", "cot", "perception")


@dataclasses.dataclass(frozen=True)
class Bucket:
  length: int  # tokens per example
  patches: int  # patch slots per example (a multiple of frame_block)
  frame_block: int  # patch slots per temporal patch (see models.positions.frame_slots)
  loss_tokens: int = 0  # trained tokens per example (0: = length); logits are computed only there


def source(data_dir: str, config: str) -> grain.MapDataset:
  """All prepared shards of one config as one random-access dataset, each example with its video's
  frames, timestamps and seconds per grid from the prepared folder's video store."""
  sources, _ = tfds_rewatch.data_sources(data_dir, config)
  store = VideoStore(data_dir)
  for src in sources:  # a folder copied without its video store fails here, not mid-training
    for i in sorted({0, len(src) // 2, len(src) - 1} if len(src) else set()):
      key = _text(src[i]["video_key"])
      if key not in store:
        raise FileNotFoundError(f"{data_dir}: {config} example {i} needs video {key[:16]}..., which is not in "
                                f"{data_dir}/video_store ({len(store)} videos): copy that folder with the data, "
                                "or prepare again")
  return grain.MapDataset.concatenate([grain.MapDataset.source(s) for s in sources]).map(store.attach)


def _host_slice(ds: grain.MapDataset) -> grain.MapDataset:
  return ds[jax.process_index()::jax.process_count()]


class ToExample(grain.transforms.Map):
  """Decoded TFDS example -> pixel rows, grid and tokens (host numpy; runs in Grain workers).
  `task`: the index in TASKS of the dataset the example is drawn from (for per-task losses; a
  perception example is a QA record, so its kind cannot say)."""

  def __init__(self, cfg: ModelConfig, task: int = 0):
    self.cfg, self.task = cfg, task

  def map(self, ex: dict[str, Any]) -> dict[str, Any]:
    pixels, grid = frames_to_patches(ex["frames"], self.cfg.vision, normalize=False)  # uint8 to the device
    out = dict(input_ids=ex["input_ids"], loss_mask=ex["loss_mask"], pixel_values=pixels,
               video_grid_thw=np.asarray(grid, np.int64), second_per_grid=np.float32(ex["second_per_grid"]),
               task=np.int32(self.task), id=_text(ex["id"]))
    for key in ("answer", "caption", "question_type", "record"):
      if key in ex:
        out[key] = _text(ex[key])
    return out


def _text(x) -> str:
  return x.decode() if isinstance(x, bytes) else str(x)


def _fits(t, h, w, tokens, trained, bucket: Bucket, cfg: ModelConfig):
  """Whether examples of grid (t, h, w) (patches), `tokens` tokens and `trained` trained tokens fit
  `bucket`; elementwise over numpy arrays."""
  return ((tokens <= bucket.length) & (P.frame_slots(h, w, cfg.vision) <= bucket.frame_block)
          & (t * bucket.frame_block <= bucket.patches) & (trained <= (bucket.loss_tokens or bucket.length)))


def fits(ex: dict, bucket: Bucket, cfg: ModelConfig) -> bool:
  t, h, w = ex["video_grid_thw"]
  return bool(_fits(t, h, w, len(ex["input_ids"]), int(ex["loss_mask"].sum()), bucket, cfg))


def unfit_summary(data_dir: str, config: str, cfg: ModelConfig, buckets: Sequence[Bucket]) -> str | None:
  """A line saying how many prepared examples of `config` fit none of `buckets` (training would
  stand them in with zero weight), or None when all fit or the data predates the shape record.
  Read from the shapes `prepare` keeps beside each shard, so it costs no pass over the data."""
  shapes = tfds_rewatch.example_shapes(data_dir, config)
  if shapes is None or not len(shapes):
    return None
  v = cfg.vision
  frames, height, width, tokens, trained = shapes.T.astype(np.int64)
  t, h, w = video_grid(frames, height, width, v)
  ok = np.zeros(len(shapes), bool)
  for b in buckets:
    ok |= _fits(t, h, w, tokens, trained, b, cfg)
  if ok.all():
    return None
  bad = ~ok
  return (f"{config}: {bad.sum()} of {len(shapes)} prepared examples ({bad.mean():.1%}) fit no bucket of "
          f"data.buckets and train as zero-weight stand-ins; the largest needs {tokens[bad].max()} tokens, "
          f"{trained[bad].max()} trained, {P.frame_slots(h[bad], w[bad], v).max()} patch slots a frame pair "
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

  def __call__(self, examples: Sequence[dict]) -> dict[str, Any]:
    fitting = [any(fits(e, b, self.cfg) for b in self.buckets) for e in examples]
    unfit = [e["id"] for e, ok in zip(examples, fitting) if not ok]
    if unfit and self.stand_in and any(fitting):
      shortest = min((e for e, ok in zip(examples, fitting) if ok), key=lambda e: len(e["input_ids"]))
      blank = dict(shortest, loss_mask=np.zeros_like(shortest["loss_mask"]))
      examples = [e if ok else blank for e, ok in zip(examples, fitting)]
    bucket = next((b for b in self.buckets if all(fits(e, b, self.cfg) for e in examples)), None)
    if bucket is None:
      # (or each fits some bucket but none holds them all: buckets that are not nested)
      worst = next((e for e, ok in zip(examples, fitting) if not ok), max(examples, key=lambda e: len(e["input_ids"])))
      raise ValueError(f"example {worst['id']} ({len(worst['input_ids'])} tokens, {int(worst['loss_mask'].sum())} "
                       f"trained, grid {worst['video_grid_thw'].tolist()}) fits no bucket {self.buckets}"
                       + ("" if unfit else " together with the rest of its batch"))
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


@dataclasses.dataclass
class PipelineConfig:
  data_dir: str
  batch_size: int  # per process
  buckets: Sequence[Bucket]
  weights: dict[str, float] = dataclasses.field(default_factory=lambda: {"caption": 1.0, "qa": 1.0, "cot": 1.0})
  seed: int = 0
  workers: int = 0  # Grain multiprocessing workers (0: in-process)
  read_threads: int = 4
  pad_id: int = 151643  # <|endoftext|>
  # SFT: every batch holds one task (mixed by weight batch by batch, so example proportions are
  # unchanged) and so fits that task's smallest bucket: direct-answer QA is far shorter than CoT.
  # False: examples of all tasks share batches (each batch padded to its longest task's bucket).
  batch_by_task: bool = True
  # True: a task is drawn in proportion to weight x its number of examples, so weights of 1 give
  # ReWatch's concatenation (L_caption + L_QA + L_CoT over all the data: every example once an
  # epoch, in expectation). False: in proportion to the weight alone.
  mix_by_size: bool = False


def _finish(ds: grain.MapDataset, pc: PipelineConfig, cfg: ModelConfig, drop_remainder: bool, stand_in: bool):
  """Batch (and prefetch) examples already mapped with ToExample."""
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=pc.read_threads, prefetch_buffer_size=2 * pc.batch_size))
  it = it.batch(pc.batch_size, drop_remainder=drop_remainder, batch_fn=Collate(cfg, pc.buckets, pc.pad_id, stand_in))
  if pc.workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=pc.workers))
  return it


def sft_dataset(pc: PipelineConfig, cfg: ModelConfig, start: int = 0) -> grain.IterDataset:
  """Infinite, shuffled mixture of the SFT tasks with weight > 0, from this process's batch
  `start` on: global batch k is the same for any process count, so a run resumed at step k on
  another number of hosts reads on exactly where it stopped (the trainer's fallback where the
  checkpoint's iterator states were saved by a different process count)."""
  tasks = [t for t in TASKS if pc.weights.get(t, 0) > 0]
  if not tasks:
    raise ValueError(f"no SFT task has a positive weight: {pc.weights}")
  unknown = set(pc.weights) - set(TASKS)
  if unknown:
    raise ValueError(f"unknown SFT tasks in weights: {sorted(unknown)} (known: {TASKS})")
  # (lazy maps: an example is decoded only when this process reads it)
  sources = [source(pc.data_dir, t) for t in tasks]
  parts = [src.shuffle(pc.seed + i).repeat().map(ToExample(cfg, TASKS.index(t)))
           for i, (t, src) in enumerate(zip(tasks, sources))]
  weights = [pc.weights[t] * (len(src) if pc.mix_by_size else 1) for t, src in zip(tasks, sources)]
  if not pc.batch_by_task:
    examples = _host_slice(grain.MapDataset.mix(parts, weights))[start * pc.batch_size:]
    return _finish(examples, pc, cfg, drop_remainder=True, stand_in=True)
  # Each process takes every process_count-th example of each task's stream, so global batch k of
  # a task holds the same examples for any process count; the batch-level mix is deterministic.
  collate = Collate(cfg, pc.buckets, pc.pad_id, stand_in=True)
  batches = [_host_slice(p).batch(pc.batch_size, drop_remainder=True, batch_fn=collate)
             for p in parts]
  it = grain.MapDataset.mix(batches, weights)[start:].to_iter_dataset(
      grain.ReadOptions(num_threads=pc.read_threads, prefetch_buffer_size=pc.read_threads))
  if pc.workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=pc.workers))
  return it


def rl_dataset(pc: PipelineConfig, cfg: ModelConfig) -> grain.IterDataset:
  """Infinite, shuffled prompts (generation prompt, thinking mode) with answers and captions."""
  ds = source(pc.data_dir, "rl").shuffle(pc.seed).repeat()
  return _finish(_host_slice(ds).map(ToExample(cfg)), pc, cfg, drop_remainder=True, stand_in=False)


def eval_dataset(pc: PipelineConfig, cfg: ModelConfig, config: str = "rl",
                 shuffle_seed: int | None = None) -> grain.IterDataset:
  """One pass over this process's slice (in file order, or shuffled by `shuffle_seed`); the last
  batch may be smaller."""
  ds = source(pc.data_dir, config)
  if shuffle_seed is not None:
    ds = ds.shuffle(shuffle_seed)
  return _finish(_host_slice(ds).map(ToExample(cfg)), pc, cfg, drop_remainder=False, stand_in=False)


BATCH_AXES = dict(DEFAULT_RULES)["batch"]  # the mesh axes a batch's rows are split over: data, fsdp


def batch_shardings(mesh: jax.sharding.Mesh, frame_block: int, batch_axes=BATCH_AXES) -> dict[str, Any]:
  """Where each batch array goes: batch dimension over the data axes (positions: dimension 1)."""
  spec = lambda *dims: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*dims))
  b = tuple(a for a in batch_axes if a in mesh.axis_names)
  inputs = ModelInputs(input_ids=spec(b), attention_mask=spec(b), positions=spec(None, b),
                       pixel_values=spec(b), vision_rotary_ids=spec(b), window_segment=spec(b),
                       frame_segment=spec(b), vision_token_index=spec(b), frame_block=frame_block)
  return dict(inputs=inputs, loss_index=spec(b), loss_targets=spec(b), loss_weights=spec(b), task=spec(b))


def to_global(batch: dict[str, Any], mesh: jax.sharding.Mesh) -> tuple[dict[str, Any], dict]:
  """Place this process's batch as the global arrays (jax.make_array_from_process_local_data);
  returns (device batch, host-only metadata)."""
  shardings = batch_shardings(mesh, batch["inputs"].frame_block)
  arrays = {k: batch[k] for k in shardings}
  return jax.tree.map(jax.make_array_from_process_local_data, shardings, arrays), batch["meta"]
