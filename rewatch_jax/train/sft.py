"""Multi-task SFT (caption + direct-answer QA + CoT) on a device mesh.

Reads top to bottom like the algorithm: mesh -> model -> optimizer -> data -> restore -> loop.
One jitted step per bucket with the train state donated; gradient accumulation is exact because
the loss is summed over trained tokens and divided once by their total count; a step whose loss
or gradient is not finite is not applied (and the run stops after `max_bad_steps` in a row).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rewatch_jax import checkpoint as ckpt
from rewatch_jax.data import pipeline, tfds_rewatch
from rewatch_jax.models import ModelConfig, ModelInputs, Qwen25VL
from rewatch_jax.models.configs import RUNTIME_FIELDS
from rewatch_jax.models.sharding import axis_rules, param_shardings
from rewatch_jax.train import metrics
from rewatch_jax.mesh import make_mesh

TASK_NAMES = pipeline.TASKS


class NonFiniteLossError(RuntimeError):
  """Too many consecutive steps with a non-finite loss or gradient."""


# ---- model and optimizer ----

def build_model(config, mesh) -> Qwen25VL:
  """From a Hugging Face folder, from a rewatch-jax checkpoint, or randomly initialised."""
  from rewatch_jax import hf
  runtime = {k: config.model[k] for k in RUNTIME_FIELDS}
  if config.init_from_hf:
    return hf.load_pretrained(config.init_from_hf, mesh=mesh, **runtime)
  if config.init_from_checkpoint:
    return ckpt.load_model(config.init_from_checkpoint, mesh=mesh, **runtime)
  model = Qwen25VL(ModelConfig.from_dict(config.model.to_dict()), rngs=nnx.Rngs(config.seed))
  if config.zero_init_vision_output:
    # The merger's last layer starts at zero: the frames add nothing (no noise to learn to ignore)
    # until gradients grow them in the directions the loss wants (the ControlNet/Flamingo trick).
    fc2 = model.visual.merger.fc2
    fc2.kernel.value, fc2.bias.value = jnp.zeros_like(fc2.kernel.value), jnp.zeros_like(fc2.bias.value)
  graphdef, state = nnx.split(model)
  return nnx.merge(graphdef, jax.device_put(state, param_shardings(state, mesh)))


def make_optimizer(oc, total_steps: int, params) -> optax.GradientTransformation:
  if oc.schedule == "cosine":
    lr = optax.warmup_cosine_decay_schedule(0.0, oc.learning_rate, oc.warmup_steps, max(total_steps, oc.warmup_steps + 1),
                                            end_value=oc.learning_rate * oc.final_lr_fraction)
  elif oc.schedule == "constant":
    lr = optax.join_schedules([optax.linear_schedule(0.0, oc.learning_rate, oc.warmup_steps),
                               optax.constant_schedule(oc.learning_rate)], [oc.warmup_steps])
  else:
    raise ValueError(f"optimizer.schedule must be cosine or constant, got {oc.schedule!r}")
  adamw = lambda scale: optax.adamw(lambda step: lr(step) * scale, b1=oc.b1, b2=oc.b2, eps=oc.eps,
                                    weight_decay=oc.weight_decay)
  scale = 0.0 if oc.freeze_vision else oc.vision_lr_scale
  if scale == 1.0:
    return optax.chain(optax.clip_by_global_norm(oc.grad_clip), adamw(1.0)), lr
  # The vision tower and merger ("visual") get their own learning rate, or none (frozen). Clipping
  # is over the parameters that train.
  labels = jax.tree_util.tree_map_with_path(
      lambda path, _: "visual" if str(getattr(path[0], "key", path[0])) == "visual" else "text", params)
  clipped = lambda t: optax.chain(optax.clip_by_global_norm(oc.grad_clip), t)
  if scale == 0.0:
    return optax.multi_transform({"text": clipped(adamw(1.0)), "visual": optax.set_to_zero()}, labels), lr
  return clipped(optax.multi_transform({"text": adamw(1.0), "visual": adamw(scale)}, labels)), lr


def _low_precision(params) -> list:
  return [p for p in jax.tree.leaves(params) if jnp.issubdtype(p.dtype, jnp.floating) and jnp.finfo(p.dtype).bits < 32]


def frozen_fraction(params, learning_rate: float) -> float:
  """The fraction of all parameter elements that a step of `learning_rate` cannot move: in a
  16-bit dtype, half their spacing is larger (round to nearest). AdamW moves an element by at most
  about the learning rate, so those never train: at ReWatch's 1e-6, ~98% of a bf16 model's weights
  (|w| ~ 0.02 has spacing 1.2e-4). float32 elements always count as movable."""
  low = _low_precision(params)
  if not low:
    return 0.0
  stuck = lambda p: jnp.sum((jnp.nextafter(p, jnp.array(jnp.inf, p.dtype)) - p).astype(jnp.float32) > 2 * learning_rate)
  frozen = jax.jit(lambda ps: sum(stuck(p) for p in ps))(low)
  return int(frozen) / sum(p.size for p in jax.tree.leaves(params))


def _warn_if_updates_round_away(params, learning_rate: float) -> None:
  frozen = frozen_fraction(params, learning_rate)
  if frozen > 0.1:
    dtype = _low_precision(params)[0].dtype
    print(f"warning: {frozen:.0%} of the parameters ({dtype}) cannot change by a step of learning_rate="
          f"{learning_rate:g} (it is below half their spacing: AdamW's updates round away). Keep float32 master "
          "weights, --config.model.param_dtype=float32; the model still computes in model.dtype")


# ---- loss ----

def loss_sums(model: Qwen25VL, batch: dict[str, Any], num_tasks: int):
  """Summed token NLL and token count (total and per task): (sum, count, task_sums, task_counts).
  Logits are computed only at the trained positions (`loss_index`)."""
  hidden = model(batch["inputs"], return_hidden=True)
  h = jnp.take_along_axis(hidden, batch["loss_index"][..., None], axis=1)
  logits = model.text.logits(h)  # fp32
  nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, batch["loss_targets"][..., None], -1)[..., 0]
  w = batch["loss_weights"]
  per_example = jnp.sum(nll * w, -1), jnp.sum(w, -1)
  onehot = jax.nn.one_hot(batch["task"], num_tasks)
  return per_example[0].sum(), per_example[1].sum(), per_example[0] @ onehot, per_example[1] @ onehot


def _micro_batches(batch: dict[str, Any], accum: int) -> dict[str, Any]:
  """(B, ...) -> (accum, B / accum, ...), taking rows with stride `accum` so every device keeps
  its own rows (the batch dimension is sharded in contiguous blocks)."""
  def split(x, axis=0):
    x = jnp.moveaxis(x, axis, 0)
    x = x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)
    return jnp.moveaxis(x, 1, axis + 1)
  inputs: ModelInputs = batch["inputs"]
  fields = {f.name: split(getattr(inputs, f.name)) for f in dataclasses.fields(inputs)
            if f.name not in ("positions", "frame_block")}
  fields["positions"] = split(inputs.positions, axis=1)
  out = {k: split(v) for k, v in batch.items() if k != "inputs"}
  out["inputs"] = inputs.replace(**fields)
  return out


def make_train_step(graphdef, tx, accum: int, num_tasks: int):
  def step(state, batch):
    params = state["params"]

    def loss_and_grad(mb):
      def f(p):
        s, n, ts, tn = loss_sums(nnx.merge(graphdef, p), mb, num_tasks)
        return s, (n, ts, tn)
      (s, (n, ts, tn)), g = jax.value_and_grad(f, has_aux=True)(params)
      return g, (s, n, ts, tn)

    def micro(carry, mb):  # gradients summed in fp32 whatever the parameter dtype
      g, sums = loss_and_grad(mb)
      grads = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), carry[0], g)
      return (grads, jax.tree.map(jnp.add, carry[1], sums)), None

    if accum == 1:
      grads, (s, n, ts, tn) = loss_and_grad(batch)
    else:
      zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
      init = (zeros, (jnp.zeros(()), jnp.zeros(()), jnp.zeros(num_tasks), jnp.zeros(num_tasks)))
      (grads, (s, n, ts, tn)), _ = jax.lax.scan(micro, init, _micro_batches(batch, accum))
    denom = jnp.maximum(n, 1.0)
    # Back to each parameter's dtype: the optimizer moments keep it (bf16 params, bf16 moments),
    # so the state's types never change between steps (a change would retrace and recompile).
    grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grads, params)
    grad_norm = optax.tree.norm(jax.tree.map(lambda g: g.astype(jnp.float32), grads))
    ok = jnp.isfinite(s) & jnp.isfinite(grad_norm)
    updates, new_opt = tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    streak = jnp.where(ok, jnp.zeros_like(state["bad_streak"]), state["bad_streak"] + 1)  # keep dtypes: no retrace
    new_state = dict(params=keep(new_params, params), opt_state=keep(new_opt, state["opt_state"]),
                     step=state["step"] + 1, rng=state["rng"], bad_streak=streak,
                     max_bad_streak=jnp.maximum(state["max_bad_streak"], streak))
    metrics = dict(loss=s / denom, tokens=n, input_tokens=jnp.sum(batch["inputs"].attention_mask),
                   grad_norm=grad_norm, applied=ok.astype(jnp.float32),
                   task_loss=ts / jnp.maximum(tn, 1.0), task_tokens=tn)
    return new_state, metrics
  return step


def init_state(params, tx, mesh, seed: int, device_bytes: int | None = None):
  """The train state (params, optimizer moments sharded like their params, replicated scalars)
  and its shardings, which the jitted step keeps so it compiles once per bucket. Raises
  MemoryError (check_state_fits) before allocating the moments where they cannot fit."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  params = jax.device_put(params, param_shardings(params, mesh))  # whatever device they came from
  # The moments' shardings are given, not left to XLA: jit(tx.init) alone makes them replicated
  # (zeros carry no sharding), i.e. every device would hold both full moments (66 GB at 7B).
  abstract = jax.eval_shape(tx.init, params)
  moments = optax.tree_map_params(tx, lambda _, s: s, abstract, jax.tree.map(lambda x: x.sharding, params),
                                  transform_non_params=lambda _: replicated)
  check_state_fits((params, jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                         abstract, moments)), device_bytes)
  opt_state = jax.jit(tx.init, out_shardings=moments)(params)
  scalars = jax.device_put(dict(step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(seed)),
                                bad_streak=jnp.zeros((), jnp.int32), max_bad_streak=jnp.zeros((), jnp.int32)),
                           replicated)
  state = dict(params=params, opt_state=opt_state, **scalars)
  return state, jax.tree.map(lambda x: x.sharding, state)


