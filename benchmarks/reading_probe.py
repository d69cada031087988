r"""Can the demo model learn to read a toy-world picture in N steps? The stills experiments of
docs/notes/demo_experiments.md (fourth and fifth passes), reproducible.

  python benchmarks/reading_probe.py --question backdrop --frames 16 --steps 300
  python benchmarks/reading_probe.py --question backdrop_change --frames 4 --steps 300

The demo's model (configs/demo.py, random init) trains on fresh procedural examples every step
(toy-world shapes on a named backdrop, 84x112 frames, the direct-answer chat template with the
toy tokenizer, the SFT train step) and is scored on 64 held-out examples by exact match of the
teacher-forced answer tokens, shown their own frames and another example's ("other"). Equal
scores: the model answers from the question. Questions:
* colour: "What colour is the {shape}?" (1..--max_shapes shapes; which object: space)
* backdrop: "What colour is the background?" (every visual token shows it)
* backdrop_change: the backdrop changes at a random frame pair; half the questions ask its colour
  at the start, half the colour it turns (which moment: time)
* backdrop_start: the same frames, only the start asked
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

H, W = 84, 112
QUESTIONS = ("colour", "backdrop", "backdrop_change", "backdrop_start")


def example(rng, question: str, frames: int, max_shapes: int, scale: float):
  """(uint8 frames [T, H, W, 3], question, answer)."""
  from rewatch_jax.demo import toyworld
  names, colours = list(toyworld.BACKDROPS), list(toyworld.COLOURS)
  backdrop = names[rng.integers(len(names))]
  img = np.empty((H, W, 3), np.uint8)
  img[:] = toyworld.BACKDROPS[backdrop]
  kinds = []
  for _ in range(int(rng.integers(1, max_shapes + 1))):
    while True:  # every shape its own kind and colour, so the question names one object
      kind = (toyworld.SHAPES[rng.integers(3)], colours[rng.integers(len(colours))])
      if all(kind[0] != a and kind[1] != b for a, b in kinds):
        break
    kinds.append(kind)
    r = list(toyworld.SIZES.values())[rng.integers(2)] * H * scale
    toyworld._draw_shape(img, kind[0], rng.uniform(r, W - r), rng.uniform(r, H - r), r, toyworld.COLOURS[kind[1]])
  if question == "colour":
    shape, colour = kinds[rng.integers(len(kinds))]
    return np.stack([img] * frames), f"What colour is the {shape}?", colour
  if question == "backdrop":
    return np.stack([img] * frames), "What colour is the background?", backdrop
  turn = [n for n in names if n != backdrop][rng.integers(len(names) - 1)]
  later = img.copy()
  later[np.all(img == toyworld.BACKDROPS[backdrop], -1)] = toyworld.BACKDROPS[turn]
  cut = 2 * int(rng.integers(1, frames // 2))  # the change falls between frame pairs
  video = np.stack([img] * cut + [later] * (frames - cut))
  if question == "backdrop_start" or rng.random() < 0.5:
    return video, "What colour is the background when the video starts?", backdrop
  return video, "What colour does the background turn the first time it changes?", turn


def encode(tok, cfg, frames, question, answer) -> dict:
  """The shared example encoder, on the frames as a 1 fps video (the demo's rate)."""
  from rewatch_jax.data import chat, records
  from rewatch_jax.data.processor import encode_example
  from rewatch_jax.data.video import Video
  t = len(frames)
  video = Video(frames=frames, timestamps=np.arange(t, dtype=np.float64), path="still", source_fps=1.0,
                total_frames=t, duration=float(t), spec_hash="")
  rec = records.QARecord(video="videos/still.mp4", question=question, answer=answer, question_type="object_recognition",
                         duration=float(t))
  messages = chat.conversation("direct", rec, video.duration)
  return dict(encode_example(tok, messages, video, cfg.vision), task=np.int32(0), id=question)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--question", choices=QUESTIONS, default="backdrop")
  p.add_argument("--frames", type=int, default=2, help="even; 2 = one frame pair (12 visual tokens)")
  p.add_argument("--min_frames", type=int, default=0, help="even; draw each example's frame count "
                 "from [min_frames, frames] (0: always --frames)")
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--batch", type=int, default=16)
  # 1e-3: at the demo's 3e-3 the selective reads (which moment, which shape) stall
  # (docs/notes/demo_experiments.md, sixth pass)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--max_shapes", type=int, default=2)
  p.add_argument("--scale", type=float, default=1.0, help="shape size x the toy world's")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args()
  shortest = args.min_frames or args.frames
  if shortest < 2 or (args.frames | shortest) % 2 or shortest > args.frames or (
      args.question.startswith("backdrop_") and shortest < 4):
    p.error("--frames and --min_frames must be even, min_frames <= frames, and >= 4 for a backdrop change")

  import jax
  import jax.numpy as jnp

  from configs import demo
  from rewatch_jax.data import chat, pipeline
  from rewatch_jax.data.batching import Bucket, Collate
  from rewatch_jax.demo import toyworld
  from rewatch_jax.mesh import make_mesh
  from rewatch_jax.models import ModelConfig
  from rewatch_jax.models.sharding import axis_rules
  from rewatch_jax.train import sft
  from rewatch_jax.train import state as train_state

  with tempfile.TemporaryDirectory() as tmp:  # the toy tokenizer, trained on a few toy worlds
    toyworld.build(tmp, count=4, seed=0, duration=(8, 8), shapes=(1, 2))
    tok = chat.qwen_tokenizer(os.path.join(tmp, "tokenizer.json"))
  c = demo.get_config("sft")
  c.optimizer.update(dict(learning_rate=args.lr, warmup_steps=20))
  mesh = make_mesh(dict(c.mesh))
  cfg = ModelConfig.from_dict(c.model.to_dict())
  pairs = args.frames // 2
  bucket = Bucket(length=128 + 12 * pairs, patches=64 * pairs, frame_block=64, loss_tokens=16)
  collate = Collate(cfg, [bucket], pad_id=0)
  trainable = train_state.setup(train_state.build_model(c, cfg, mesh), c.optimizer, args.steps, mesh, 0)
  step, state = sft.jit_train_step(trainable, 1, 1), trainable.state
  rng = np.random.default_rng(args.seed)
  # each example's length (and so its M-RoPE span) drawn from [min_frames, frames], as the demo's
  # videos of 8-16 s vary
  lengths = np.arange(shortest, args.frames + 1, 2)
  make = lambda: example(rng, args.question, int(rng.choice(lengths)), args.max_shapes, args.scale)
  print(f"{args.question}, {shortest}-{args.frames} frames, batch {args.batch}, lr {args.lr}")
  print(f"{'step':>6}{'loss':>10}{'seconds':>10}")
  t0 = time.perf_counter()
  with axis_rules(mesh):
    for i in range(args.steps):
      batch = collate([encode(tok, cfg, *make()) for _ in range(args.batch)])
      state, m = step(state, pipeline.to_global(batch, mesh)[0])
      if (i + 1) % 50 == 0 or i + 1 == args.steps:
        print(f"{i + 1:>6}{float(m['loss']):>10.4f}{time.perf_counter() - t0:>10.0f}", flush=True)
  model = trainable.model(state)
  held_out = [make() for _ in range(64)]

  def exact_match(shift: int) -> float:
    batch = collate([encode(tok, cfg, held_out[(i + shift) % 64][0], *held_out[i][1:]) for i in range(64)])
    hidden = model(jax.tree.map(jnp.asarray, batch["inputs"]), return_hidden=True)
    h = jnp.take_along_axis(hidden, jnp.asarray(batch["loss_index"])[..., None], 1)
    pred = np.asarray(model.text.logits(h)).argmax(-1)
    trained = np.asarray(batch["loss_weights"]) > 0
    return float(((pred == np.asarray(batch["loss_targets"])) | ~trained).all(1).mean())

  print(f"exact match on 64 held-out examples: own frames {exact_match(0):.2f}, other frames {exact_match(1):.2f}")


if __name__ == "__main__":
  from rewatch_jax import host
  host.reexec_if_cpu()  # as launch/train.py does: the same malloc setting
  main()
