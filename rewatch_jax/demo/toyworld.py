"""The toy world: procedural videos with an exact event log, and ReWatch-format data from it.

Coloured shapes enter, move, change colour or size, pass behind each other and leave; numbers and
words are shown for a while; the background (the backdrop) changes colour up to twice. Each video
is 8-30 s of small frames, written as real H.264 mp4 by ffmpeg. Because the event log is exact,
captions, QA and CoT traces are true by construction, and deliberately hallucinated CoT variants
(a false, misplaced, invented or missing observation; the right answer) test the O&R reward.
Everything is deterministic from the seed.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import subprocess
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from rewatch_jax.data import chat
from rewatch_jax.data.records import (
  LETTERS,
  CaptionRecord,
  CoTRecord,
  Lineage,
  QARecord,
  Segment,
  format_timestamp,
  read_jsonl,
  write_jsonl,
)
from rewatch_jax.data.video import VideoSpec, ffmpeg_exe, sample_indices, smart_nframes

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 230),
           "yellow": (235, 210, 40), "purple": (150, 60, 200), "white": (240, 240, 240)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.11, "large": 0.2}  # radius as a fraction of the frame height
SIDES = ("left", "right", "top", "bottom")
WORDS = ("GO", "STOP", "EXIT", "BOX", "KEY", "SKY", "MAP", "SUN")  # no colour or shape names
# Backdrop names share no word with the shape colours, so "navy" can only be about the background.
BACKDROPS = {"navy": (20, 25, 90), "maroon": (90, 20, 25), "olive": (75, 75, 15), "teal": (10, 75, 75),
             "grey": (85, 85, 85), "black": (5, 5, 5)}
# v2: answers not guessable from the text (see tests); v3: a backdrop that changes colour, and
# "perception" questions about it (a scene-wide attribute read at a named moment: no binding of
# attributes to objects, so a tiny model learns to read it on a CPU; docs/notes/demo_experiments.md);
# v4: CoT spans on the grid of sampled frames, hallucinated traces of four kinds (the QA are v3's)
GENERATOR = "toyworld-v4"
# The perception questions (their open form also written on its own as {split}_perception.jsonl:
# open answers teach a read that multiple choice, one binding step more, does not): one scene-wide
# colour, read at the moment the question names.
PERCEPTION_QUESTIONS = ("What colour is the background when the video starts?",
                        "What colour does the background turn the first time it changes?",
                        "What colour is the background when the video ends?")

# 5x7 bitmap glyphs, one string of 7 rows of 5 bits per character.
_GLYPHS = {
    "0": "01110100011001110101110011000101110", "1": "00100011000010000100001000010001110",
    "2": "01110100010000100010001000100011111", "3": "11110000010000101110000010000111110",
    "4": "00010001100101010010111110001000010", "5": "11111100001111000001000011000101110",
    "6": "00110010001000011110100011000101110", "7": "11111000010001000100010000100001000",
    "8": "01110100011000101110100011000101110", "9": "01110100011000101111000010001001100",
    "A": "01110100011000111111100011000110001", "B": "11110100011000111110100011000111110",
    "D": "11110100011000110001100011000111110", "E": "11111100001000011110100001000011111",
    "G": "01110100011000010111100011000101111", "I": "01110001000010000100001000010001110",
    "K": "10001100101010011000101001001010001", "M": "10001110111010110101100011000110001",
    "N": "10001100011100110101100111000110001", "O": "01110100011000110001100011000101110",
    "P": "11110100011000111110100001000010000", "R": "11110100011000111110101001001010001",
    "S": "01111100001000001110000010000111110", "T": "11111001000010000100001000010000100",
    "U": "10001100011000110001100011000101110", "X": "10001100010101000100010101000110001",
    "Y": "10001100010101000100001000010000100",
}


@dataclasses.dataclass
class Shape:
  name: str  # e.g. "the large red circle" is built from these fields
  shape: str
  colour: str
  size: str
  enter_t: float
  leave_t: float
  enter_side: str
  leave_side: str
  lane: float  # where across the frame it travels (0..1)
  z: int
  colour_change: tuple[float, str] | None = None
  size_change: tuple[float, str] | None = None

  def colour_at(self, t: float) -> str:
    return self.colour_change[1] if self.colour_change and t >= self.colour_change[0] else self.colour

  def size_at(self, t: float) -> str:
    return self.size_change[1] if self.size_change and t >= self.size_change[0] else self.size

  def position(self, t: float) -> tuple[float, float]:
    """(x, y) in [-0.3, 1.3]^2 frame units: from off-screen on its entry side to its exit side."""
    u = (t - self.enter_t) / max(1e-6, self.leave_t - self.enter_t)
    def edge(side, lane):
      return {"left": (-0.25, lane), "right": (1.25, lane), "top": (lane, -0.25), "bottom": (lane, 1.25)}[side]
    (x0, y0), (x1, y1) = edge(self.enter_side, self.lane), edge(self.leave_side, 1 - self.lane)
    return x0 + (x1 - x0) * u, y0 + (y1 - y0) * u

  def label(self, t: float | None = None, with_size: bool = True) -> str:
    colour = self.colour if t is None else self.colour_at(t)
    size = (self.size if t is None else self.size_at(t)) + " " if with_size else ""
    return f"{size}{colour} {self.shape}"


@dataclasses.dataclass
class Text:
  word: str
  start: float
  end: float
  corner: str  # "top" or "bottom" band of the frame


@dataclasses.dataclass
class World:
  id: str
  duration: float
  fps: int
  width: int
  height: int
  shapes: list[Shape]
  texts: list[Text]
  backdrops: list[tuple[float, str]]  # (from time, backdrop name), the first from 0
  frames: tuple[float, ...] = ()  # the times of the frames the model sees (the VideoSpec's sampling)

  def backdrop_at(self, t: float) -> str:
    return [name for start, name in self.backdrops if start <= t][-1]

  def events(self) -> list[tuple[float, str]]:
    """Every moment something happens, with a true description (the event log)."""
    ev = [(0.0, f"the background is {self.backdrops[0][1]}")]
    ev += [(t, f"the background turns {name}") for t, name in self.backdrops[1:]]
    for s in self.shapes:
      ev.append((s.enter_t, f"a {s.label(s.enter_t)} enters from the {s.enter_side}"))
      if s.colour_change:
        t, c = s.colour_change
        ev.append((t, f"the {s.label(t - 1e-3)} turns {c}"))
      if s.size_change:
        t, z = s.size_change
        ev.append((t, f"the {s.label(t - 1e-3)} becomes {z}"))
      if s.leave_t < self.duration:
        ev.append((s.leave_t, f"the {s.label(s.leave_t)} leaves on the {s.leave_side}"))
    for x in self.texts:
      ev.append((x.start, f"the {'number' if x.word.isdigit() else 'word'} {x.word} appears at the {x.corner}"))
      ev.append((x.end, f"the {x.word} disappears"))
    return sorted(ev)


def generate(seed: int, width: int = 160, height: int = 120, fps: int = 10,
             duration: tuple[int, int] = (8, 30), shapes: tuple[int, int] = (2, 5),
             spec: VideoSpec = VideoSpec(fps=0.5, min_frames=4)) -> World:
  """One world; `duration` (s) and the number of `shapes` are drawn uniformly from the inclusive
  ranges (smaller worlds are easier to learn: the CPU demo uses them). Backdrop changes fall between
  the frame pairs that `spec` samples (the demo's spec: 0.5 fps)."""
  rng = np.random.default_rng(seed)
  duration = float(rng.integers(duration[0], duration[1] + 1))
  n = int(rng.integers(shapes[0], shapes[1] + 1))
  shapes, used = [], set()
  for i in range(n):
    while True:
      shape, colour = SHAPES[rng.integers(3)], list(COLOURS)[rng.integers(len(COLOURS))]
      if (shape, colour) not in used:
        used.add((shape, colour))
        break
    enter = float(np.round(rng.uniform(0, duration * 0.6), 1))
    travel = float(np.round(rng.uniform(3, max(3.5, duration * 0.7)), 1))
    side = SIDES[rng.integers(4)]
    leave_side = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}[side]
    s = Shape(name=f"s{i}", shape=shape, colour=colour, size=list(SIZES)[rng.integers(2)],
              enter_t=enter, leave_t=min(enter + travel, duration + 5), enter_side=side,
              leave_side=leave_side, lane=float(rng.uniform(0.2, 0.8)), z=i)
    mid = (s.enter_t + min(s.leave_t, duration)) / 2
    if rng.random() < 0.5:
      options = [c for c in COLOURS if c != colour and (shape, c) not in used]
      s.colour_change = (float(np.round(mid + rng.uniform(-0.5, 0.5), 1)), options[rng.integers(len(options))])
    elif rng.random() < 0.5:
      s.size_change = (float(np.round(mid, 1)), "large" if s.size == "small" else "small")
    shapes.append(s)
  texts = []
  for k in range(int(rng.integers(1, 3))):
    word = str(rng.integers(0, 10)) if rng.random() < 0.5 else WORDS[rng.integers(len(WORDS))]
    start = float(np.round(rng.uniform(0, duration - 3), 1))
    texts.append(Text(word, start, float(np.round(start + rng.uniform(2, 4), 1)), ("top", "bottom")[k % 2]))
  frames = sampled_times(duration, fps, spec)
  return World(f"toy-{seed:06d}", duration, fps, width, height, shapes, texts,
               _backdrops(np.random.default_rng([seed, 1]), frames), tuple(frames.tolist()))


