"""Grain pipelines from prepared ReWatch data to fixed-shape batches on the mesh.

SFT mixes the caption / direct-QA / CoT sets by weight (by default one task per batch, so short
QA batches use a short bucket); RL yields prompts with their ground truth and caption (kept on
the host for rewards); evaluation reads a set once, in order. Every process builds the same seeded
global order (shuffle, repeat, mix) and reads only its own rows of each global batch, so global
batch k holds the same examples whatever the number of processes (rows interleaved), and every
batch is padded to the one of a few static buckets (tokens, patch slots, frame block) that holds
its whole global batch, chosen from the shapes prepare keeps, so the trainer compiles once per
bucket and all processes agree on it (GlobalBatches). Iterator state (`iterator.get_state()`)
restores exactly.
"""

from __future__ import annotations

import dataclasses
import math
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


def needs(ex: dict) -> np.ndarray:
  """What decides an example's bucket: grid t, h, w (patches), tokens, trained tokens."""
  return np.array([*ex["video_grid_thw"], len(ex["input_ids"]), int(ex["loss_mask"].sum())], np.int64)


def needs_of_shapes(shapes: np.ndarray, cfg: ModelConfig) -> np.ndarray:
  """needs() of every example from the shapes prepare keeps (frames T, H, W, tokens, trained)."""
  frames, height, width, tokens, trained = shapes.T.astype(np.int64)
  return np.stack([*video_grid(frames, height, width, cfg.vision), tokens, trained], axis=1)


def fits(ex: dict, bucket: Bucket, cfg: ModelConfig) -> bool:
  return bool(_fits(*needs(ex), bucket, cfg))


