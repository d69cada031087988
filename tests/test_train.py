"""The SFT trainer: exact accumulation, sharding, non-finite guard, compile count, metrics,
checkpoints across device counts, and bit-exact resume after kill -9 of the real command."""

import gzip
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rewatch_jax import checkpoint as ckpt
from rewatch_jax.data import pipeline
from rewatch_jax.data.batching import Bucket, Collate
from rewatch_jax.data.video import VideoSpec
from rewatch_jax.mesh import make_mesh
from rewatch_jax.models import ModelConfig, Qwen25VL, from_hf_inputs
from rewatch_jax.models.sharding import axis_rules
from rewatch_jax.train import sft
from rewatch_jax.train import state as train_state
from tests.conftest import resolved
from tests.conftest import small_sft_config as small_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup(c, prepared, mesh_axes, accum=1):
  """The SFT trainer's parts, built as sft.train builds them, on a mesh of the first devices."""
  work, data_dir, tokenizer = prepared
  c.mesh.update(mesh_axes)
  c.micro_batches = accum
  n = int(np.prod(list(mesh_axes.values()))) if -1 not in mesh_axes.values() else len(jax.devices())
  run = resolved(c, data_dir, tokenizer, tempfile.mkdtemp(dir=work), jax.devices()[:n])
  stage = run.stages[-1]
  trainable = train_state.setup(train_state.build_model(run.config, run.model, run.mesh), stage.optimizer,
                                stage.total_steps, run.mesh, run.config.seed)
  step = sft.jit_train_step(trainable, accum, len(stage.tasks))
  it = iter(pipeline.sft_dataset(sft.pipeline_config(run, stage), run.model))
  return run.mesh, trainable.state, step, it


def test_accumulation_and_sharding_are_exact(prepared):
  results = []
  # the last: MLP widths padded at compute time (text 384 -> 400, vision 128 -> 160) on sharded kernels
  for axes, accum, pad in (({"data": 1, "fsdp": 1, "tensor": 1}, 1, 1), ({"data": 1, "fsdp": 1, "tensor": 1}, 4, 1),
                           ({"data": 2, "fsdp": 2, "tensor": 2}, 2, 1), ({"data": 1, "fsdp": 4, "tensor": 2}, 1, 1),
                           ({"data": 1, "fsdp": 4, "tensor": 2}, 1, 80)):
    c = small_config()
    c.model.pad_mlp_to = pad
    mesh, state, step, it = _setup(c, prepared, axes, accum)
    batch, _ = pipeline.to_global(next(it), mesh)
    with axis_rules(mesh):
      new, m = step(state, batch)
    results.append((float(m["loss"]), np.asarray(new.params["text"]["layers"][0]["mlp"]["gate"]["kernel"][...])))
  for loss, kernel in results[1:]:
    assert abs(loss - results[0][0]) < 1e-5
    np.testing.assert_allclose(kernel, results[0][1], atol=1e-6)


def test_one_compilation_for_many_steps_and_nonfinite_guard(prepared):
  c = small_config()
  mesh, state, step, it = _setup(c, prepared, {"data": -1, "fsdp": 1, "tensor": 1})
  lengths = set()
  for _ in range(6):  # videos of different lengths and sizes; the demo's three buckets (one per task)
    batch, _ = pipeline.to_global(next(it), mesh)
    state, m = step(state, batch)
    lengths.add(batch["inputs"].input_ids.shape[1])
  compiled = step._cache_size()
  assert compiled == len(lengths) and len(lengths) >= 2 and float(m["applied"]) == 1
  before = jax.tree.map(np.array, jax.device_get(state.params))  # the step donates its input
  poisoned = dict(batch, loss_weights=batch["loss_weights"] * jnp.nan)  # pixels are uint8: no NaN there
  for k in range(2):
    state, m = step(state, poisoned)
    assert float(m["applied"]) == 0 and int(state.bad_streak) == k + 1
  after = jax.device_get(state.params)
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(a, b)  # poisoned updates are never applied
  state, m = step(state, batch)
  assert int(state.bad_streak) == 0 and int(state.max_bad_streak) == 2 and step._cache_size() == compiled


