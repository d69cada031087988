"""The demo's part of a run (`config.hooks = "rewatch_jax.demo.hooks:Demo"`): it generates and
prepares the toy world (`config.demo`) under <workdir>/data, scores the held-out perception
questions apart, and puts two guessers that never see a frame at the top of the results table.
"""

from __future__ import annotations

import logging
import math
import os
from typing import NamedTuple

from rewatch_jax.data import records, tfds_rewatch
from rewatch_jax.data.video import VideoSpec
from rewatch_jax.demo import toyworld
from rewatch_jax.train.resolve import Hooks

log = logging.getLogger(__name__)

# The prepared sets the demo trains and evaluates on: (name, split, records file, kind). The
# perception questions (the backdrop's colour at a named moment) are a QA subset prepared as a set
# of their own, so a stage can weight them as a task; their CoT traces likewise (thinking-mode
# answers to them, learnt before RL), and their prompts for RL (with the captions).
SETS = (("caption", "train", "caption", "caption"), ("qa", "train", "qa", "qa"), ("cot", "train", "cot", "cot"),
        ("perception", "train", "perception", "qa"), ("qa_eval", "test", "qa", "qa_eval"),
        ("perception_cot", "train", "perception_cot", "cot"), ("rl", "train", "perception", "rl"))


class ToyData(NamedTuple):
  data_dir: str  # the prepared sets (SETS)
  tokenizer: str  # the toy tokenizer trained on the world's text
  perception: frozenset[str]  # ids of the held-out perception questions
  guessers: dict[str, dict]  # toyworld.baselines on the held-out questions


def prepare_toyworld(demo, spec: VideoSpec, workdir: str) -> ToyData:
  """Generate the toy world `demo` describes (videos, seed, test_fraction, duration and shapes
  ranges) and prepare its sets under <workdir>/data, unless they are there already."""
  root = os.path.join(workdir, "data")
  toy, prepared = os.path.join(root, "toy"), os.path.join(root, "prepared")
  world = dict(seed=demo.seed, test_fraction=demo.test_fraction, duration=tuple(demo.duration),
               shapes=tuple(demo.shapes), spec=spec)
  if not toyworld.built(toy, toyworld.manifest(demo.videos, **world)):
    log.info("toy world: generating %d videos -> %s", demo.videos, toy)
    toyworld.build(toy, demo.videos, **world)
  tokenizer = os.path.join(toy, "tokenizer.json")

  def read(split, kind, root=toy):
    if kind == "perception_cot":  # the CoT traces of the perception questions
      return [r for r in read(split, "cot", root) if r.question in toyworld.PERCEPTION_QUESTIONS and r.form == "open"]
    return list(records.read_jsonl(os.path.join(root, f"{split}_{kind}.jsonl")))

  def prepare(name, recs, root, kind, split):
    if not tfds_rewatch.set_dirs(prepared, name):
      captions = read(split, "caption", root) if kind == "rl" else ()
      report = tfds_rewatch.prepare(prepared, name, recs, root, spec, kind=kind, tokenizer=tokenizer, captions=captions)
      log.info("prepared %s: %d examples (%d skipped)", name, report["written"], len(report["skipped"]))

  for name, split, kind, set_kind in SETS:
    prepare(name, read(split, kind), toy, set_kind, split)
  if demo.rl_test_videos:  # a world of its own for the RL claims (hundreds of perception questions)
    held = os.path.join(root, "toy_rl_test")
    world = dict(world, seed=demo.seed + demo.videos, test_fraction=1.0)
    if not toyworld.built(held, toyworld.manifest(demo.rl_test_videos, **world)):
      log.info("toy world: generating %d videos for the RL test -> %s", demo.rl_test_videos, held)
      toyworld.build(held, demo.rl_test_videos, **world)
    prepare("rl_eval", read("test", "perception", held), held, "rl", "test")
  perception = frozenset(r.id for r in read("test", "perception"))
  return ToyData(prepared, tokenizer, perception, toyworld.baselines(read("train", "qa"), read("test", "qa")))