def sampled_times(duration: float, fps: int, spec: VideoSpec) -> np.ndarray:
  """The times (s) of the frames `spec` samples from a video of `duration` at `fps`."""
  total = int(round(duration * fps))
  return sample_indices(total, smart_nframes(spec, total, fps)) / fps


def _backdrops(rng, times: np.ndarray) -> list[tuple[float, str]]:
  """A starting backdrop and 0-2 changes (uniformly), each at a gap between two pairs of the sampled
  frame `times`, so that every merged visual token shows one backdrop (the Qwen2.5-VL patch spans
  two frames; a change inside a pair would blend two colours in one token). Drawn from their own
  random stream, so the shapes and texts of a seed are those of toyworld-v2."""
  gaps = [float(np.round((times[j - 1] + times[j]) / 2, 1)) for j in range(2, len(times) - 1, 2)]
  names = list(BACKDROPS)
  out = [(0.0, names[rng.integers(len(names))])]
  for t in sorted(rng.choice(gaps, min(int(rng.integers(3)), len(gaps)), replace=False)):
    others = [n for n in names if n != out[-1][1]]
    out.append((float(t), others[rng.integers(len(others))]))
  return out


# ---- rendering ----

def _draw_shape(img, shape: str, cx: float, cy: float, r: float, colour):
  h, w, _ = img.shape
  yy, xx = np.ogrid[:h, :w]
  if shape == "circle":
    mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
  elif shape == "square":
    mask = (np.abs(xx - cx) <= r * 0.85) & (np.abs(yy - cy) <= r * 0.85)
  else:  # triangle pointing up
    mask = (yy <= cy + r * 0.8) & (yy >= cy - r) & (np.abs(xx - cx) <= (yy - (cy - r)) * 0.6)
  img[mask] = colour


