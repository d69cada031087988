"""The toy world's offline judges for the O&R reward: observations checked against the world itself.

A toy video is regenerated from its seed (`videos/toy-000123.mp4` is world 123, drawn with the
config's `demo` ranges and VideoSpec), so every claim an observation makes can be checked against
the world's true state, not against a caption's wording:
* a state ("the background is navy", "the number 5 is shown", "the X is behind the Y") is
  supported when it holds at one of the frames the model saw (the VideoSpec's sampling) inside the
  span, or, for a span that holds no frame, at the nearest frame on either side within
  `tolerance` seconds (one frame interval by default);
* an event ("a large red circle enters from the left", "it turns blue", "the background turns
  teal", "the GO disappears") when the world has that event between the last frame before the
  span's start and the first after its end (spans are whole seconds, so +-0.5 s of rounding; events
  fall between frames: the model cannot place one more finely), at most `tolerance` outside the
  span; a shape's colour and size are those at the event.
An observation is supported when it states at least one claim and every claim holds; a sentence
that names no claim the world can check counts as unsupported. "it" is the shape the previous
observation named.

The reasoning judge is a deterministic reader of the observations alone for the three perception
questions (toyworld.PERCEPTION_QUESTIONS): the background observed at 00:00, the first colour it is
observed to turn, the last background observed. On other questions the reader does not answer.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import numpy as np

from rewatch_jax.data.video import VideoSpec
from rewatch_jax.demo import toyworld
from rewatch_jax.rewards.answers import normalise
from rewatch_jax.rewards.format import Step
from rewatch_jax.rewards.judges import Item, Judge

_COLOUR, _BACK = "|".join(toyworld.COLOURS), "|".join(toyworld.BACKDROPS)
_SHAPE, _SIZE, _SIDE = "|".join(toyworld.SHAPES), "|".join(toyworld.SIZES), "|".join(toyworld.SIDES)
_OBJ = rf"(?:(?P<size>{_SIZE})\s+)?(?:(?P<colour>{_COLOUR})\s+)?(?P<shape>{_SHAPE})"
_OBJ2 = rf"(?:(?P<size2>{_SIZE})\s+)?(?:(?P<colour2>{_COLOUR})\s+)?(?P<shape2>{_SHAPE})"
_WORD = r"(?P<word>[A-Z]+|\d)"
# (kind, pattern) in the order they are tried on each clause
_CLAIMS = (
    ("background", re.compile(rf"^the background is (?P<back>{_BACK})$")),
    ("background turns", re.compile(rf"^the background turns (?P<back>{_BACK})$")),
    ("enters", re.compile(rf"^(?:a|an|the) {_OBJ} enters(?: from the (?P<side>{_SIDE}))?$")),
    ("leaves", re.compile(rf"^the {_OBJ} leaves(?: on the (?P<side>{_SIDE}))?$")),
    ("turns", re.compile(rf"^(?:it|the {_OBJ}) turns (?P<to>{_COLOUR})$")),
    ("becomes", re.compile(rf"^(?:it|the {_OBJ}) becomes (?P<to>{_SIZE})$")),
    ("behind", re.compile(rf"^the {_OBJ} is behind the {_OBJ2}$")),
    ("shown", re.compile(rf"^the (?:number |word )?{_WORD} (?:is shown|appears)(?: at the (?P<corner>top|bottom))?$",
                         re.I)),
    ("gone", re.compile(rf"^the (?:number |word )?{_WORD} disappears$", re.I)),
)


def claims(observation: str) -> list[tuple[str, dict]] | None:
  """The claims of an observation's text, or None where a clause is none the world can check."""
  out = []
  for clause in re.split(r";|,|\band\b|\.", observation):
    clause = re.sub(r"\s+", " ", clause).strip()
    if not clause:
      continue
    for kind, pattern in _CLAIMS:
      m = pattern.match(clause if kind in ("shown", "gone") else clause.lower())
      if m:
        out.append((kind, {k: v for k, v in m.groupdict().items() if v}))
        break
    else:
      return None
  return out


