"""Metrics a person can plot: `<workdir>/metrics.jsonl` (one object per logged step) and
TensorBoard event files (written without TensorFlow), plus a progress bar with ETA."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time

from etils import epath
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class MetricWriter:
  """metrics.jsonl and TensorBoard events under `workdir`. Object stores cannot append (gcsfs turns
  mode 'a' into 'w': every write would replace the file with its last line), so on a `gs://`-style
  workdir metrics.jsonl is written whole each time (what was there before a resume included) and
  the event file is written locally and copied after each flush."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled and bool(workdir)
    self._tb = None
    if self.enabled:
      self.path = epath.Path(workdir) / "metrics.jsonl"
      self.path.parent.mkdir(parents=True, exist_ok=True)
      self.remote = "://" in workdir
      self._lines = self.path.read_text().splitlines(keepends=True) if self.remote and self.path.exists() else []
      self._tb_dir = epath.Path(workdir) / "tensorboard"
      self._tb = EventFileWriter(tempfile.mkdtemp(prefix="rewatch-tb-") if self.remote else os.fspath(self._tb_dir))

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    line = json.dumps({"step": step, **{k: float(v) for k, v in metrics.items() if v is not None}}) + "\n"
    if self.remote:
      self._lines.append(line)
      self.path.write_text("".join(self._lines))
    else:
      with self.path.open("a") as f:
        f.write(line)
    values = [summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in clean.items()]
    self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=values)))
    self._tb.flush()
    if self.remote:
      self._tb_dir.mkdir(parents=True, exist_ok=True)
      for name in os.listdir(self._tb.get_logdir()):
        (self._tb_dir / name).write_bytes(epath.Path(self._tb.get_logdir(), name).read_bytes())

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


# Peak dense bf16 FLOP/s per chip, for MFU (device_kind prefixes as JAX reports them).
PEAK_FLOPS = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
              "TPU v6 lite": 918e12, "TPU v6e": 918e12, "NVIDIA H100": 989e12, "NVIDIA H200": 989e12,
              "NVIDIA A100": 312e12}


def peak_flops(device_kind: str) -> float | None:
  return next((v for k, v in PEAK_FLOPS.items() if device_kind.startswith(k)), None)


def train_flops(cfg, tokens: int, patches: int, trained: int, frame_block: int) -> float:
  """Model FLOPs of one forward + backward (3x forward; rematerialisation not counted) of one
  sequence: `tokens` causal text positions, `patches` vision patch slots (window/full attention
  over `frame_block`-slot frames), logits at `trained` positions. Matmuls only (2 per MAC): the
  standard MFU numerator, independent of which attention kernel or remat policy runs."""
  t, v = cfg.text, cfg.vision
  d, kv = t.hidden_size, t.num_key_value_heads * t.head_dim
  text = t.num_hidden_layers * (2 * tokens * (2 * d * d + 2 * d * kv + 3 * d * t.intermediate_size)
                                + 2 * tokens * tokens * d)  # QK^T and PV: 4 T^2 d, halved by causality
  logits = 2 * trained * d * t.vocab_size
  e, full = v.hidden_size, len(v.fullatt_block_indexes)
  window = v.window_merged**2 * v.merge_unit
  width = e * v.merge_unit
  vision = (2 * patches * (v.patch_dim * e + v.depth * (4 * e * e + 3 * e * v.intermediate_size))
            + 4 * patches * e * (full * frame_block + (v.depth - full) * window)
            + 2 * (patches // v.merge_unit) * width * (width + v.out_hidden_size))
  return 3.0 * (text + logits + vision)