def _draw_text(img, word: str, band: str, scale: int = 2):
  h, w, _ = img.shape
  cw = 6 * scale
  x0 = (w - cw * len(word)) // 2
  y0 = 4 if band == "top" else h - 7 * scale - 4
  for i, ch in enumerate(word):
    bits = np.array([int(b) for b in _GLYPHS[ch]], bool).reshape(7, 5)
    glyph = np.kron(bits, np.ones((scale, scale), bool))
    region = img[y0:y0 + glyph.shape[0], x0 + i * cw:x0 + i * cw + glyph.shape[1]]
    region[glyph[:region.shape[0], :region.shape[1]]] = (255, 255, 255)


def render_frame(world: World, t: float) -> np.ndarray:
  img = np.empty((world.height, world.width, 3), np.uint8)
  img[:] = BACKDROPS[world.backdrop_at(t)]
  for s in sorted(world.shapes, key=lambda s: s.z):
    if s.enter_t <= t < s.leave_t:
      x, y = s.position(t)
      _draw_shape(img, s.shape, x * world.width, y * world.height, SIZES[s.size_at(t)] * world.height,
                  COLOURS[s.colour_at(t)])
  for x in world.texts:
    if x.start <= t < x.end:
      _draw_text(img, x.word, x.corner)
  return img


def write_video(world: World, path: str) -> None:
  """Render every frame and encode H.264 (yuv420p, even sizes) through ffmpeg's stdin."""
  n = int(round(world.duration * world.fps))
  cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
         "-s", f"{world.width}x{world.height}", "-r", str(world.fps), "-i", "-", "-c:v", "libx264",
         "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p", path]
  frames = b"".join(render_frame(world, i / world.fps).tobytes() for i in range(n))
  out = subprocess.run(cmd, input=frames, capture_output=True, check=False)
  if out.returncode:
    raise RuntimeError(f"ffmpeg failed writing {path}: {out.stderr.decode()[-500:]}")


# ---- annotations ----

def _span(a: float, b: float) -> str:
  return f"{format_timestamp(a)}-{format_timestamp(b)}"


