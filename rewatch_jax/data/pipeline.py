"""Grain pipelines from prepared ReWatch data to fixed-shape batches on the mesh.

SFT mixes prepared sets (its tasks: ReWatch's caption / direct-QA / CoT, or any other prepared set)
by weight (by default one task per batch, so short QA batches use a short bucket); RL yields
prompts with their ground truth and caption (kept on the host for rewards); evaluation reads a set
once, in order. Every process builds the same seeded
global order (shuffle, repeat, mix) and reads only its own rows of each global batch, so global
batch k holds the same examples whatever the number of processes (rows interleaved), and every
batch is padded to the one of a few static buckets (tokens, patch slots, frame block) that holds
its whole global batch, chosen from the shapes prepare keeps, so the trainer compiles once per
bucket and all processes agree on it (GlobalBatches). Iterator state (`iterator.get_state()`)
restores exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import grain
import jax
import numpy as np
from jax.experimental import multihost_utils

from rewatch_jax.data import processor, tfds_rewatch
from rewatch_jax.data.batching import TOKENS, Bucket, Collate, needs_of_shapes
from rewatch_jax.data.video_store import VideoStore
from rewatch_jax.models.configs import ModelConfig
from rewatch_jax.models.inputs import ModelInputs
from rewatch_jax.models.sharding import DEFAULT_RULES


def source(data_dir: str, name: str) -> grain.MapDataset:
  """All prepared shards of one prepared set as one random-access dataset, each example with its
  video's frames, timestamps and seconds per grid from the prepared folder's video store."""
  sources, _ = tfds_rewatch.data_sources(data_dir, name)
  store = VideoStore(data_dir)
  for src in sources:  # a folder copied without its video store fails here, not mid-training
    for i in sorted({0, len(src) // 2, len(src) - 1} if len(src) else set()):
      key = _text(src[i]["video_key"])
      if key not in store:
        raise FileNotFoundError(f"{data_dir}: {name} example {i} needs video {key[:16]}..., which is not in "
                                f"{data_dir}/video_store ({len(store)} videos): copy that folder with the data, "
                                "or prepare again")
  return grain.MapDataset.concatenate([grain.MapDataset.source(s) for s in sources]).map(store.attach)


class ToExample(grain.transforms.Map):
  """A prepared example (its tokens) with its video's frames -> the encoder's example
  (processor.encode_pixels; host numpy, runs in Grain workers). `task`: which of the run's tasks it
  is drawn from (for per-task losses: a set prepared under its own name holds records of a kind
  another set holds too)."""

  def __init__(self, cfg: ModelConfig, task: int = 0):
    self.cfg, self.task = cfg, task

  def map(self, ex: dict[str, Any]) -> dict[str, Any]:
    out = dict(input_ids=ex["input_ids"], loss_mask=ex["loss_mask"],
               **processor.encode_pixels(ex["frames"], ex["second_per_grid"], self.cfg.vision),
               task=np.int32(self.task), id=_text(ex["id"]))
    for key in ("answer", "caption", "question_type", "record"):
      if key in ex:
        out[key] = _text(ex[key])
    return out


def _text(x) -> str:
  return x.decode() if isinstance(x, bytes) else str(x)


@dataclasses.dataclass
class PipelineConfig:
  data_dir: str
  batch_size: int  # per process
  buckets: Sequence[Bucket]
  # SFT: prepared set -> weight, in mixing order (each task's seed and stream follow it)
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


class Task(NamedTuple):
  """One prepared set a pipeline reads: its examples, how they become encoder examples, and what
  decides each one's bucket (batching.needs; None for data prepared before shapes were kept)."""
  source: grain.MapDataset
  to_example: ToExample
  needs: np.ndarray | None


class _Tag:
  """index -> (task, index): an order over one task's examples, to mix with others."""

  def __init__(self, task: int):
    self.task = task

  def __call__(self, index):
    return self.task, int(index)


