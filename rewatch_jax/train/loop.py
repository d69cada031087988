"""The step loop every trainer runs: restore, then steps with checkpoint cadence, a save on SIGTERM,
the profiler, metrics and a progress bar.

A trainer hands the loop a `step(state, index) -> (state, metrics, info)` that reads its next batch
and runs its jitted update (`index`: the 0-based number of the step it takes; `metrics`: device
scalars, `loss` and `applied` among them; `info`: host values such as batch ids), and a `summarize`
that turns a log interval's fetched metrics into the row written to metrics.jsonl and TensorBoard.
Metrics are fetched once per log interval (one device-to-host transfer, no sync per step).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import numpy as np
from tqdm import tqdm

from rewatch_jax.checkpoint import TrainCheckpointer
from rewatch_jax.train.metrics import MetricWriter
from rewatch_jax.train.state import TrainState

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
  """Too many consecutive steps with a non-finite loss or gradient."""


class Logged(NamedTuple):
  """One step of a log interval: its number, its metrics (fetched to the host) and host info."""
  step: int
  metrics: dict[str, Any]
  info: dict[str, Any]


@dataclasses.dataclass
class Result:
  step: int  # the step the run stopped at (total_steps, or earlier on SIGTERM)
  losses: list[float]  # per step, for tests and reports
  final_loss: float


def restore(checkpointer: TrainCheckpointer, state: TrainState, data: Iterator,
            reopen: Callable[[int], Iterator]) -> tuple[TrainState, Iterator]:
  """The latest checkpoint's state and data iterator, or `state` and `data` as they are. Where the
  iterator states were saved by another process count, `reopen(step)` gives the stream from that
  global batch on."""
  restored = checkpointer.restore_latest(state, data)
  if restored is None:
    return state, data
  state, same_processes = restored
  if not same_processes:
    start = int(state.step)
    log.info("resuming at step %d on %d processes; the data iterator states were saved by another process count: "
             "reading on from global batch %d", start, jax.process_count(), start)
    data = reopen(start)
  return state, data


def cadence(config) -> dict[str, int]:
  """`run`'s logging, checkpoint, non-finite and profiler settings from a run's config."""
  return dict(log_every=config.log_every_steps, checkpoint_every=config.checkpoint_every_steps,
              max_bad_steps=config.max_bad_steps, profile_start=config.profile.start,
              profile_steps=config.profile.steps)


def run(state: TrainState, step: Callable[[TrainState, int], tuple[TrainState, dict, dict]], *, name: str, workdir: str,
        total_steps: int, checkpointer: TrainCheckpointer, data: Iterator,
        summarize: Callable[[list[Logged], float], dict[str, float]], log_every: int, checkpoint_every: int,
        max_bad_steps: int, profile_start: int = 0, profile_steps: int = 0) -> tuple[TrainState, Result]:
  """Steps from the state's step to `total_steps`; saves (state, `data`'s position) every
  `checkpoint_every` steps, at the end and on SIGTERM (then returns early: the same command
  resumes). Metrics go to `workdir` (process 0)."""
  start = int(state.step)
  writer = MetricWriter(workdir if jax.process_index() == 0 else "")
  stop = {"flag": False}
  previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
  progress = tqdm(total=total_steps, initial=start, desc=name, unit="step", dynamic_ncols=True,
                  disable=jax.process_index() != 0)
  profiler = StepProfiler(f"{workdir}/profile", start + profile_start, profile_steps)
  losses, pending, t_log = [], [], time.perf_counter()
  try:
    index = start
    while index < total_steps:
      profiler.before(index)
      state, metrics, info = step(state, index)
      index += 1
      profiler.after(index, state)
      pending.append(Logged(index, metrics, info))
      last = index == total_steps
      if index % log_every == 0 or last or stop["flag"]:
        fetched = [p._replace(metrics=m) for p, m in zip(pending, jax.device_get([p.metrics for p in pending]))]
        losses += _log(fetched, summarize, time.perf_counter() - t_log, writer, progress)
        if int(jax.device_get(state.max_bad_streak)) >= max_bad_steps:
          raise NonFiniteLossError(f"{max_bad_steps} consecutive steps with a non-finite loss or gradient (last at "
                                   f"step {index}); the last checkpoint holds the state before them")
        pending, t_log = [], time.perf_counter()
      if index % checkpoint_every == 0 or last or stop["flag"]:
        checkpointer.save(index, state, data)
      if stop["flag"]:
        log.warning("SIGTERM: saved step %d, stopping", index)
        break
  finally:
    profiler.close()
    signal.signal(signal.SIGTERM, previous)
    checkpointer.wait()
    writer.close()
    progress.close()
  return state, Result(step=int(state.step), losses=losses, final_loss=losses[-1] if losses else float("nan"))


def _log(fetched: list[Logged], summarize, seconds: float, writer: MetricWriter, progress) -> list[float]:
  """Write one log interval's row; returns its per-step losses."""
  for p in fetched:
    if not p.metrics["applied"]:
      log.warning("step %d: non-finite loss/gradient (loss=%s, grad_norm=%s); update skipped; batch ids %s",
                  p.step, p.metrics["loss"], p.metrics.get("grad_norm"), p.info.get("ids", [])[:8])
  row = dict(loss=float(np.mean([float(p.metrics["loss"]) for p in fetched])),
             skipped_steps=float(sum(1 - p.metrics["applied"] for p in fetched)), **summarize(fetched, seconds))
  writer.write(fetched[-1].step, row)
  progress.update(len(fetched))
  progress.set_postfix({"loss": f"{row['loss']:.4f}",
                        **({"tok_s": f"{row['tokens_per_sec']:.0f}"} if "tokens_per_sec" in row else {})})
  return [float(p.metrics["loss"]) for p in fetched]


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
      log.info("profile of steps %d-%d written to %s", self.first, self.end - 1, self.directory)

  def close(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
