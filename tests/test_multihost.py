"""Two processes on localhost (gloo CPU collectives, 4 devices each) train on the 8-device global
mesh: per-step losses equal one process with 8 devices on the same data, and so does evaluation."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cmd(workdir, data_dir, tokenizer, extra=()):
  return [sys.executable, "launch/train.py", "--config", "configs/demo.py:sft", "--workdir", workdir,
          "--config.total_steps=4", "--config.log_every_steps=1", "--config.checkpoint_every_steps=2",
          "--config.demo.videos=0", f"--config.data.dir={data_dir}", f"--config.tokenizer={tokenizer}",
          "--config.data.batch_size=8", "--config.mesh.data=4", "--config.mesh.fsdp=2", *extra]


def _env(devices):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return env


def _losses(workdir):
  return {r["step"]: r["loss"] for r in map(json.loads, open(os.path.join(workdir, "metrics.jsonl")))}


def _predictions(workdir):
  return {p["id"]: p for p in map(json.loads, open(os.path.join(workdir, "eval_after_sft.jsonl")))}


# batches that mix tasks take buckets of 192, 320 or 448 tokens, so the processes' halves of a
# batch often fit different ones alone (each global batch must take one); evaluation afterwards
MIXED_AND_EVAL = ["--config.data.batch_by_task=False", "--config.eval.enabled=True", "--config.eval.before=False",
                  "--config.eval.batch_size=16"]


@pytest.mark.slow
@pytest.mark.parametrize("init", ["random", "hf"])
def test_two_processes_match_one(prepared, tmp_path, init):
  """`hf`: both start from a Hugging Face folder (the demo model's random weights exported), the
  real-scale path: each process reads every tensor and places its shards on the global mesh."""
  _, data_dir, tokenizer = prepared
  extra = MIXED_AND_EVAL if init == "random" else []
  if init == "hf":
    hf_dir = str(tmp_path / "hf")
    export = ("from configs import demo; from flax import nnx; from rewatch_jax import hf; "
              "from rewatch_jax.models import ModelConfig, Qwen25VL; c = demo.get_config('sft'); "
              f"hf.save_pretrained(Qwen25VL(ModelConfig.from_dict(c.model.to_dict()), rngs=nnx.Rngs(3)), {hf_dir!r})")
    out = subprocess.run([sys.executable, "-c", export], cwd=ROOT, env=_env(1), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    extra = [f"--config.init_from_hf={hf_dir}"]
  single = str(tmp_path / "single")
  out = subprocess.run(_cmd(single, data_dir, tokenizer, extra), cwd=ROOT, env=_env(8), capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  multi = str(tmp_path / "multi")
  procs = [subprocess.Popen(_cmd(multi, data_dir, tokenizer, [*extra, f"--coordinator_address=127.0.0.1:{port}",
                                                              "--num_processes=2", f"--process_id={i}"]),
                            cwd=ROOT, env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  a, b = _losses(single), _losses(multi)
  assert sorted(a) == sorted(b) == [1, 2, 3, 4]
  for step in a:
    assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])
  if init == "random":  # every question scored once, as in one process
    p, q = _predictions(single), _predictions(multi)
    assert sorted(p) == sorted(q) and len(p) > 16  # (more than one batch: the last one padded)
    same = sum(p[i]["response"] == q[i]["response"] for i in p)
    assert same == len(p), f"{len(p) - same} of {len(p)} answers differ"
    # resume the two-process run at step 2 in one process (a resized pod)
    resized = str(tmp_path / "resized")
    shutil.copytree(multi, resized)
    shutil.rmtree(os.path.join(resized, "checkpoints", "4"))
    out = subprocess.run(_cmd(resized, data_dir, tokenizer, MIXED_AND_EVAL[:1]), cwd=ROOT, env=_env(8),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "saved by another process count: reading on from global batch 2" in out.stderr
    c = _losses(resized)  # steps 3 and 4 rewritten by the resumed run
    for step in (3, 4):
      assert abs(a[step] - c[step]) < 1e-5, (step, a[step], c[step])