def caption(world: World, video: str) -> CaptionRecord:
  """Segments between consecutive event times (merged to >= 2 s), covering the whole video."""
  cuts = sorted({0.0, world.duration, *(round(t) for t, _ in world.events() if 0 < round(t) < world.duration)})
  merged = [cuts[0]]
  for c in cuts[1:-1]:
    if c - merged[-1] >= 2:
      merged.append(c)
  merged.append(world.duration)
  segments = []
  events = world.events()
  for a, b in zip(merged[:-1], merged[1:]):
    inside = [d for t, d in events if a <= round(t) < b and t < world.duration]
    if not inside:
      on = [s.label(a + 0.01) for s in world.shapes if s.enter_t <= a + 0.01 < s.leave_t]
      inside = [f"the {' and the '.join(on)} {'keeps' if len(on) == 1 else 'keep'} moving" if on
                else "the screen is empty"]
    text = "; ".join(inside)
    segments.append(Segment(a, b, text[0].upper() + text[1:] + "."))
  return CaptionRecord(video=video, duration=world.duration, segments=tuple(segments),
                       lineage=Lineage(source="toyworld", model=GENERATOR))


@dataclasses.dataclass
class Fact:
  """One true observation backing a QA answer: what is there, and when. An event happens `at` a
  moment ([start, end] around it); a state holds over [start, end] (the window to look at) and,
  where it lasts longer, over `holds`."""
  start: float
  end: float
  text: str
  at: float | None = None
  holds: tuple[float, float] | None = None

  def span(self, frames: np.ndarray, duration: float) -> tuple[int, int]:
    """Where a trace looks for it, on the grid of frames the model sees, in whole seconds: an event
    between the sampled frames around it (it cannot be placed more finely), a state over the
    sampled frames in its window (the nearest frame where the window holds none)."""
    if self.at is not None:
      before, after = frames[frames < self.at], frames[frames >= self.at]
      lo, hi = (before[-1] if len(before) else 0.0), (after[0] if len(after) else duration)
    else:
      inside = frames[(frames >= self.start) & (frames <= self.end)]
      if not len(inside):
        inside = frames[[np.argmin(np.abs(frames - (self.start + self.end) / 2))]]
      lo, hi = inside[0], inside[-1]
    a, b = int(np.floor(lo)), min(int(np.ceil(hi)), int(np.ceil(duration)))
    return a, max(b, a + 1)

  def false_over(self, lo: float, hi: float, frames: np.ndarray) -> bool:
    """Whether the fact is contradicted over the span [lo, hi]: an event happens between neither the
    sampled frames of the span nor those next to it (the slack the toy judge gives an event); a state
    holds at none of the sampled frames in the span."""
    if self.at is not None:
      before, after = frames[frames < lo], frames[frames > hi]
      return not ((before[-1] if len(before) else -np.inf) <= self.at <= (after[0] if len(after) else np.inf))
    a, b = self.holds or (self.start, self.end)
    return not any(a <= t <= b for t in frames if lo <= t <= hi)