def unfit_summary(data_dir: str, config: str, cfg: ModelConfig, buckets: Sequence[Bucket],
                  fate: str = "train as zero-weight stand-ins") -> str | None:
  """A line saying how many prepared examples of `config` fit none of `buckets` (and their `fate`),
  or None when all fit or the data predates the shape record. Read from the shapes `prepare`
  keeps beside each shard, so it costs no pass over the data."""
  shapes = tfds_rewatch.example_shapes(data_dir, config)
  if shapes is None or not len(shapes):
    return None
  t, h, w, tokens, trained = needs_of_shapes(shapes, cfg).T
  ok = np.zeros(len(shapes), bool)
  for b in buckets:
    ok |= _fits(t, h, w, tokens, trained, b, cfg)
  if ok.all():
    return None
  bad = ~ok
  return (f"{config}: {bad.sum()} of {len(shapes)} prepared examples ({bad.mean():.1%}) fit no bucket "
          f"and {fate}; the largest needs {tokens[bad].max()} tokens, "
          f"{trained[bad].max()} trained, {P.frame_slots(h[bad], w[bad], cfg.vision).max()} patch slots a frame pair "
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
  `tasks` maps a task index to (source, ToExample, needs of its examples or None)."""

  def __init__(self, order: grain.MapDataset, tasks: dict[int, tuple], collate: Collate, batch_size: int,
               pad: bool = False):
    super().__init__(order)
    self.order, self.tasks, self.collate, self.pad = order, tasks, collate, pad
    self.batch_size, self.rank, self.count = batch_size, jax.process_index(), jax.process_count()
    self.global_size = batch_size * self.count
    self.known = all(t[2] is not None for t in tasks.values())  # else (one process) its own examples decide
    n = len(order)
    self._length = -(-n // self.global_size) if pad else n // self.global_size

  def __len__(self):
    return self._length

  def _read(self, pair) -> dict:
    task, index = pair
    src, to_example, _ = self.tasks[task]
    return to_example.map(src[index])

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
      bucket, ok = self.collate.choose(np.stack([self.tasks[t][2][i] for t, i in pairs]))
      if bucket is None:  # raises, naming the example
        self.collate([self._read(p) for p in pairs])
      local = ok[self.rank::self.count]
      if self.collate.stand_in and ok.any() and not local.any():
        tokens = np.array([self.tasks[t][2][i][3] for t, i in pairs])
        stand_in = self._read(pairs[int(np.argmin(np.where(ok, tokens, np.iinfo(np.int64).max)))])
    batch = self.collate(examples, bucket, stand_in)
    batch["meta"]["real"] = sum(k < end for k in mine)
    return batch

  def __str__(self) -> str:
    return f"GlobalBatches(batch_size={self.batch_size}, processes={self.count}, pad={self.pad})"


def _task(pc: PipelineConfig, cfg: ModelConfig, config: str, task: int = 0) -> tuple:
  shapes = tfds_rewatch.example_shapes(pc.data_dir, config)
  if shapes is None and jax.process_count() > 1 and len(pc.buckets) > 1:
    raise ValueError(f"{pc.data_dir}: '{config}' was prepared without {tfds_rewatch.SHAPES_FILE} beside it, from "
                     f"which {jax.process_count()} processes agree on each batch's bucket without reading each "
                     "other's examples: prepare it again (or use one bucket)")
  return source(pc.data_dir, config), ToExample(cfg, task), None if shapes is None else needs_of_shapes(shapes, cfg)


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
  """Infinite, shuffled mixture of the SFT tasks with weight > 0, from global batch `start` on:
  global batch k is the same for any process count, so a run resumed at step k on another number
  of hosts reads on exactly where it stopped (the trainer's fallback where the checkpoint's
  iterator states were saved by a different process count)."""
  names = [t for t in TASKS if pc.weights.get(t, 0) > 0]
  if not names:
    raise ValueError(f"no SFT task has a positive weight: {pc.weights}")
  unknown = set(pc.weights) - set(TASKS)
  if unknown:
    raise ValueError(f"unknown SFT tasks in weights: {sorted(unknown)} (known: {TASKS})")
  # (lazy: an example is decoded only when this process reads it)
  ids = [TASKS.index(t) for t in names]
  tasks = {i: _task(pc, cfg, t, i) for i, t in zip(ids, names)}
  sizes = [len(tasks[i][0]) for i in ids]
  orders = [_order(n, i, pc.seed + k, repeat=True) for k, (i, n) in enumerate(zip(ids, sizes))]
  weights = [pc.weights[t] * (n if pc.mix_by_size else 1) for t, n in zip(names, sizes)]
  collate = Collate(cfg, pc.buckets, pc.pad_id, stand_in=True)
  batches = lambda order: GlobalBatches(order, tasks, collate, pc.batch_size)
  if pc.batch_by_task:  # each task's stream is batched, then batches are mixed (deterministically)
    ds = grain.MapDataset.mix([batches(o) for o in orders], weights)
  else:
    ds = batches(grain.MapDataset.mix(orders, weights))
  return _iterate(ds[start:], pc)


def rl_dataset(pc: PipelineConfig, cfg: ModelConfig) -> grain.IterDataset:
  """Infinite, shuffled prompts (generation prompt, thinking mode) with answers and captions."""
  tasks = {0: _task(pc, cfg, "rl")}
  order = _order(len(tasks[0][0]), 0, pc.seed, repeat=True)
  return _iterate(GlobalBatches(order, tasks, Collate(cfg, pc.buckets, pc.pad_id), pc.batch_size), pc)


def eval_dataset(pc: PipelineConfig, cfg: ModelConfig, config: str = "rl",
                 shuffle_seed: int | None = None) -> grain.IterDataset:
  """One pass over the set (in file order, or shuffled by `shuffle_seed`), every batch full: the
  last one padded with copies (meta["real"]: this process's real rows, first)."""
  tasks = {0: _task(pc, cfg, config)}
  order = _order(len(tasks[0][0]), 0, shuffle_seed, repeat=False)
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


def to_global(batch: dict[str, Any], mesh: jax.sharding.Mesh) -> tuple[dict[str, Any], dict]:
  """Place this process's batch as the global arrays (jax.make_array_from_process_local_data);
  returns (device batch, host-only metadata)."""
  shardings = batch_shardings(mesh, batch["inputs"].frame_block)
  shardings = {k: v for k, v in shardings.items() if k in batch}
  arrays = {k: batch[k] for k in shardings}
  return jax.tree.map(jax.make_array_from_process_local_data, shardings, arrays), batch.get("meta")