@pytest.mark.parametrize("accum", [1, 2])
def test_bf16_parameters_keep_their_dtypes_and_compile_once(prepared, accum):
  """bf16 weights train with bf16 AdamW moments (an option; the recipes keep float32 masters): a step
  must hand back the state with the types it took (first seen on a GPU: fp32 gradients turned the
  moments fp32 -> a retrace)."""
  c = small_config()
  c.model.param_dtype = c.model.dtype = "bfloat16"
  mesh, state, step, it = _setup(c, prepared, {"data": -1, "fsdp": 1, "tensor": 1}, accum)
  batch, _ = pipeline.to_global(next(it), mesh)
  types = jax.tree.map(lambda x: x.dtype, state)
  assert {x.dtype for x in jax.tree.leaves(state.opt_state) if x.ndim} == {jnp.dtype(jnp.bfloat16)}
  for _ in range(3):
    state, m = step(state, batch)
  assert jax.tree.map(lambda x: x.dtype, state) == types
  assert step._cache_size() == 1 and float(m["applied"]) == 1 and np.isfinite(float(m["loss"]))


@pytest.mark.parametrize("param_dtype", ["bfloat16", "float32"])
def test_master_weights_move_at_the_recipe_learning_rate(prepared, param_dtype, caplog):
  """At ReWatch's SFT learning rate, 1e-6, a step cannot move a bf16 weight of ordinary size (half
  its spacing is larger), so bf16 parameters do not train; the recipes keep float32 master weights
  and compute in bf16, and the trainer warns about the other case."""
  from configs import sft_qwen2_5_vl_7b
  recipe = sft_qwen2_5_vl_7b.get_config()
  assert (recipe.model.param_dtype, recipe.model.dtype) == ("float32", "bfloat16")
  c = small_config()
  c.model.param_dtype, c.model.dtype = param_dtype, "bfloat16"
  c.optimizer.update(learning_rate=1e-6, schedule="constant", warmup_steps=0)
  mesh, state, step, it = _setup(c, prepared, {"data": -1, "fsdp": 1, "tensor": 1})
  frozen = train_state.frozen_fraction(state.params, 1e-6)
  kernel = lambda s: np.asarray(s.params["text"]["layers"][0]["mlp"]["gate"]["kernel"][...], np.float32)
  before = kernel(state)
  batch, _ = pipeline.to_global(next(it), mesh)
  state, m = step(state, batch)
  moved = np.mean(kernel(state) != before)
  assert float(m["applied"]) == 1
  if param_dtype == "bfloat16":
    assert frozen > 0.9 and moved < 0.1
    train_state.warn_if_updates_round_away(state.params, 1e-6)
    assert "Keep float32 master weights" in caplog.text
  else:
    assert frozen == 0 and moved > 0.99