def _questions(world: World, rng) -> list[tuple[str, str, str, list[str], list[Fact]]]:
  """(question_type, question, answer, distractors, facts) that need the video and >1 moment."""
  out = []
  shapes, d = world.shapes, world.duration
  visible = [s for s in shapes if s.enter_t < d]
  # counting: all shapes, and shapes of one kind (possibly none); MC distractors are drawn at random
  # so that the option set does not give the count away
  facts = [Fact(s.enter_t, s.enter_t + 1, f"a {s.label(s.enter_t)} enters", at=s.enter_t) for s in visible]
  kind = SHAPES[rng.integers(len(SHAPES))]
  for what, n in (("shapes", len(visible)), (f"{kind}s", sum(s.shape == kind for s in visible))):
    out.append(("counting", f"How many {what} enter the scene during the video?", str(n),
                [str(k) for k in range(7) if k != n], facts))
  # numerical: the sum of the numbers shown
  nums = [x for x in world.texts if x.word.isdigit()]
  if len(nums) >= 2:
    total = sum(int(x.word) for x in nums)
    out.append(("numerical", "What is the sum of all the numbers shown on screen?", str(total),
                [str(total + k) for k in (-2, -1, 1, 2, 3) if total + k >= 0],
                [Fact(x.start, x.end, f"the number {x.word} is shown") for x in nums]))
  for s in visible:
    first = f"the {s.label(s.enter_t)}"
    if s.colour_change and s.colour_change[0] < min(s.leave_t, d):
      t, c = s.colour_change
      out.append(("state_change", f"The {s.shape} that enters at {format_timestamp(s.enter_t)} changes colour. "
                  f"What colour does it become?", c, [x for x in COLOURS if x not in (c, s.colour)],
                  [Fact(s.enter_t, s.enter_t + 1, f"{first} enters", at=s.enter_t),
                   Fact(t - 0.5, t + 0.5, f"it turns {c}", at=t)]))
      if sum(o.colour_change is not None and o.colour_change[1] == c for o in visible) == 1:
        out.append(("object_recognition", f"Which shape turns {c} during the video?", s.shape,
                    [x for x in SHAPES if x != s.shape] + ["none"],
                    [Fact(t - 0.5, t + 0.5, f"the {s.shape} turns {c}", at=t)]))
    if s.size_change and s.size_change[0] < min(s.leave_t, d):
      t, z = s.size_change
      out.append(("state_change", f"Does the {s.colour} {s.shape} become larger or smaller?",
                  "larger" if z == "large" else "smaller",
                  ["larger" if z != "large" else "smaller", "neither", "it disappears"],
                  [Fact(s.enter_t, s.enter_t + 1, f"{first} enters", at=s.enter_t),
                   Fact(t - 0.5, t + 0.5, f"it becomes {z}", at=t)]))
    if s.leave_t < d:
      out.append(("event_localization", f"When does the {s.label(s.leave_t, with_size=False)} leave the scene?"
                  " Answer with MM:SS.", format_timestamp(s.leave_t),
                  _nearby_times(s.leave_t, d, rng),
                  [Fact(s.leave_t - 1, s.leave_t + 0.5, f"the {s.label(s.leave_t)} leaves on the {s.leave_side}",
                        at=s.leave_t)]))
    out.append(("spatial", f"From which side does the {s.label(s.enter_t, with_size=False)} enter?",
                s.enter_side, [x for x in SIDES if x != s.enter_side],
                [Fact(s.enter_t, s.enter_t + 1, f"{first} enters from the {s.enter_side}", at=s.enter_t)]))
  for x in world.texts:
    after = [s for s in visible if s.enter_t < x.start]
    if after:
      s = max(after, key=lambda s: s.enter_t)
      out.append(("reading", f"What {'number' if x.word.isdigit() else 'word'} appears on screen after the "
                  f"{s.label(s.enter_t, with_size=False)} enters?", x.word,
                  [w for w in (WORDS if not x.word.isdigit() else [str(k) for k in range(10)]) if w != x.word],
                  [Fact(s.enter_t, s.enter_t + 1, f"the {s.label(s.enter_t)} enters", at=s.enter_t),
                   Fact(x.start, x.end, f"the {x.word} is shown at the {x.corner}")]))
  if len(visible) >= 2:
    a, b = rng.choice(len(visible), 2, replace=False)
    a, b = visible[a], visible[b]
    if abs(a.enter_t - b.enter_t) >= 1:
      first = a if a.enter_t < b.enter_t else b
      out.append(("temporal_localization", f"Which enters first, the {a.label(a.enter_t, False)} or the "
                  f"{b.label(b.enter_t, False)}?", f"the {first.label(first.enter_t, False)}",
                  [f"the {(b if first is a else a).label(0, False)}", "they enter together", "neither enters"],
                  [Fact(a.enter_t, a.enter_t + 1, f"the {a.label(a.enter_t)} enters", at=a.enter_t),
                   Fact(b.enter_t, b.enter_t + 1, f"the {b.label(b.enter_t)} enters", at=b.enter_t)]))
    # counterfactual: how many shapes would have entered without one of them
    c = visible[int(rng.integers(len(visible)))]
    n = len(visible) - 1
    out.append(("counterfactual", f"If the {c.label(c.enter_t, False)} had never appeared, how many shapes "
                "would have entered the scene in total?", str(n), [str(k) for k in range(6) if k != n],
                [Fact(s.enter_t, s.enter_t + 1, f"a {s.label(s.enter_t)} enters", at=s.enter_t) for s in visible]))
  # perception: the backdrop at the start, after its first change and at the end
  # (looked at over the first or last second; true until the first change, or since the last)
  (_, start), (last_t, last) = world.backdrops[0], world.backdrops[-1]
  until = world.backdrops[1][0] if len(world.backdrops) > 1 else d
  others = lambda name: [b for b in BACKDROPS if b != name]
  at_start, first_turn, at_end = PERCEPTION_QUESTIONS
  opening = Fact(0, 1, f"the background is {start}", holds=(0, until))
  out.append(("object_recognition", at_start, start, others(start), [opening]))
  if len(world.backdrops) > 1:
    t, turn = world.backdrops[1]
    out.append(("state_change", first_turn, turn, others(turn),
                [opening, Fact(t - 0.5, t + 0.5, f"the background turns {turn}", at=t)]))
  out.append(("state_change", at_end, last, others(last),
              [Fact(max(last_t, d - 1), d, f"the background is {last}", holds=(last_t, d))]))
  occl = [(s, o) for s in visible for o in visible if o.z > s.z and _overlap(world, s, o) is not None]
  if occl:
    s, o = occl[0]
    t = _overlap(world, s, o)
    answer = f"it passes behind the {o.label(t, False)}"
    # distractors of the same form (other shapes of the video first, then random ones): not guessable
    pool = [f"{c} {k}" for k in SHAPES for c in COLOURS]
    pool = [x.label(t, False) for x in visible] + [pool[i] for i in rng.permutation(len(pool))]
    others = [f"it passes behind the {x}" for x in dict.fromkeys(pool)
              if x not in (s.label(t, False), o.label(t, False))]
    out.append(("causal", f"Why is the {s.label(t, False)} briefly hidden around {format_timestamp(t)}?",
                answer, others[:2] + ["it leaves the scene"],
                [Fact(t - 0.5, t + 0.5, f"the {s.label(t)} is behind the {o.label(t)}")]))
  return out


