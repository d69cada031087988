"""Accuracy on a prepared prompt set (qa_eval: direct answers; rl: thinking) with greedy decoding
and the shared answer parser. Unparseable answers count as wrong and are reported separately.

`blank_video=True` is the ablation that shows what a model takes from the video: every frame is
replaced by a constant (mid-grey after normalisation: zeros) while the prompt, the number of
visual tokens and their positions stay the same. A model that only learnt answer priors from the
question text scores the same with and without it."""

from __future__ import annotations

import collections
import json

import jax
import jax.numpy as jnp
import numpy as np

from rewatch_jax.data import pipeline
from rewatch_jax.rewards.answers import is_correct
from rewatch_jax.sampling import greedy_generate


def evaluate(model, data_dir: str, config_name: str, tokenizer, bucket: pipeline.Bucket, batch_size: int,
             max_new_tokens: int, eos_id: int, pad_id: int, limit: int | None = None,
             blank_video: bool = False) -> dict:
  pc = pipeline.PipelineConfig(data_dir=data_dir, batch_size=batch_size, buckets=[bucket], pad_id=pad_id)
  correct = parsed = n = 0
  by_type = collections.defaultdict(lambda: [0, 0])
  by_form = collections.defaultdict(lambda: [0, 0])
  samples = []
  for batch in pipeline.eval_dataset(pc, model.config, config_name):
    inputs = batch["inputs"]
    if blank_video:
      inputs = inputs.replace(pixel_values=np.zeros_like(inputs.pixel_values))
    tokens = np.asarray(greedy_generate(model, jax.tree.map(jnp.asarray, inputs), max_new_tokens, eos_id))
    for row, record_json in zip(tokens, batch["meta"]["record"]):
      rec = json.loads(record_json)
      cut = row.tolist().index(eos_id) if eos_id in row.tolist() else len(row)
      text = tokenizer.decode(row[:cut].tolist(), skip_special_tokens=False)
      verdict = is_correct(text, rec["answer"], rec["form"], tuple(rec["options"]))
      n += 1
      parsed += verdict is not None
      correct += bool(verdict)
      by_type[rec["question_type"]][0] += bool(verdict)
      by_type[rec["question_type"]][1] += 1
      by_form[rec["form"]][0] += bool(verdict)
      by_form[rec["form"]][1] += 1
      if len(samples) < 5:
        samples.append({"question": rec["question"], "answer": rec["answer"], "response": text})
    if limit and n >= limit:
      break
  return dict(accuracy=correct / max(n, 1), parsed_rate=parsed / max(n, 1), n=n,
              by_type={k: v[0] / v[1] for k, v in sorted(by_type.items())},
              by_form={k: v[0] / v[1] for k, v in sorted(by_form.items())}, samples=samples)