class ToyJudge(Judge):
  """Judges for the demo's toy world (see the module docstring); built from a run's config."""

  def __init__(self, config):
    self.demo = dict(config.demo)
    self.spec = VideoSpec(**config.video_spec)
    self.tolerance = config.rl.reward.tolerance or 1.0 / self.spec.fps

  @functools.lru_cache(maxsize=4096)  # noqa: B019 (one judge a run; worlds are small)
  def world(self, video: str) -> toyworld.World:
    seed = int(re.search(r"toy-(\d+)", video).group(1))
    return toyworld.generate(seed, duration=tuple(self.demo["duration"]), shapes=tuple(self.demo["shapes"]),
                             spec=self.spec)

  def frames(self, world: toyworld.World) -> np.ndarray:
    """The times of the frames the model sees."""
    return np.asarray(world.frames)

  def observations(self, items: Sequence[Item]) -> list[list[bool]]:
    out = []
    for item in items:
      world, last = self.world(item.record.video), None
      verdicts = []
      for step in item.steps:
        ok, last = self.supported(world, step, last)
        verdicts.append(ok)
      out.append(verdicts)
    return out

  def supported(self, world: toyworld.World, step: Step, last: toyworld.Shape | None):
    """(whether every claim of the step holds over its span, the shape it was about)."""
    found = claims(step.observation)
    if not found:
      return False, last
    frames = self.frames(world)
    # events: between the frames around the span (whole seconds: +-0.5 s of rounding), no finer
    # than the model can place them, at most `tolerance` outside it
    before, after = frames[frames <= step.start - 0.5], frames[frames >= step.end + 0.5]
    lo = max(step.start - self.tolerance, before[-1] if len(before) else -np.inf)
    hi = min(step.end + self.tolerance, after[0] if len(after) else np.inf)
    before, after = frames[frames <= step.start], frames[frames >= step.end]
    seen = [t for t in frames if step.start <= t <= step.end]
    if not seen:  # states: a span between two frames is judged on the nearest one on each side
      seen = [t for t in (before[-1:].tolist() + after[:1].tolist()) if abs(t - step.start) <= self.tolerance
              or abs(t - step.end) <= self.tolerance]
    ok = True
    for kind, c in found:
      shapes = [s for s in world.shapes if _matches(s, c, world)] if "shape" in c else ([last] if last else [])
      holds = _holds(world, kind, c, shapes, seen, lo, hi)
      ok &= holds
      if shapes and len(shapes) == 1:
        last = shapes[0]
    return ok, last

  def reasoning(self, items: Sequence[Item]) -> list[bool]:
    out = []
    for item in items:
      answer = read_perception(item.record.question, item.steps)
      out.append(answer is not None and normalise(answer) == normalise(item.record.answer_text))
    return out


def _matches(shape: toyworld.Shape, c: dict, world: toyworld.World) -> bool:
  """Whether `shape` fits a claim's description (its colour or size at any moment on screen)."""
  if shape.shape != c["shape"]:
    return False
  colours = {shape.colour, *([shape.colour_change[1]] if shape.colour_change else [])}
  sizes = {shape.size, *([shape.size_change[1]] if shape.size_change else [])}
  return c.get("colour", shape.colour) in colours and c.get("size", shape.size) in sizes


def _holds(world, kind: str, c: dict, shapes: list, seen: list[float], lo: float, hi: float) -> bool:
  inside = lambda t: lo <= t <= hi
  on_screen = lambda s, t: s.enter_t <= t < s.leave_t
  if kind == "background":
    return any(world.backdrop_at(t) == c["back"] for t in seen)
  if kind == "background turns":
    return any(inside(t) and name == c["back"] for t, name in world.backdrops[1:])
  if kind == "shown":
    return any(x.word == c["word"].upper() and c.get("corner", x.corner).lower() == x.corner
               and any(x.start <= t < x.end for t in seen) for x in world.texts)
  if kind == "gone":
    return any(x.word == c["word"].upper() and inside(x.end) for x in world.texts)
  if kind == "behind":
    fronts = [s for s in world.shapes if s.shape == c["shape2"] and _matches(s, dict(c, shape=c["shape2"],
                                                                                      colour=c.get("colour2"),
                                                                                      size=c.get("size2")), world)]
    return any(o.z > s.z and any(on_screen(s, t) and on_screen(o, t) for t in seen) for s in shapes for o in fronts)
  for s in shapes:
    if kind in ("enters", "leaves"):
      t, side = (s.enter_t, s.enter_side) if kind == "enters" else (s.leave_t, s.leave_side)
      if inside(t) and t < world.duration and c.get("side", side) == side \
          and c.get("colour", s.colour_at(t)) == s.colour_at(t) and c.get("size", s.size_at(t)) == s.size_at(t):
        return True
    if kind == "turns" and s.colour_change and inside(s.colour_change[0]) and s.colour_change[1] == c["to"]:
      return True
    if kind == "becomes" and s.size_change and inside(s.size_change[0]) and s.size_change[1] == c["to"]:
      return True
  return False


def read_perception(question: str, steps: Sequence[Step]) -> str | None:
  """The answer a reader of the observations alone gives to a perception question, else None."""
  start, first_turn, end = toyworld.PERCEPTION_QUESTIONS
  seen = []  # (time, backdrop, is a change)
  for step in steps:
    for kind, c in claims(step.observation) or []:
      if kind in ("background", "background turns"):
        seen.append((step.start, c["back"], kind == "background turns"))
  if question == start:
    return next((b for t, b, _ in seen if t == 0), None)
  if question == first_turn:
    return next((b for _, b, turn in sorted(seen) if turn), None)
  if question == end:
    return sorted(seen)[-1][1] if seen else None
  return None
