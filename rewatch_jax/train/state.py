"""The train state every trainer shares, how it is built on the mesh, and how an update is applied.

`TrainState` holds the parameters, the optimizer moments (sharded like their parameters), the step,
the RNG and the non-finite guard's counters; `setup` builds it, with its optimizer, from a model;
`TrainState.apply_gradients` is the one update rule (a step whose loss or gradient is not finite
is not applied). A trainer adds its loss and its data: `sft.py`, and the GRPO trainer with its
rollout and reference model.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from rewatch_jax import checkpoint, hf
from rewatch_jax.models import ModelConfig, ModelInputs, Qwen25VL
from rewatch_jax.models.configs import RUNTIME_FIELDS
from rewatch_jax.models.sharding import param_shardings

log = logging.getLogger(__name__)


@struct.dataclass
class TrainState:
  params: Any  # nnx.State of the model's nnx.Param variables
  opt_state: Any
  step: jax.Array  # int32: trainer steps taken (SFT: one update each; GRPO: its mini-batch updates; skipped ones too)
  rng: jax.Array  # uint32 key data
  bad_streak: jax.Array  # int32: consecutive non-finite steps
  max_bad_streak: jax.Array  # int32: the longest such run so far (the loop stops past max_bad_steps)

  def apply_gradients(self, grads, tx: optax.GradientTransformation, loss_finite: jax.Array) -> tuple[TrainState, dict]:
    """One optimizer update with `grads` (any float dtype), unless the loss or the gradient is not
    finite: then parameters and moments stay as they were and the streak grows. Gradients are cast
    to their parameters' dtypes first: the moments keep those (bf16 params, bf16 moments), so the
    state's types never change between steps (a change would retrace and recompile)."""
    params = self.params
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
    grad_norm = optax.tree.norm(jax.tree.map(lambda g: g.astype(jnp.float32), grads))
    ok = loss_finite & jnp.isfinite(grad_norm)
    updates, new_opt = tx.update(grads, self.opt_state, params)
    new_params = optax.apply_updates(params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    streak = jnp.where(ok, jnp.zeros_like(self.bad_streak), self.bad_streak + 1)  # dtypes kept: no retrace
    new = self.replace(params=keep(new_params, params), opt_state=keep(new_opt, self.opt_state), step=self.step + 1,
                       bad_streak=streak, max_bad_streak=jnp.maximum(self.max_bad_streak, streak))
    return new, dict(grad_norm=grad_norm, applied=ok.astype(jnp.float32))


@dataclasses.dataclass
class Trainable:
  """A model split for training: its graph and non-parameter state, the optimizer and learning-rate
  schedule, the train state and the shardings the jitted step keeps it in."""
  graphdef: nnx.GraphDef
  rest: nnx.State
  tx: optax.GradientTransformation
  learning_rate: optax.Schedule
  state: TrainState
  shardings: TrainState

  def model(self, state: TrainState | None = None) -> Qwen25VL:
    return nnx.merge(self.graphdef, (state or self.state).params, self.rest)


def build_model(config, model: ModelConfig, mesh: jax.sharding.Mesh) -> Qwen25VL:
  """From the config's Hugging Face folder, rewatch-jax checkpoint, or random weights (`model`: the
  resolved architecture and numerics), sharded on `mesh`."""
  runtime = {k: getattr(model, k) for k in RUNTIME_FIELDS}
  if config.init_from_hf:
    return hf.load_pretrained(config.init_from_hf, mesh=mesh, **runtime)
  if config.init_from_checkpoint:
    return checkpoint.load_model(config.init_from_checkpoint, mesh=mesh, **runtime)
  built = Qwen25VL(model, rngs=nnx.Rngs(config.seed))
  if config.zero_init_vision_output:
    # The merger's last layer starts at zero: the frames add nothing (no noise to learn to ignore)
    # until gradients grow them in the directions the loss wants (the ControlNet/Flamingo trick).
    fc2 = built.visual.merger.fc2
    fc2.kernel[...], fc2.bias[...] = jnp.zeros_like(fc2.kernel[...]), jnp.zeros_like(fc2.bias[...])
  graphdef, state = nnx.split(built)
  return nnx.merge(graphdef, jax.device_put(state, param_shardings(state, mesh)))


def make_optimizer(oc, total_steps: int, params) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with warm-up then cosine decay (or constant), global-norm clipping, and the vision tower
  and merger at `vision_lr_scale` times the language model's rate (0 or `freeze_vision`: frozen)."""
  if oc.schedule == "cosine":
    decay_steps = max(total_steps, oc.warmup_steps + 1)
    lr = optax.warmup_cosine_decay_schedule(0.0, oc.learning_rate, oc.warmup_steps, decay_steps,
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


def init_state(params, tx, mesh, seed: int, device_bytes: int | None = None) -> tuple[TrainState, TrainState]:
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
  state = TrainState(params=params, opt_state=opt_state, **scalars)
  return state, jax.tree.map(lambda x: x.sharding, state)


def setup(model: Qwen25VL, oc, total_steps: int, mesh: jax.sharding.Mesh, seed: int) -> Trainable:
  """Split `model` for training with the optimizer `oc` over `total_steps`, its state on `mesh`."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx, lr = make_optimizer(oc, total_steps, params)
  warn_if_updates_round_away(params, oc.learning_rate)
  device_bytes = (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")
  state, shardings = init_state(params, tx, mesh, seed, device_bytes)
  log.info(check_state_fits(state, device_bytes))
  return Trainable(graphdef, rest, tx, lr, state, shardings)


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


def warn_if_updates_round_away(params, learning_rate: float) -> None:
  frozen = frozen_fraction(params, learning_rate)
  if frozen > 0.1:
    log.warning("%.0f%% of the parameters (%s) cannot change by a step of learning_rate=%g (it is below half their "
                "spacing: AdamW's updates round away). Keep float32 master weights, "
                "--config.model.param_dtype=float32; the model still computes in model.dtype",
                100 * frozen, _low_precision(params)[0].dtype, learning_rate)


def split_rows(batch: dict[str, Any], parts: int) -> dict[str, Any]:
  """Every array of `batch` (and of its ModelInputs, whose positions split on their dimension 1),
  (B, ...) -> (parts, B / parts, ...), taking rows with stride `parts` so that every device keeps
  its own rows (the batch dimension is sharded in contiguous blocks): gradient accumulation's
  micro-batches, GRPO's mini-batches."""
  def split(x, axis=0):
    x = jnp.moveaxis(x, axis, 0)
    x = x.reshape(x.shape[0] // parts, parts, *x.shape[1:]).swapaxes(0, 1)
    return jnp.moveaxis(x, 1, axis + 1)

  def split_inputs(inputs: ModelInputs) -> ModelInputs:
    fields = {f.name: split(getattr(inputs, f.name)) for f in dataclasses.fields(inputs)
              if f.name not in ("positions", "frame_block")}
    return inputs.replace(positions=split(inputs.positions, axis=1), **fields)
  return {k: split_inputs(v) if isinstance(v, ModelInputs) else split(v) for k, v in batch.items()}