class GlobalBatches(grain.MapDataset):
  """This process's batches of a global order of (task, index) pairs. Global batch j is rows
  [j*G, (j+1)*G) of the order (G = batch_size x process count); this process holds rows
  j*G + i*count + index (i < batch_size), interleaved, so global batch j is the same for any
  process count. It is collated at the bucket that holds the *whole* global batch, chosen from the
  shapes prepare keeps beside the data (tfds_rewatch.example_shapes), so every process picks the
  same one without reading the others' examples and jax.make_array_from_process_local_data gets
  one shape from all of them (picked from this process's examples alone, 4:3 videos on one host
  and 16:9 on another would compile different programs, and the collectives would not meet).
  In training an example that fits no bucket is stood in for (Collate), from this process's
  examples or, where none of them fits, the global batch's shortest that does.
  `pad` (evaluation): the last global batch is filled up with copies of its first example,
  meta["real"] counting this process's real rows (first); without it a partial batch is dropped.
  `tasks` maps a task index to its Task."""

  def __init__(self, order: grain.MapDataset, tasks: dict[int, Task], collate: Collate, batch_size: int,
               pad: bool = False):
    super().__init__(order)
    self.order, self.tasks, self.collate, self.pad = order, tasks, collate, pad
    self.batch_size, self.rank, self.count = batch_size, jax.process_index(), jax.process_count()
    self.global_size = batch_size * self.count
    self.known = all(t.needs is not None for t in tasks.values())  # else (one process) its own examples decide
    n = len(order)
    self._length = -(-n // self.global_size) if pad else n // self.global_size

  def __len__(self):
    return self._length

  def _read(self, pair) -> dict:
    task, index = pair
    return self.tasks[task].to_example.map(self.tasks[task].source[index])

  def __getitem__(self, j):
    if isinstance(j, slice):
      return self.slice(j)
    first = j * self.global_size
    end = min(first + self.global_size, len(self.order))
    mine = range(first + self.rank, first + self.global_size, self.count)
    examples = [self._read(self.order[k if k < end else first]) for k in mine]
    bucket = stand_in = None
    if self.known:
      pairs = [self.order[k] for k in range(first, end)]
      bucket, ok = self.collate.choose(np.stack([self.tasks[t].needs[i] for t, i in pairs]))
      if bucket is None:  # raises, naming the example
        self.collate([self._read(p) for p in pairs])
      local = ok[self.rank::self.count]
      if self.collate.stand_in and ok.any() and not local.any():
        tokens = np.array([self.tasks[t].needs[i, TOKENS] for t, i in pairs])
        stand_in = self._read(pairs[int(np.argmin(np.where(ok, tokens, np.iinfo(np.int64).max)))])
    batch = self.collate(examples, bucket, stand_in)
    batch["meta"]["real"] = sum(k < end for k in mine)
    return batch

  def __str__(self) -> str:
    return f"GlobalBatches(batch_size={self.batch_size}, processes={self.count}, pad={self.pad})"


def _task(pc: PipelineConfig, cfg: ModelConfig, name: str, index: int = 0) -> Task:
  shapes = tfds_rewatch.example_shapes(pc.data_dir, name)
  if shapes is None and jax.process_count() > 1 and len(pc.buckets) > 1:
    raise ValueError(f"{pc.data_dir}: '{name}' was prepared without {tfds_rewatch.SHAPES_FILE} beside it, from "
                     f"which {jax.process_count()} processes agree on each batch's bucket without reading each "
                     "other's examples: prepare it again (or use one bucket)")
  needs = None if shapes is None else needs_of_shapes(shapes, cfg)
  return Task(source(pc.data_dir, name), ToExample(cfg, index), needs)


def _order(n: int, task: int, seed: int | None, repeat: bool) -> grain.MapDataset:
  order = grain.MapDataset.range(n)
  order = order.shuffle(seed) if seed is not None else order
  return (order.repeat() if repeat else order).map(_Tag(task))


def _iterate(ds: grain.MapDataset, pc: PipelineConfig) -> grain.IterDataset:
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=pc.read_threads, prefetch_buffer_size=pc.read_threads))
  if pc.workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=pc.workers))
  return it


def sft_dataset(pc: PipelineConfig, cfg: ModelConfig, start: int = 0) -> grain.IterDataset:
  """Infinite, shuffled mixture of the prepared sets with weight > 0 (tasks, numbered in the order
  of `pc.weights`), from global batch `start` on: global batch k is the same for any process count,
  so a run resumed at step k on another number of hosts reads on exactly where it stopped (the
  trainer's fallback where the checkpoint's iterator states were saved by a different process
  count)."""
  names = [t for t, w in pc.weights.items() if w > 0]
  if not names:
    raise ValueError(f"no SFT task has a positive weight: {pc.weights}")
  # (lazy: an example is decoded only when this process reads it)
  tasks = {i: _task(pc, cfg, name, i) for i, name in enumerate(names)}
  sizes = [len(tasks[i].source) for i in range(len(names))]
  orders = [_order(n, i, pc.seed + i, repeat=True) for i, n in enumerate(sizes)]
  weights = [pc.weights[t] * (n if pc.mix_by_size else 1) for t, n in zip(names, sizes)]
  collate = Collate(cfg, pc.buckets, pc.pad_id, stand_in=True)
  batches = lambda order: GlobalBatches(order, tasks, collate, pc.batch_size)
  if pc.batch_by_task:  # each task's stream is batched, then batches are mixed (deterministically)
    ds = grain.MapDataset.mix([batches(o) for o in orders], weights)
  else:
    ds = batches(grain.MapDataset.mix(orders, weights))
  return _iterate(ds[start:], pc)