def test_state_size_per_device_and_the_early_memory_error(prepared):
  """FSDP over 8 devices holds ~1/8 of the state on each, AdamW moments included (they were
  replicated until 2026-11-30: jit(tx.init) gives zeros no sharding); a state larger than a
  device's memory fails before compiling, naming the remedy."""
  sizes = {}
  for fsdp in (1, 8):
    _, state, _, _ = _setup(small_config(), prepared, {"data": 1, "fsdp": fsdp, "tensor": 1})
    sizes[fsdp] = train_state.state_bytes_per_device(state)
    for param, mu in zip(jax.tree.leaves(state.params), jax.tree.leaves(state.opt_state[1][0].mu)):
      assert mu.sharding == param.sharding
  total = sum(x.nbytes for x in jax.tree.leaves(state))
  assert sizes[1] == total and total / 8 < sizes[8] < total / 5  # this tiny model's unsplit pieces: ~1/6
  assert train_state.check_state_fits(state, None).startswith("train state: ")
  with pytest.raises(MemoryError, match="do not fit; shard them over more chips"):
    train_state.check_state_fits(state, sizes[8] - 1)
  mesh = make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
  c = small_config()
  _, params, _ = nnx.split(train_state.build_model(c, ModelConfig.from_dict(c.model.to_dict()), mesh), nnx.Param, ...)
  tx, _ = train_state.make_optimizer(c.optimizer, 10, params)
  with pytest.raises(MemoryError, match="do not fit"):  # raised before the moments are allocated
    train_state.init_state(params, tx, mesh, 0, sizes[8] // 2)


def test_train_flops_count_the_model_matmuls():
  """metrics.train_flops (the MFU numerator) against XLA's own count of the forward pass, which
  computes the causal attention's query chunks (more than its causal half) and adds elementwise
  work."""
  from rewatch_jax.models.layers import CAUSAL_CHUNKS
  from rewatch_jax.train.metrics import train_flops
  from tests.hf_reference import make_batch, tiny_config
  cfg = tiny_config()
  inputs = from_hf_inputs(cfg, **make_batch(cfg, [[7, ("video", (4, 16, 16), 1.0), 40]]))
  trained = 16
  graphdef, state = nnx.split(Qwen25VL(cfg, rngs=nnx.Rngs(0)))

  def forward(state, inputs):
    model = nnx.merge(graphdef, state)
    return model.text.logits(model(inputs, return_hidden=True)[:, -trained:]).sum()

  cost = jax.jit(forward).lower(state, jax.tree.map(jnp.asarray, inputs)).compile().cost_analysis()
  xla = (cost[0] if isinstance(cost, list) else cost)["flops"]
  length, patches = inputs.input_ids.shape[1], inputs.pixel_values.shape[1]
  ours = train_flops(cfg, length, patches, trained, inputs.frame_block) / 3
  size = -(-length // CAUSAL_CHUNKS)  # each query chunk against the keys up to its last row
  computed = sum(min(size, length - lo) * min(lo + size, length) for lo in range(0, length, size))
  beyond_causal = cfg.text.num_hidden_layers * 4 * cfg.text.hidden_size * (computed - length**2 / 2)
  assert 0.85 < (ours + beyond_causal) / xla <= 1.0


def test_train_writes_metrics_and_restores_on_another_device_count(prepared, tmp_path, monkeypatch):
  _, data_dir, tokenizer = prepared
  monkeypatch.setattr(sft.metrics, "peak_flops", lambda kind: 1e12)  # a CPU has no listed peak: pretend
  c = small_config()
  c.mesh.data, c.mesh.fsdp = 2, 4
  c.profile.start, c.profile.steps = 2, 2
  run = resolved(c, data_dir, tokenizer, str(tmp_path))
  model, result = sft.train(run, run.stages[-1])
  traces = list((tmp_path / "profile").rglob("*.trace.json.gz"))
  assert len(traces) == 1 and list((tmp_path / "profile").rglob("*.xplane.pb"))
  events = json.loads(gzip.open(traces[0]).read())
  names = {e.get("name") for e in (events["traceEvents"] if isinstance(events, dict) else events)}
  assert "PjitFunction(step)" in names  # the jitted train step ran inside the trace
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == list(range(1, 7))
  for key in ("loss", "learning_rate", "grad_norm", "tokens_per_sec", "skipped_steps"):
    assert key in rows[-1]
  assert {k for r in rows for k in r if k.startswith("loss_")} <= {f"loss_{t}" for t in run.stages[-1].tasks}
  assert all(0 < r["mfu"] < 1 for r in rows)  # model FLOPs of each step's bucket over time and peak
  assert list((tmp_path / "tensorboard").iterdir())
  assert result.losses[-1] < result.losses[0]
  made = json.loads((tmp_path / "checkpoints" / ckpt.DATA_FILE).read_text())  # what the frames and tokens were
  assert made["video_spec_hash"] == VideoSpec(**c.video_spec.to_dict()).hash == run.video_spec.hash
  assert made["tokenizer_hash"] == run.tokenizer_hash and made["tokenizer"] == tokenizer
  # restore the final checkpoint's parameters onto 4 devices
  restored = ckpt.load_model(str(tmp_path / "checkpoints"), mesh=make_mesh({"data": 1, "fsdp": 4}, jax.devices()[:4]))
  a = restored.text.layers[1].self_attn.q_proj.kernel[...]
  assert len(a.sharding.device_set) == 4
  np.testing.assert_array_equal(np.asarray(a), np.asarray(model.text.layers[1].self_attn.q_proj.kernel[...]))


def _train_cmd(workdir, data_dir, tokenizer, steps):
  return [sys.executable, "launch/train.py", "--config", "configs/demo.py:sft", "--workdir", workdir,
          f"--config.total_steps={steps}", "--config.log_every_steps=1", "--config.checkpoint_every_steps=2",
          "--config.demo.videos=0", f"--config.data.dir={data_dir}", f"--config.tokenizer={tokenizer}",
          "--config.data.batch_size=8"]


def _losses(workdir):
  out = {}
  for line in open(os.path.join(workdir, "metrics.jsonl")):
    row = json.loads(line)
    out[row["step"]] = row["loss"]  # a resumed run rewrites the steps after its checkpoint
  return out


@pytest.mark.slow
def test_kill_9_and_resume_is_bit_exact(prepared, tmp_path):
  _, data_dir, tokenizer = prepared
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  ref = str(tmp_path / "ref")
  out = subprocess.run(_train_cmd(ref, data_dir, tokenizer, 8), cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  run = str(tmp_path / "run")
  proc = subprocess.Popen(_train_cmd(run, data_dir, tokenizer, 8), cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline and not os.path.exists(os.path.join(run, "checkpoints", "4")):
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert os.path.exists(os.path.join(run, "checkpoints", "4")), "the run never reached step 4"
  out = subprocess.run(_train_cmd(run, data_dir, tokenizer, 8), cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert _losses(run) == _losses(ref)  # bit-exact, step by step


def test_sigterm_saves_and_stops(prepared, tmp_path):
  _, data_dir, tokenizer = prepared
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  run = str(tmp_path / "run")
  cmd = _train_cmd(run, data_dir, tokenizer, 200)
  cmd[cmd.index("--config.checkpoint_every_steps=2")] = "--config.checkpoint_every_steps=100"
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  metrics = os.path.join(run, "metrics.jsonl")
  while time.time() < deadline and not (os.path.exists(metrics) and len(open(metrics).readlines()) >= 3):
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  saved = [int(d) for d in os.listdir(os.path.join(run, "checkpoints")) if d.isdigit()]
  assert "SIGTERM: saved step" in err and saved and 3 <= max(saved) < 100


@pytest.mark.slow
def test_sigterm_in_pretraining_stops_there_and_the_rerun_finishes_both_stages(prepared, tmp_path):
  """Preempted during the pretraining stage: it saves and stops (the SFT does not start on a
  half-pretrained model); the same command again resumes the stage and then runs the SFT."""
  _, data_dir, tokenizer = prepared
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  run = str(tmp_path / "run")
  cmd = [sys.executable, "launch/train.py", "--config", "configs/demo.py", "--workdir", run,
         "--config.demo.videos=0", f"--config.data.dir={data_dir}", f"--config.tokenizer={tokenizer}",
         "--config.eval.enabled=false", "--config.pretrain.steps=40", "--config.total_steps=3", "--config.rl.steps=0",
         "--config.log_every_steps=1", "--config.checkpoint_every_steps=100"]
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  metrics = os.path.join(run, "pretrain", "metrics.jsonl")
  while time.time() < deadline and not (os.path.exists(metrics) and len(open(metrics).readlines()) >= 3):
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  stopped = max(int(d) for d in os.listdir(os.path.join(run, "pretrain", "checkpoints")) if d.isdigit())
  assert "SIGTERM: saved step" in err and 3 <= stopped < 40
  assert not os.path.exists(os.path.join(run, "checkpoints")) and not os.path.exists(os.path.join(run, "metrics.jsonl"))
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  steps = [json.loads(line)["step"] for line in open(metrics)]
  assert steps[-(40 - stopped):] == list(range(stopped + 1, 41))  # resumed after the saved step
  assert sorted(_losses(run)) == [1, 2, 3] and os.path.exists(os.path.join(run, "checkpoints", "3"))


@pytest.mark.parametrize("freeze, scale", [(True, 1.0), (False, 0.5)])
def test_vision_learning_rate_scale_and_freezing(freeze, scale):
  c = small_config()
  c.optimizer.update(dict(learning_rate=1e-2, warmup_steps=0, weight_decay=0.0))
  model = Qwen25VL(ModelConfig.from_dict(c.model.to_dict()), rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-5), params)  # below the clipping norm
  def first_update(oc):
    tx, _ = train_state.make_optimizer(oc, 10, params)
    return tx.update(grads, tx.init(params), params)[0]
  base = first_update(c.optimizer)
  c.optimizer.update(dict(freeze_vision=freeze, vision_lr_scale=scale))
  new = first_update(c.optimizer)
  vis, vis0 = jax.tree.leaves(new["visual"]), jax.tree.leaves(base["visual"])
  want = 0.0 if freeze else scale
  for a, b in zip(vis, vis0):
    np.testing.assert_allclose(a, want * b, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(new["text"]), jax.tree.leaves(base["text"])):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  assert float(jnp.abs(vis0[0]).max()) > 0


def test_zero_init_vision_output_starts_silent_and_learns(prepared):
  """With the merger's last layer at zero the frames add nothing at step 0, and the first
  gradient still reaches that layer (so the frames can come in)."""
  c = small_config()
  c.zero_init_vision_output = True
  c.optimizer.warmup_steps = 0  # a real first update
  mesh, state, step, it = _setup(c, prepared, {"data": -1, "fsdp": 1, "tensor": 1})
  fc2 = state.params["visual"]["merger"]["fc2"]
  assert not np.asarray(fc2["kernel"][...]).any() and not np.asarray(fc2["bias"][...]).any()
  batch, _ = pipeline.to_global(next(it), mesh)
  with axis_rules(mesh):
    new, _ = step(state, batch)
  assert np.asarray(new.params["visual"]["merger"]["fc2"]["kernel"][...]).any()


def test_training_learns_to_read_the_video():
  """End to end through pixels -> vision tower -> merger -> language model -> loss -> AdamW: the
  demo model learns which colour a square shows (at a random place), so its answers follow the
  frames, and given another example's frames they follow those. With the visual tokens not
  reaching the language model it fails (checked: 0.20)."""
  from configs import demo
  from rewatch_jax.data.processor import encode_pixels
  from rewatch_jax.demo import toyworld
  c = demo.get_config("sft")
  c.optimizer.update(dict(learning_rate=3e-3, warmup_steps=10))
  cfg = ModelConfig.from_dict(c.model.to_dict())
  colours = np.array(list(toyworld.COLOURS.values()), np.uint8)
  rng = np.random.default_rng(0)
  collate = Collate(cfg, [Bucket(length=24, patches=64, frame_block=64, loss_tokens=2)], pad_id=0)

  def batch(ks):
    examples = []
    for k in ks:
      frames = np.empty((2, 56, 56, 3), np.uint8)
      frames[:] = (30, 30, 40)  # a dark background
      y, x = rng.integers(0, 56 - 24, 2)
      frames[:, y:y + 24, x:x + 24] = colours[k]
      ids = [cfg.vision_start_token_id] + [cfg.video_token_id] * 4 + [cfg.vision_end_token_id, 10, 100 + k,
                                                                      cfg.eos_token_id]
      examples.append(dict(input_ids=np.array(ids), loss_mask=np.array([0] * 7 + [1, 1], bool),
                           **encode_pixels(frames, 2.0, cfg.vision), task=np.int32(0), id=str(k)))
    return collate(examples)

  steps = 150
  mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  trainable = train_state.setup(train_state.build_model(c, cfg, mesh), c.optimizer, steps, mesh, 0)
  step, state = sft.jit_train_step(trainable, 1, 1), trainable.state
  with axis_rules(mesh):
    for _ in range(steps):
      state, _ = step(state, pipeline.to_global(batch(rng.integers(0, 6, 16)), mesh)[0])

  model = trainable.model(state)
  ks = rng.integers(0, 6, 96)
  test = batch(ks)
  def answers(inputs):
    hidden = model(jax.tree.map(jnp.asarray, inputs), return_hidden=True)
    return np.asarray(model.text.logits(hidden[:, 6])).argmax(-1) - 100  # after the "question" token
  shift = np.roll(np.arange(len(ks)), 1)  # each example gets its neighbour's frames
  swapped = test["inputs"].replace(pixel_values=np.asarray(test["inputs"].pixel_values)[shift])
  # chance is 1/6; 150 steps reach ~0.9 (0.8 after 60)
  assert (answers(test["inputs"]) == ks).mean() >= 0.75
  assert (answers(swapped) == ks[shift]).mean() >= 0.75  # it follows the frames it is shown
  assert (answers(swapped) == ks).mean() <= 0.4


def test_metrics_on_an_object_store_keep_every_step(monkeypatch):
  """A gs:// workdir: GCS objects cannot be appended to (gcsfs turns mode 'a' into 'w'), here an
  in-memory filesystem that does the same stands in for the bucket. metrics.jsonl keeps every
  step, a resumed writer keeps the earlier ones, and the TensorBoard file holds every event."""
  import fsspec
  fsspec_registry = importlib.import_module("fsspec.registry")  # (the module; fsspec.registry is its mapping)
  from fsspec.implementations.memory import MemoryFileSystem
  from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

  from rewatch_jax.train.metrics import MetricWriter

  class Bucket(MemoryFileSystem):  # (what etils.epath opens gs:// paths with: fsspec's "gcs")
    protocol = ("gcs", "gs")

    def __init__(self, *args, finalize_on_close=True, **kwargs):
      super().__init__(*args, **kwargs)

    def _open(self, path, mode="rb", **kwargs):
      return super()._open(path, mode.replace("a", "w"), **kwargs)

  for p in Bucket.protocol:  # (undone after the test)
    monkeypatch.setitem(fsspec_registry._registry, p, Bucket)
  try:
    workdir = "gs://bucket/run"
    first = MetricWriter(workdir)
    for step in (1, 2):
      first.write(step, {"loss": 1.0 / step})
    first.close()
    again = MetricWriter(workdir)  # a resumed run
    again.write(3, {"loss": 0.3})
    again.close()
    fs = Bucket()
    rows = [json.loads(line) for line in fs.cat(f"{workdir}/metrics.jsonl").decode().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    steps = []
    for name in fs.ls(f"{workdir}/tensorboard", detail=False):
      local = tempfile.NamedTemporaryFile(suffix=".tfevents", delete=False).name
      fs.get(name, local)
      steps += [e.step for e in EventFileLoader(local).Load() if e.summary.value]
    assert sorted(steps) == [1, 2, 3]
  finally:
    MemoryFileSystem.store.clear()
    fsspec.AbstractFileSystem.clear_instance_cache()