def _nearby_times(t: float, d: float, rng) -> list[str]:
  """Three other timestamps 2, 4, 6 s away inside [0, d], with the true one at a uniformly random
  rank among the four (fixed offsets would give its rank away)."""
  before = [t - k for k in (2, 4, 6) if t - k >= 0]
  after = [t + k for k in (2, 4, 6) if t + k <= d]
  ranks = [r for r in range(4) if r <= len(before) and 3 - r <= len(after)]
  if not ranks:
    return []
  r = ranks[rng.integers(len(ranks))]
  return [format_timestamp(x) for x in before[:r] + after[:3 - r]]


def _overlap(world: World, s: Shape, o: Shape) -> float | None:
  """First time (on 0.5 s steps) the centre of s is inside the larger shape o, both on screen."""
  for t in np.arange(max(s.enter_t, o.enter_t) + 0.5, min(s.leave_t, o.leave_t, world.duration) - 0.5, 0.5):
    (x1, y1), (x2, y2) = s.position(t), o.position(t)
    apart = np.hypot(x1 - x2, (y1 - y2) * world.height / world.width) * world.width  # pixels
    if (0.1 < x1 < 0.9 and 0.1 < y1 < 0.9 and apart < SIZES[o.size_at(t)] * world.height * 0.6
        and SIZES[o.size_at(t)] > SIZES[s.size_at(t)]):
      return float(t)
  return None


# The kinds of hallucinated trace (right answer, wrong grounding) written beside each true one:
# content: the last observation says something false (a word swapped); time: the last observation
# moved to a span of the frame grid where it is false; invented: an observation of something that
# never happens added; dropped: the observation the answer rests on left out (traces of >= 2).
HALLUCINATIONS = ("content", "time", "invented", "dropped")


def qa_records(world: World, video: str, seed: int) -> tuple[list[QARecord], list[CoTRecord], list[CoTRecord]]:
  """Open and 4-way MC QA; a true CoT trace per QA, its observations on the grid of frames the
  model sees (`world.frames`); and its hallucinated variants (HALLUCINATIONS, the kind in
  `lineage.extra["hallucinated"]`) for reward tests."""
  rng, fake_rng = np.random.default_rng(seed), np.random.default_rng([seed, 2])
  frames = np.asarray(world.frames)
  qas, cots, fakes = [], [], []
  lineage = Lineage(source="toyworld", model=GENERATOR)
  asked = set()
  for qtype, question, answer, distractors, facts in _questions(world, rng):
    if question in asked:  # an ambiguous question (two shapes fit it): ask it never
      qas = [q for q in qas if q.question != question]
      cots = [c for c in cots if c.question != question]
      fakes = [c for c in fakes if c.question != question]
      continue
    asked.add(question)
    distractors = list(dict.fromkeys(d for d in distractors if d != answer))
    distractors = [distractors[i] for i in sorted(rng.permutation(len(distractors))[:3])]  # no order leak
    forms = [QARecord(video=video, question=question, answer=answer, question_type=qtype,
                      duration=world.duration, lineage=lineage)]
    if len(distractors) == 3:
      options = distractors + [answer]
      rng.shuffle(options)
      forms.append(QARecord(video=video, question=question, answer=LETTERS[options.index(answer)],
                            question_type=qtype, form="mc", options=tuple(options),
                            duration=world.duration, lineage=lineage))
    for qa in forms:
      qas.append(qa)
      steps = [(*f.span(frames, world.duration), f.text) for f in facts]
      variants = {"content": steps[:-1] + [(*steps[-1][:2], _falsify(steps[-1][2], rng))],
                  **_hallucinations(world, frames, facts, steps, fake_rng)}
      for kind, trace in (("", steps), *variants.items()):
        rec = CoTRecord(video=video, question=qa.question, answer=qa.answer, question_type=qtype,
                        form=qa.form, options=qa.options, duration=world.duration,
                        reasoning=_trace(trace, qa.answer_text, qa.answer),
                        lineage=dataclasses.replace(lineage, extra={"hallucinated": kind or False}))
        (fakes if kind else cots).append(rec)
  return qas, cots, fakes


