"""What a run would cost, before anything is spent (`launch/synthesize.py --dry_run`).

Reads only the videos' headers (durations). Per stage: the requests, prompt tokens and completion
tokens (each request's max_tokens: an upper bound) and their cost at the config's prices. The
prompt estimates: `caption.image_tokens` per frame, characters / 4 for text, the detailed caption
as long as its captioning requests may answer; the counts downstream of the filters assume
`dry_run_keep_fraction` of the pairs kept and ReWatch's 2.3 ReAct steps per trajectory (section 4)."""

from __future__ import annotations

import math
import os

from data_synthesis import stages
from data_synthesis.roles import template
from rewatch_jax.data.video import source
from rewatch_jax.data.video.ffmpeg import VideoError

REACT_STEPS = 2.3  # the paper's mean steps per trajectory


def estimate(run) -> dict[str, dict[str, float]]:
  c, roles, prices = run.c, run.roles, run.costs
  rows = {s: dict(requests=0.0, prompt_tokens=0.0, completion_tokens=0.0, cost=0.0) for s in stages.STAGE_NAMES}
  unreadable = 0

  def add(stage: str, role: str, n: float, prompt: float, model: str = "") -> None:
    r, model = roles[role], model or roles[role].model
    row = rows[stage]
    row["requests"] += n
    row["prompt_tokens"] += n * (prompt + len(template(r.prompt)) / 4)
    row["completion_tokens"] += n * r.max_tokens
    row["cost"] += prices.estimate(model, n, prompt + len(template(r.prompt)) / 4, r.max_tokens)

  caption_tokens = 0.0
  videos = stages.find_videos(run.videos_dir)
  for video in videos:
    try:
      duration = source.probe(os.path.join(run.videos_dir, video)).duration
    except VideoError:
      unreadable += 1
      continue
    frames = min(c.caption.max_frames, duration * c.caption.caption_fps)
    if duration > c.caption.segment_length:
      add("caption", "segment", 1, min(c.caption.frames_per_call, duration * c.caption.segment_fps)
          * c.caption.image_tokens)
    n = max(1, math.ceil(duration / c.caption.segment_length))
    add("caption", "caption", n, min(c.caption.frames_per_call, frames / n) * c.caption.image_tokens)
    caption_tokens += n * roles["caption"].max_tokens
  count = len(videos) - unreadable
  per_caption = caption_tokens / max(1, count)
  add("qa", "summary", count, per_caption)
  add("qa", "qa", count, per_caption + roles["summary"].max_tokens)
  pairs = count * c.qa.per_video
  add("filter", "verify", pairs, per_caption)
  for m in c.filter.text_probes:
    add("filter", "probe_text", pairs, 30, model=m)
  for m in c.filter.summary_probes:
    add("filter", "probe_summary", pairs, 30 + roles["summary"].max_tokens, model=m)
  kept = pairs * c.dry_run_keep_fraction
  add("mc", "rewrite", kept, 40)
  trajectories = kept * len(c.cot.forms)
  history = REACT_STEPS * (roles["reasoner"].max_tokens + roles["observer"].max_tokens) / 2
  add("cot", "reasoner", trajectories * (REACT_STEPS + 1), 60 + history)
  add("cot", "observer", trajectories * REACT_STEPS, per_caption)
  add("cot", "convert", trajectories, 60 + history)
  rows["total"] = {k: sum(r[k] for r in rows.values()) for k in ("requests", "prompt_tokens", "completion_tokens",
                                                                  "cost")}
  rows["total"]["videos"], rows["total"]["unreadable"] = count, unreadable
  return rows


def table(rows: dict[str, dict[str, float]]) -> str:
  t = rows["total"]
  lines = [f"dry run over {t['videos']} videos ({t['unreadable']} unreadable); completion tokens are upper bounds "
           "(max_tokens)", f"{'stage':8s} {'requests':>10s} {'prompt tok':>12s} {'compl. tok':>12s} {'cost USD':>10s}"]
  for stage, r in rows.items():
    lines.append(f"{stage:8s} {r['requests']:10.0f} {r['prompt_tokens']:12.0f} {r['completion_tokens']:12.0f} "
                 f"{r['cost']:10.2f}")
  return "\n".join(lines)
