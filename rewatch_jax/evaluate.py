"""Accuracy on a prepared prompt set (qa_eval: direct answers; rl: thinking) with greedy decoding
and the shared answer parser. Unparseable answers count as wrong and are reported separately.

Ablations show what a model takes from the video (`ablation=`):
* "swap": each question gets the frames of *another* video with the same patch layout (the set is
  read in a seeded shuffled order so that a batch mixes videos). The frames stay in distribution;
  only their content no longer fits the question. A model that answers from the question alone
  scores the same; one that reads the video drops. `swapped` reports the fraction that moved.
* "blank": every frame replaced by zeros (mid-grey after normalisation). Out of distribution, so a
  drop can mean "the model is confused", not "the model reads the video"; prefer "swap".
The result holds every `predictions` row (record id, video, question, answer, response, correct:
True / False / None when unparseable, truncated: no EOS within `max_new_tokens`); the trainer's
driver writes them to `<workdir>/eval_<stage>.jsonl`. `cut_off` counts the answers opened but not
closed when the token budget ran out: scored as unparseable through no fault of the model (the
driver warns).
"""

from __future__ import annotations

import collections
import json
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rewatch_jax.data import pipeline, tfds_rewatch
from rewatch_jax.rewards.answers import answer_unclosed, is_correct
from rewatch_jax.sampling import greedy_generate


ABLATIONS = ("", "swap", "blank")


def evaluate(model, data_dir: str, config_name: str, tokenizer, buckets: Sequence[pipeline.Bucket], batch_size: int,
             max_new_tokens: int, eos_id: int, pad_id: int, limit: int | None = None,
             ablation: str = "", seed: int = 0) -> dict:
  if ablation not in ABLATIONS:
    raise ValueError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
  pc = pipeline.PipelineConfig(data_dir=data_dir, batch_size=batch_size, buckets=buckets, pad_id=pad_id)
  correct = parsed = n = swapped = truncated = cut_off = 0
  by_type = collections.defaultdict(lambda: [0, 0])
  by_form = collections.defaultdict(lambda: [0, 0])
  predictions = []
  order = dict(shuffle_seed=seed) if ablation == "swap" else {}
  for batch in pipeline.eval_dataset(pc, model.config, config_name, **order):
    inputs = batch["inputs"]
    if ablation == "blank":
      # normalised zeros (float rows; the pipeline's rows are raw uint8, where 0 would be black)
      inputs = inputs.replace(pixel_values=np.zeros(inputs.pixel_values.shape, np.float32))
    elif ablation == "swap":
      inputs, moved = swap_videos(inputs, [json.loads(r)["video"] for r in batch["meta"]["record"]])
      swapped += moved
    tokens = np.asarray(greedy_generate(model, jax.tree.map(jnp.asarray, inputs), max_new_tokens, eos_id))
    for row, record_json in zip(tokens, batch["meta"]["record"]):
      rec = json.loads(record_json)
      ids = row.tolist()
      cut = ids.index(eos_id) if eos_id in ids else len(row)
      hit_limit = cut == len(row)
      text = tokenizer.decode(ids[:cut], skip_special_tokens=False)
      verdict = is_correct(text, rec["answer"], rec["form"], tuple(rec["options"]))
      n += 1
      truncated += hit_limit
      cut_off += hit_limit and answer_unclosed(text)
      parsed += verdict is not None
      correct += bool(verdict)
      by_type[rec["question_type"]][0] += bool(verdict)
      by_type[rec["question_type"]][1] += 1
      by_form[rec["form"]][0] += bool(verdict)
      by_form[rec["form"]][1] += 1
      predictions.append(dict(id=rec["id"], video=rec["video"], question=rec["question"],
                              question_type=rec["question_type"], form=rec["form"], answer=rec["answer"],
                              response=text, correct=verdict, truncated=hit_limit))
    if limit and n >= limit:
      break
  out = dict(accuracy=correct / max(n, 1), parsed_rate=parsed / max(n, 1), n=n,
             **tfds_rewatch.video_spec_of(data_dir, [config_name]),
             truncated=truncated / max(n, 1), cut_off=cut_off,
             by_type={k: v[0] / v[1] for k, v in sorted(by_type.items())},
             by_form={k: v[0] / v[1] for k, v in sorted(by_form.items())}, predictions=predictions)
  if ablation == "swap":
    out["swapped"] = swapped / max(n, 1)
  return out


def swap_videos(inputs, videos: list[str]):
  """Give each example the pixels of an example from another video with the same patch layout
  (same rotary ids and segments, so the rows are interchangeable). Within each layout group the
  examples are sorted by video and shifted by the largest video's count: everyone moves to another
  video whenever no video holds more than half the group. Returns (inputs, number moved)."""
  layout = np.concatenate([np.asarray(inputs.vision_rotary_ids).reshape(len(videos), -1),
                           np.asarray(inputs.window_segment), np.asarray(inputs.frame_segment)], axis=1)
  groups = collections.defaultdict(list)
  for i, row in enumerate(layout):
    groups[row.tobytes()].append(i)
  src = np.arange(len(videos))
  for members in groups.values():
    count = collections.Counter(videos[i] for i in members)
    order = sorted(members, key=lambda i: (-count[videos[i]], videos[i]))
    shift = max(count.values())
    if shift < len(order):
      src[order] = np.roll(order, -shift)
  moved = sum(videos[j] != videos[i] for i, j in enumerate(src))
  return inputs.replace(pixel_values=np.asarray(inputs.pixel_values)[src]), moved