class Demo(Hooks):

  def __init__(self, config):
    super().__init__(config)
    if "demo" not in config:
      raise ValueError("the demo's hooks read config.demo (videos, seed, test_fraction, duration, shapes)")
    self.data: ToyData | None = None

  def prepare(self, config, workdir: str) -> dict:
    if not config.demo.videos:  # no toy world: the run reads config.data.dir
      return {}
    self.data = prepare_toyworld(config.demo, VideoSpec(**config.video_spec), workdir)
    return {"data.dir": self.data.data_dir, "eval.dir": self.data.data_dir, "tokenizer": self.data.tokenizer}

  def scored(self, result: dict) -> None:
    hits = [bool(p["correct"]) for p in result["predictions"] if self.data and p["id"] in self.data.perception]
    if hits:  # the accuracy on the perception questions alone
      result["perception"] = sum(hits) / len(hits)

  def report(self, results: dict) -> dict:
    if not self.data:
      return results
    for name, r in results.items():  # each RL arm against the SFT weights, question by question
      base = results.get(THINKING_BASE)
      if name.startswith("after_rl_") and base and "predictions" in r:
        r["vs_sft"], r["vs_sft_se"] = paired_difference(base["predictions"], r["predictions"])
    evaluated = next((r["predictions"] for r in results.values() if "predictions" in r), [])
    return {**guesser_rows(self.data.guessers, evaluated, self.data.perception), **results}

  def table_columns(self) -> tuple[str, ...]:
    return ("perception", "vs_sft", "vs_sft_se")

  def table_note(self) -> str:
    return ("(chance: a uniform guess, 1/4 on multiple choice, 1/(answers the question's template takes) when open;"
            " text only: the most common training answer of the question's template, no frames; perception: the"
            " open questions about the backdrop; *_swap: each question shown another video's frames, *_blank:"
            " frames blanked; *_thinking, after_rl_*: the held-out world's perception questions in thinking mode,"
            " obs/resp: well-formed re-watch steps per answer, unsupported: their share the toy world contradicts,"
            " vs_sft: an RL arm's accuracy minus the SFT weights', paired, with its standard error)")


THINKING_BASE = "after_sft_thinking"  # the thinking-mode evaluation of the SFT weights, before RL


def paired_difference(before: list[dict], after: list[dict]) -> tuple[float, float]:
  """The accuracy difference between two evaluations of the same questions and its paired standard
  error (McNemar's: from the questions one got right and the other wrong)."""
  right = lambda rows: {p["id"]: p["score"] == 1.0 for p in rows}
  a, b = right(before), right(after)
  gained = sum(b[k] and not a[k] for k in a)
  lost = sum(a[k] and not b[k] for k in a)
  n = len(a)
  return (gained - lost) / n, math.sqrt(max(gained + lost - (gained - lost) ** 2 / n, 0.0)) / n


def guesser_rows(guessers: dict[str, dict], predictions: list[dict], perception: frozenset[str]) -> dict[str, dict]:
  """Table rows for guessers that never see a frame (per question id: right, or the probability of
  it), on the questions that were evaluated."""
  mean = lambda xs: float(sum(xs) / len(xs))
  rows = {}
  for name, per_id in guessers.items():
    scored = [(p, per_id[p["id"]]) for p in predictions if p["id"] in per_id]
    if not scored:
      continue
    forms = sorted({p["form"] for p, _ in scored})
    row = dict(accuracy=mean([x for _, x in scored]), n=len(scored),
               by_form={f: mean([x for p, x in scored if p["form"] == f]) for f in forms})
    if any(p["id"] in perception for p, _ in scored):
      row["perception"] = mean([x for p, x in scored if p["id"] in perception])
    rows[name] = row
  return rows
