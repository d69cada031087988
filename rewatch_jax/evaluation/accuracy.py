"""Accuracy on a prepared prompt set (qa_eval: direct answers; rl: thinking) with greedy decoding
and the shared answer parser. Unparseable answers count as wrong and are reported separately;
`ablation=` swaps or blanks the videos (ablations.py: what the model takes from the video; with
"swap", `swapped` reports the fraction of questions whose frames moved).
Answers are scored by the record's answer type (rewards/accuracy.py); accuracy is the mean score,
which for multiple choice and open answers is the fraction right.
The result holds every `predictions` row (record id, video, question, answer, response, score,
correct: the score is 1 / it is not / None when unparseable, truncated: no stop token within
`max_new_tokens`, cut_off: an answer opened but not closed when the token budget ran out, scored as
unparseable through no fault of the model; the driver warns); the trainer's driver writes them to
`<workdir>/eval_<stage>.jsonl`.
Batches are full and placed on the mesh like training batches (the last one padded with copies,
which are not scored), so each bucket compiles once and several hosts evaluate one set together:
each generates for its own rows, and the rows are gathered to every process at the end.
"""

from __future__ import annotations

import collections
import json
import math
from collections.abc import Sequence

import jax
from tqdm import tqdm

from rewatch_jax.data import pipeline, tfds_rewatch
from rewatch_jax.data import records as records_lib
from rewatch_jax.data.batching import Bucket
from rewatch_jax.evaluation.ablations import ABLATIONS, blank_videos, swap_videos
from rewatch_jax.generate import generate
from rewatch_jax.mesh import allgather_json, model_mesh
from rewatch_jax.rewards.accuracy import score_answer
from rewatch_jax.rewards.answers import answer_unclosed
from rewatch_jax.rewards.format import check_format
from rewatch_jax.rewards.judges import Item, Judge


def evaluate(model, data_dir: str, name: str, tokenizer, buckets: Sequence[Bucket], batch_size: int,
             max_new_tokens: int, stop_ids: Sequence[int], pad_id: int, limit: int | None = None,
             ablation: str = "", seed: int = 0, mesh: jax.sharding.Mesh | None = None,
             judge: Judge | None = None) -> dict:
  """Accuracy of `model` on the prepared set `name` under `data_dir`. `batch_size`: the global
  batch (split over processes, whose batches go onto `mesh`, by default the one the model's
  parameters are on, like a training batch). `judge` (thinking-mode sets, which keep each video's
  caption): each response's re-watch steps are judged too (observations, unsupported). Every
  process returns the result over all of them."""
  if ablation not in ABLATIONS:
    raise ValueError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
  mesh = mesh or model_mesh(model)
  check_batch(batch_size, mesh)
  pc = pipeline.PipelineConfig(data_dir=data_dir, batch_size=batch_size // jax.process_count(), buckets=buckets,
                               pad_id=pad_id)
  predictions, swapped, batches = [], 0, 0
  order = dict(shuffle_seed=seed) if ablation == "swap" else {}
  total = -(-len(pipeline.source(data_dir, name)) // batch_size)
  progress = tqdm(total=min(total, -(-limit // batch_size)) if limit else total, unit="batch", dynamic_ncols=True,
                  desc=f"eval {name}" + (f" ({ablation})" if ablation else ""), disable=jax.process_index() != 0)
  for batch in pipeline.eval_dataset(pc, model.config, name, **order):
    inputs, real = batch["inputs"], batch["meta"]["real"]
    records = [json.loads(r) for r in batch["meta"]["record"][:real]]
    captions = batch["meta"].get("caption", [""] * len(records))
    if ablation == "blank":
      inputs = blank_videos(inputs)
    elif ablation == "swap":
      inputs, moved = swap_videos(inputs, [r["video"] for r in records])
      swapped += moved
    placed, _ = pipeline.to_global(dict(inputs=inputs), mesh)
    out = generate(model, placed["inputs"], max_new_tokens=max_new_tokens, stop_ids=stop_ids, mesh=mesh)  # greedy
    tokens, lengths = pipeline.rows_to_host((out.tokens, out.lengths), mesh)
    rows = []
    for row, length, rec, caption in zip(tokens, lengths, records, captions):
      stopped = row[length - 1] in stop_ids
      text = tokenizer.decode(row[:length - stopped].tolist(), skip_special_tokens=False)
      record = records_lib.from_json(rec)
      parsed, score = score_answer(text, record)
      rows.append(dict(id=rec["id"], video=rec["video"], question=rec["question"],
                       question_type=rec["question_type"], form=rec["form"], answer=rec["answer"],
                       response=text, score=score, correct=None if parsed is None else score == 1.0,
                       truncated=not stopped, cut_off=not stopped and answer_unclosed(text)))
      if judge is not None:
        rows[-1]["item"] = Item(record, caption, check_format(text, record.duration, min_steps=0).steps)
    if judge is not None:  # every response's steps, as written (a broken structure keeps those before the break)
      verdicts = judge.observations([r.pop("item") for r in rows])
      for r, v in zip(rows, verdicts):
        r.update(observations=len(v or []), unsupported=None if v is None else sum(not ok for ok in v))
    predictions += rows
    batches += 1
    progress.update()
    if limit and batches * batch_size >= limit:
      break
  progress.close()
  if jax.process_count() > 1:  # every process's rows, in process order
    predictions = [p for part in allgather_json(predictions) for p in part]
    swapped = sum(allgather_json(swapped))
  n = max(len(predictions), 1)
  out = dict(accuracy=sum(p["score"] for p in predictions) / n,
             parsed_rate=sum(p["correct"] is not None for p in predictions) / n, n=len(predictions),
             **tfds_rewatch.identity(data_dir, [name]),
             truncated=sum(p["truncated"] for p in predictions) / n, cut_off=sum(p["cut_off"] for p in predictions),
             by_type=_rate(predictions, "question_type"), by_form=_rate(predictions, "form"), predictions=predictions)
  out["stderr"] = math.sqrt(out["accuracy"] * (1 - out["accuracy"]) / n)  # of the mean, for 0/1 scores
  if judge is not None:
    judged = [p for p in predictions if p["unsupported"] is not None]
    seen = sum(p["observations"] for p in judged)
    out.update(observations_per_response=sum(p["observations"] for p in predictions) / n,
               unsupported_observation_rate=sum(p["unsupported"] for p in judged) / seen if seen else float("nan"))
  if ablation == "swap":
    out["swapped"] = swapped / n
  return out


def check_batch(batch_size: int, mesh: jax.sharding.Mesh) -> None:
  rows = pipeline.batch_rows(mesh)
  if batch_size % jax.process_count() or batch_size % rows:
    raise ValueError(f"eval.batch_size {batch_size} must divide by processes ({jax.process_count()}) and by the "
                     f"mesh's batch axes (data x fsdp = {rows} devices): use a multiple of {rows}")


def _rate(predictions: list[dict], key: str) -> dict[str, float]:
  groups = collections.defaultdict(list)
  for p in predictions:
    groups[p[key]].append(p["score"])
  return {k: sum(v) / len(v) for k, v in sorted(groups.items())}
