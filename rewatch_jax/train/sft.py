"""Multi-task SFT (caption + direct-answer QA + CoT) on a device mesh.

Reads top to bottom like the algorithm: the loss (summed token NLL at the trained positions), the
step (exact gradient accumulation: sums over micro-batches, divided once by the total trained-token
count; the update through TrainState.apply_gradients, which skips non-finite steps), then `train`:
model, train state, data, restore, loop (train/state.py, train/loop.py).
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rewatch_jax.checkpoint import TrainCheckpointer
from rewatch_jax.data import pipeline
from rewatch_jax.models import ModelConfig, Qwen25VL
from rewatch_jax.models.sharding import axis_rules
from rewatch_jax.train import loop, metrics
from rewatch_jax.train import state as train_state
from rewatch_jax.train.resolve import Run, Stage
from rewatch_jax.train.state import Trainable, TrainState

log = logging.getLogger(__name__)

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


# ---- step ----

def make_train_step(graphdef, tx, accum: int, num_tasks: int):
  def step(state: TrainState, batch):
    def loss_and_grad(mb):
      def f(p):
        s, n, ts, tn = loss_sums(nnx.merge(graphdef, p), mb, num_tasks)
        return s, (n, ts, tn)
      (s, (n, ts, tn)), g = jax.value_and_grad(f, has_aux=True)(state.params)
      return g, (s, n, ts, tn)

    def micro(carry, mb):  # gradients summed in fp32 whatever the parameter dtype
      g, sums = loss_and_grad(mb)
      grads = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), carry[0], g)
      return (grads, jax.tree.map(jnp.add, carry[1], sums)), None

    if accum == 1:
      grads, (s, n, ts, tn) = loss_and_grad(batch)
    else:
      zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
      init = (zeros, (jnp.zeros(()), jnp.zeros(()), jnp.zeros(num_tasks), jnp.zeros(num_tasks)))
      (grads, (s, n, ts, tn)), _ = jax.lax.scan(micro, init, train_state.split_rows(batch, accum))
    denom = jnp.maximum(n, 1.0)
    new_state, update = state.apply_gradients(jax.tree.map(lambda g: g / denom, grads), tx, jnp.isfinite(s))
    return new_state, dict(loss=s / denom, tokens=n, input_tokens=jnp.sum(batch["inputs"].attention_mask),
                           task_loss=ts / jnp.maximum(tn, 1.0), task_tokens=tn, **update)
  return step


def jit_train_step(trainable: Trainable, micro_batches: int, num_tasks: int):
  """The step, jitted with the state donated and its shardings kept (one compilation per bucket)."""
  return jax.jit(make_train_step(trainable.graphdef, trainable.tx, micro_batches, num_tasks),
                 donate_argnums=0, out_shardings=(trainable.shardings, None))


# ---- the run ----

def pipeline_config(run: Run, stage: Stage) -> pipeline.PipelineConfig:
  """This process's share of the stage's data."""
  dc = run.config.data
  return pipeline.PipelineConfig(data_dir=dc.dir, batch_size=stage.batch_size // jax.process_count(),
                                 buckets=run.buckets, weights=stage.task_weights, seed=run.config.seed,
                                 workers=dc.workers, pad_id=dc.pad_id, batch_by_task=dc.batch_by_task,
                                 mix_by_size=dc.mix_by_size)


def train(run: Run, stage: Stage, model: Qwen25VL | None = None) -> tuple[Qwen25VL, loop.Result]:
  """The SFT trainer over `stage` (from `model`, else the config's initial weights); resumes from
  the stage's last checkpoint."""
  c, mesh = run.config, run.mesh
  model = model if model is not None else train_state.build_model(c, run.model, mesh)
  trainable = train_state.setup(model, stage.optimizer, stage.total_steps, mesh, c.seed)
  pc = pipeline_config(run, stage)
  checkpointer = TrainCheckpointer(f"{stage.workdir}/checkpoints", run.model, keep=c.keep_checkpoints,
                                   identity=run.identity)
  state, data = loop.restore(checkpointer, trainable.state, iter(pipeline.sft_dataset(pc, run.model)),
                             lambda start: iter(pipeline.sft_dataset(pc, run.model, start=start)))
  step_fn = jit_train_step(trainable, c.micro_batches, len(stage.tasks))

  def step(state: TrainState, index: int):
    batch, meta = pipeline.to_global(next(data), mesh)
    if meta["unfit"]:
      log.warning("step %d: examples %s fit no bucket of data.buckets (tokens, trained tokens or frame slots): not "
                  "trained (zero-weight stand-ins); larger buckets keep them", index + 1, meta["unfit"][:8])
    with axis_rules(mesh):
      state, m = step_fn(state, batch)
    return state, m, dict(ids=meta["id"], flops=_model_flops(run.model, batch))

  def summarize(fetched: list[loop.Logged], seconds: float) -> dict[str, float]:
    last = fetched[-1]
    row = dict(learning_rate=float(trainable.learning_rate(last.step - 1)), grad_norm=float(last.metrics["grad_norm"]),
               tokens_per_sec=sum(float(p.metrics["input_tokens"]) for p in fetched) / max(seconds, 1e-9))
    peak = metrics.peak_flops(jax.devices()[0].device_kind)
    if peak:
      row["mfu"] = sum(p.info["flops"] for p in fetched) / max(seconds, 1e-9) / (peak * jax.device_count())
    for i, task in enumerate(stage.tasks):
      n = sum(float(p.metrics["task_tokens"][i]) for p in fetched)
      if n:
        row[f"loss_{task}"] = sum(float(p.metrics["task_loss"][i] * p.metrics["task_tokens"][i]) for p in fetched) / n
    return row

  state, result = loop.run(state, step, name=stage.name, workdir=stage.workdir, total_steps=stage.total_steps,
                           checkpointer=checkpointer, data=data, summarize=summarize, **loop.cadence(c))
  return trainable.model(state), result


def _model_flops(cfg: ModelConfig, batch) -> float:
  """Model FLOPs of a step at its bucket's (padded) shape: metrics.train_flops for every row. The
  same whichever attention kernel or remat policy runs, so MFU compares across them."""
  x = batch["inputs"]
  rows, length = x.input_ids.shape
  return rows * metrics.train_flops(cfg, length, x.pixel_values.shape[1], batch["loss_index"].shape[1], x.frame_block)