def _trace(steps: list[tuple[int, int, str]], answer_text: str, answer: str) -> str:
  """ReWatch's CoT text: a re-watch action and its observation per (start, end, text) step."""
  body = " ".join(f"<action>re-watch {_span(a, b)} to check {'what happens' if k else 'the relevant moment'}</action>"
                  f"<observation>[{_span(a, b)}] {text}</observation>" for k, (a, b, text) in enumerate(steps))
  return (f"I need to look at the relevant parts of the video. {body} So the answer is {answer_text}."
          f"<answer>{answer}</answer>")


def _hallucinations(world: World, frames: np.ndarray, facts: list[Fact], steps: list, rng) -> dict[str, list]:
  """The time, invented and dropped variants of a true trace's steps (those the trace allows)."""
  out = {}
  pairs = [(int(np.floor(a)), int(np.ceil(b))) for a, b in zip(frames[:-1], frames[1:])]
  elsewhere = [(a, b) for a, b in pairs if facts[-1].false_over(a, b, frames)]
  if elsewhere:
    a, b = elsewhere[rng.integers(len(elsewhere))]
    out["time"] = steps[:-1] + [(a, b, steps[-1][2])]
  a, b = pairs[rng.integers(len(pairs))]
  if facts[-1].text.startswith("the background") and (unseen := [n for n in BACKDROPS if n not in
                                                                  {name for _, name in world.backdrops}]):
    invented = f"the background turns {unseen[rng.integers(len(unseen))]}"
  else:
    absent = [(k, c) for k in SHAPES for c in COLOURS
              if not any(s.shape == k and c in (s.colour, s.colour_at(world.duration)) for s in world.shapes)]
    k, c = absent[rng.integers(len(absent))]
    invented = f"a {list(SIZES)[rng.integers(len(SIZES))]} {c} {k} enters from the {SIDES[rng.integers(len(SIDES))]}"
  at = int(rng.integers(len(steps) + 1))
  out["invented"] = steps[:at] + [(a, b, invented)] + steps[at:]
  if len(steps) >= 2:
    out["dropped"] = steps[:-1]
  return out


def template(q: QARecord) -> tuple:
  """The question with every world-specific word blanked: what a text-only guesser can key on."""
  vocab = "|".join([*COLOURS, *BACKDROPS, *SHAPES, *SIZES, *SIDES, *WORDS])
  return q.question_type, q.form, re.sub(rf"\b({vocab})s?\b|\d+:\d+|\d+", "_", q.question)


def baselines(train: Sequence[QARecord], test: Sequence[QARecord]) -> dict[str, dict[str, bool | float]]:
  """Two guessers on `test` that never see a frame, per record id (the demo prints them as rows):
  * "text only": the most common training answer of the question's template (for multiple choice,
    the option whose text is most often right): what a model can score from the question alone.
  * "chance": the expected accuracy of a uniform guess, 1 / options for multiple choice, 1 / (the
    number of answers the template takes in training) for open questions.
  Returns {"text only": {id: right}, "chance": {id: probability right}}."""
  counts = collections.defaultdict(collections.Counter)
  for q in train:
    counts[template(q)][q.answer_text] += 1
  text, chance = {}, {}
  for q in test:
    c = counts[template(q)]
    if q.form == "mc":
      text[q.id] = max(q.options, key=lambda o: c[o]) == q.answer_text
      chance[q.id] = 1 / len(q.options)
    else:
      text[q.id] = bool(c) and c.most_common(1)[0][0] == q.answer
      chance[q.id] = 1 / len(c) if c else 0.0  # a template training never asks: no guess
  return {"text only": text, "chance": chance}


def _falsify(text: str, rng) -> str:
  for group in (list(COLOURS), list(BACKDROPS), list(SIDES), list(SHAPES), ["large", "small"]):
    for word in group:
      if f" {word}" in f" {text}":
        other = [w for w in group if w != word]
        return f" {text}".replace(f" {word}", f" {other[rng.integers(len(other))]}", 1)[1:]
  return text + " and a second identical copy appears"


# The toy tokenizer's special tokens take ids 0..6 in this order (the demo model config uses them).
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>")