def state_bytes_per_device(state) -> int:
  """Bytes of the train state (parameters, optimizer moments, scalars; arrays or sharded
  ShapeDtypeStructs) each device holds (FSDP splits them evenly; replicated arrays count whole)."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(state))


def check_state_fits(state, device_bytes: int | None) -> str:
  """A line saying how much of a device the state takes; raises where the state alone exceeds the
  device's memory (activations come on top of it)."""
  need = state_bytes_per_device(state)
  line = f"train state: {need / 2**30:.2f} GiB per device"
  if device_bytes:
    line += f" of {device_bytes / 2**30:.1f} GiB"
    if need > device_bytes:
      raise MemoryError(f"{line}: the parameters and AdamW moments alone do not fit; shard them over more "
                        "chips (config.mesh.fsdp), use a larger slice, or freeze the vision tower")
  return line


def jit_train_step(graphdef, tx, micro_batches: int, state_shardings):
  return jax.jit(make_train_step(graphdef, tx, micro_batches, len(TASK_NAMES)),
                 donate_argnums=0, out_shardings=(state_shardings, None))


# ---- the run ----

@dataclasses.dataclass
class Result:
  step: int
  losses: list[float]  # per step, for tests and reports
  final_loss: float


def train(config, workdir: str, model: Qwen25VL | None = None, name: str = "sft") -> tuple[Qwen25VL, Result]:
  mesh = make_mesh(dict(config.mesh))
  dc = config.data
  global_batch = dc.batch_size
  if global_batch % jax.process_count() or global_batch % config.micro_batches:
    raise ValueError(f"data.batch_size {global_batch} must divide by processes ({jax.process_count()}) "
                     f"and micro_batches ({config.micro_batches})")
  rows = pipeline.batch_rows(mesh)
  if global_batch % rows:  # checked before minutes of weight loading, not at the first step
    raise ValueError(f"data.batch_size {global_batch} does not split over the mesh's batch axes (data x fsdp = "
                     f"{rows} devices, each holding whole examples): use a multiple of {rows}, or shard over fewer "
                     "chips with fsdp and the rest with --config.mesh.tensor")
  model = model if model is not None else build_model(config, mesh)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx, lr_schedule = make_optimizer(config.optimizer, config.total_steps, params)
  _warn_if_updates_round_away(params, config.optimizer.learning_rate)
  device_bytes = (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")
  state, state_shardings = init_state(params, tx, mesh, config.seed, device_bytes)
  if jax.process_index() == 0:
    print(check_state_fits(state, device_bytes))

  buckets = [pipeline.Bucket(**dict(b)) for b in dc.buckets]
  pc = pipeline.PipelineConfig(data_dir=dc.dir, batch_size=global_batch // jax.process_count(), buckets=buckets,
                               weights=dict(dc.weights), seed=config.seed, workers=dc.workers,
                               pad_id=dc.pad_id, batch_by_task=dc.batch_by_task, mix_by_size=dc.mix_by_size)
  if jax.process_index() == 0:
    for task in (t for t, w in pc.weights.items() if w > 0):
      unfit = pipeline.unfit_summary(dc.dir, task, model.config, buckets)
      if unfit:  # said at start-up, not discovered batch by batch hours in
        print(f"warning: {unfit}: add a larger bucket to data.buckets to keep them")
  data = iter(pipeline.sft_dataset(pc, model.config))

  spec = tfds_rewatch.video_spec_of(dc.dir, [t for t, w in pc.weights.items() if w > 0])
  manager = ckpt.TrainCheckpointer(f"{workdir}/checkpoints", model.config, keep=config.keep_checkpoints, video_spec=spec)
  restored, iterator_restored = manager.restore_latest(state, data) or (None, True)
  if restored is not None:
    state = jax.device_put(restored, state_shardings)
  start = int(state["step"])
  if not iterator_restored:
    print(f"resuming at step {start} on {jax.process_count()} processes; the data iterator states were saved by "
          f"another process count: reading on from global batch {start}")
    data = iter(pipeline.sft_dataset(pc, model.config, start=start))

  step_fn = jit_train_step(graphdef, tx, config.micro_batches, state_shardings)
  writer = metrics.MetricWriter(workdir if jax.process_index() == 0 else "")
  stop = {"flag": False}
  previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
  losses, pending, t_log = [], [], time.perf_counter()
  progress = _progress(start, config.total_steps, name)
  profiler = StepProfiler(f"{workdir}/profile", start + config.profile.start, config.profile.steps)
  try:
    step = start
    while step < config.total_steps:
      host = next(data)
      batch, meta = pipeline.to_global(host, mesh)
      if meta["unfit"]:
        print(f"step {step + 1}: examples {meta['unfit'][:8]} fit no bucket of data.buckets (tokens, trained tokens "
              "or frame slots): not trained (zero-weight stand-ins); larger buckets keep them")
      profiler.before(step)
      with axis_rules(mesh):
        state, m = step_fn(state, batch)
      step += 1
      profiler.after(step, state)
      pending.append((step, m, meta["id"], _model_flops(model.config, batch)))
      last = step == config.total_steps
      if step % config.log_every_steps == 0 or last or stop["flag"]:
        losses += _log(pending, writer, lr_schedule, progress, time.perf_counter() - t_log, state, config)
        pending, t_log = [], time.perf_counter()
      if step % config.checkpoint_every_steps == 0 or last or stop["flag"]:
        manager.save(step, state, data)
      if stop["flag"]:
        print(f"SIGTERM: saved step {step}, stopping")
        break
  finally:
    profiler.close()
    signal.signal(signal.SIGTERM, previous)
    manager.wait()
    writer.close()
    progress.close()
  model = nnx.merge(graphdef, state["params"], rest)
  return model, Result(step=int(state["step"]), losses=losses, final_loss=losses[-1] if losses else float("nan"))


class StepProfiler:
  """A jax.profiler trace of the train steps numbered [first, first + steps) (0-based), on process 0
  only; the last one is waited for before the trace stops, so it holds whole steps."""

  def __init__(self, directory: str, first: int, steps: int):
    self.directory, self.first, self.end = directory, first, first + steps
    self.enabled = steps > 0 and jax.process_index() == 0
    self.active = False

  def before(self, step: int) -> None:
    if self.enabled and step == self.first:
      jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
      self.active = True

  def after(self, step: int, state) -> None:
    if self.active and step == self.end:
      jax.block_until_ready(state)
      self.close()
      print(f"profile of steps {self.first}-{self.end - 1} written to {self.directory}")

  def close(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False


def _progress(start, total, name):
  from tqdm import tqdm
  return tqdm(total=total, initial=start, desc=name, unit="step", dynamic_ncols=True,
              disable=jax.process_index() != 0)


def _model_flops(cfg: ModelConfig, batch) -> float:
  """Model FLOPs of a step at its bucket's (padded) shape: metrics.train_flops for every row. The
  same whichever attention kernel or remat policy runs, so MFU compares across them."""
  x = batch["inputs"]
  rows, length = x.input_ids.shape
  return rows * metrics.train_flops(cfg, length, x.pixel_values.shape[1], batch["loss_index"].shape[1], x.frame_block)


def _log(pending, writer, lr_schedule, progress, seconds, state, config) -> list[float]:
  """Fetch the interval's metrics in one transfer, write them, check for non-finite steps."""
  fetched = jax.device_get([p[1] for p in pending])
  losses = []
  for (step, _, ids, _), m in zip(pending, fetched):
    if not m["applied"]:
      print(f"step {step}: non-finite loss/gradient (loss={m['loss']}, grad_norm={m['grad_norm']}); "
            f"update skipped; batch ids {ids[:8]}")
    losses.append(float(m["loss"]))
  tokens = sum(float(m["input_tokens"]) for m in fetched)
  m = fetched[-1]
  step = pending[-1][0]
  row = dict(loss=float(np.mean([float(x["loss"]) for x in fetched])), learning_rate=float(lr_schedule(step - 1)),
             grad_norm=float(m["grad_norm"]), tokens_per_sec=tokens / max(seconds, 1e-9),
             skipped_steps=float(sum(1 - x["applied"] for x in fetched)))
  peak = metrics.peak_flops(jax.devices()[0].device_kind)
  if peak:
    row["mfu"] = sum(p[3] for p in pending) / max(seconds, 1e-9) / (peak * jax.device_count())
  for i, name in enumerate(TASK_NAMES):
    n = sum(float(x["task_tokens"][i]) for x in fetched)
    if n:
      row[f"loss_{name}"] = sum(float(x["task_loss"][i] * x["task_tokens"][i]) for x in fetched) / n
  writer.write(step, row)
  progress.update(len(pending))
  progress.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_sec']:.0f}")
  if int(jax.device_get(state["max_bad_streak"])) >= config.max_bad_steps:
    raise NonFiniteLossError(f"{config.max_bad_steps} consecutive steps with a non-finite loss or gradient "
                             f"(last at step {step}); the last checkpoint holds the state before them")
  return losses