def rl_dataset(pc: PipelineConfig, cfg: ModelConfig, name: str = "rl", start: int = 0) -> grain.IterDataset:
  """Infinite, shuffled prompts (generation prompt, thinking mode) with answers and captions, from
  global batch `start` on (as sft_dataset)."""
  tasks = {0: _task(pc, cfg, name)}
  order = _order(len(tasks[0].source), 0, pc.seed, repeat=True)
  return _iterate(GlobalBatches(order, tasks, Collate(cfg, pc.buckets, pc.pad_id), pc.batch_size)[start:], pc)


def eval_dataset(pc: PipelineConfig, cfg: ModelConfig, name: str = "rl",
                 shuffle_seed: int | None = None) -> grain.IterDataset:
  """One pass over the prepared set `name` (in file order, or shuffled by `shuffle_seed`), every
  batch full: the last one padded with copies (meta["real"]: this process's real rows, first)."""
  tasks = {0: _task(pc, cfg, name)}
  order = _order(len(tasks[0].source), 0, shuffle_seed, repeat=False)
  return _iterate(GlobalBatches(order, tasks, Collate(cfg, pc.buckets, pc.pad_id), pc.batch_size, pad=True), pc)


BATCH_AXES = dict(DEFAULT_RULES)["batch"]  # the mesh axes a batch's rows are split over: data, fsdp


def batch_rows(mesh: jax.sharding.Mesh) -> int:
  """How many devices a batch's rows are split over (each holds whole examples)."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.shape)


def batch_shardings(mesh: jax.sharding.Mesh, frame_block: int, batch_axes=BATCH_AXES) -> dict[str, Any]:
  """Where each batch array goes: batch dimension over the data axes (positions: dimension 1)."""
  spec = lambda *dims: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*dims))
  b = tuple(a for a in batch_axes if a in mesh.axis_names)
  inputs = ModelInputs(input_ids=spec(b), attention_mask=spec(b), positions=spec(None, b),
                       pixel_values=spec(b), vision_rotary_ids=spec(b), window_segment=spec(b),
                       frame_segment=spec(b), vision_token_index=spec(b), frame_block=frame_block)
  return dict(inputs=inputs, loss_index=spec(b), loss_targets=spec(b), loss_weights=spec(b), task=spec(b))


def rows_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Rows split over the mesh's batch axes (as a batch's), anything after them whole."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(tuple(a for a in BATCH_AXES
                                                                           if a in mesh.axis_names)))


@functools.lru_cache(maxsize=8)
def _laid_out_by_rows(mesh: jax.sharding.Mesh):
  return jax.jit(lambda xs: xs, out_shardings=rows_sharding(mesh))  # (compiled once a mesh and shape)


def rows_to_host(arrays, mesh: jax.sharding.Mesh) -> list[np.ndarray]:
  """This process's rows of global arrays whose first dimension is batch rows (generated tokens,
  say), on the host: the inverse of placing them with `to_global` / `rows_to_global`."""
  placed = _laid_out_by_rows(mesh)(tuple(arrays))
  return [np.asarray(x) for x in multihost_utils.global_array_to_host_local_array(placed, mesh,
                                                                                  rows_sharding(mesh).spec)]


def rows_to_global(arrays: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """This process's rows of host arrays -> global arrays split over the batch axes."""
  return {k: jax.make_array_from_process_local_data(rows_sharding(mesh), v) for k, v in arrays.items()}


def to_global(batch: dict[str, Any], mesh: jax.sharding.Mesh) -> tuple[dict[str, Any], dict]:
  """Place this process's batch as the global arrays (jax.make_array_from_process_local_data);
  returns (device batch, host-only metadata)."""
  shardings = batch_shardings(mesh, batch["inputs"].frame_block)
  shardings = {k: v for k, v in shardings.items() if k in batch}
  arrays = {k: batch[k] for k in shardings}
  return jax.tree.map(jax.make_array_from_process_local_data, shardings, arrays), batch.get("meta")