def train_tokenizer(out_dir: str, vocab_size: int = 1024) -> str:
  """A small byte-level BPE trained on the train split's prompts and targets, with Qwen's special
  tokens (ids 0..6). The demo model uses it; the real-scale path uses the Qwen tokenizer."""
  texts = [chat.SYSTEM, chat.user_prompt("caption", 0)]
  for name in ("caption", "qa", "cot"):
    for r in read_jsonl(os.path.join(out_dir, f"train_{name}.jsonl")):
      texts.append(r.text if r.kind == "caption" else chat.user_prompt("thinking", r.duration, r))
      if r.kind != "caption":
        texts += [chat.user_prompt("direct", r.duration, r), chat.target("direct", r)]
      if r.kind == "cot":
        texts.append(r.reasoning)
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(texts, trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
  path = os.path.join(out_dir, "tokenizer.json")
  tok.save(path)
  return path


def manifest(count: int, seed: int = 0, test_fraction: float = 0.2, **ranges) -> dict:
  """What a `build` with these arguments makes, as written to out_dir/manifest.json."""
  as_json = lambda v: v.to_dict() if isinstance(v, VideoSpec) else list(v) if isinstance(v, tuple) else v
  return dict(generator=GENERATOR, count=count, seed=seed, test_fraction=test_fraction,
              **{k: as_json(v) for k, v in sorted(ranges.items())})


def built(out_dir: str, want: dict) -> bool:
  """Whether out_dir holds the finished toy world `want` describes (False: not built there yet, or
  a build of it was interrupted). Another world, or videos of a generator older than manifests, is
  an error: records of one world must never be paired with another's videos."""
  path = os.path.join(out_dir, "manifest.json")
  if os.path.exists(path):
    with open(path) as f:
      have = json.load(f)
    if have != want:
      diff = {k: (have.get(k), want.get(k)) for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)}
      raise ValueError(f"{out_dir} holds another toy world (field: (there, wanted)) {diff}; "
                       "build into a new directory (or delete it)")
    return os.path.exists(os.path.join(out_dir, "tokenizer.json"))  # written last
  if os.path.isdir(os.path.join(out_dir, "videos")) and os.listdir(os.path.join(out_dir, "videos")):
    raise ValueError(f"{out_dir} holds toy-world videos of an older generator (no manifest.json); "
                     f"build into a new directory (or delete it); this one is {GENERATOR}")
  return False


def build(out_dir: str, count: int, seed: int = 0, test_fraction: float = 0.2, **ranges) -> dict[str, int]:
  """Write `count` videos under out_dir/videos, ReWatch JSONL files per split
  ({split}_caption.jsonl, {split}_qa.jsonl, {split}_cot.jsonl, {split}_cot_hallucinated.jsonl, and
  {split}_perception.jsonl: the open QA records that ask a PERCEPTION_QUESTION), the toy tokenizer
  (tokenizer.json, written last) and manifest.json (the arguments and GENERATOR, written first).
  `ranges` go to `generate` (duration, shapes, spec). Rerunning with the same arguments (after an
  interruption, say) reuses the videos; different ones raise (see `built`)."""
  want = manifest(count, seed, test_fraction, **ranges)
  built(out_dir, want)
  os.makedirs(os.path.join(out_dir, "videos"), exist_ok=True)
  with open(os.path.join(out_dir, "manifest.json"), "w") as f:
    json.dump(want, f, indent=1)
  n_test = max(1, int(round(count * test_fraction))) if count > 1 else 0
  stats = {}
  splits = (("train", range(seed, seed + count - n_test)), ("test", range(seed + count - n_test, seed + count)))
  for split, seeds in splits:
    caps, qas, cots, fakes = [], [], [], []
    for s in seeds:
      world = generate(s, **ranges)
      video = f"videos/{world.id}.mp4"
      path = os.path.join(out_dir, video)
      if not os.path.exists(path):
        write_video(world, path + ".tmp.mp4")
        os.replace(path + ".tmp.mp4", path)
      caps.append(caption(world, video))
      q, c, f = qa_records(world, video, s)
      qas += q
      cots += c
      fakes += f
    perception = [q for q in qas if q.question in PERCEPTION_QUESTIONS and q.form == "open"]
    for name, recs in (("caption", caps), ("qa", qas), ("cot", cots), ("cot_hallucinated", fakes),
                       ("perception", perception)):
      stats[f"{split}_{name}"] = write_jsonl(os.path.join(out_dir, f"{split}_{name}.jsonl"), recs)
  train_tokenizer(out_dir)
  return stats
