"""What `launch/train.py` runs for a resolved run: evaluation before training (if asked), each
training stage (an optional pretraining stage, the SFT, then RL: one stage, or several arms from the
same weights), an evaluation after each (RL stages: the held-out prompts in thinking mode), the video
ablation, and the results (results.json, every answer in eval_<stage>.jsonl, a table). The recipe's
hooks (Run.hooks) add to the results; the demo's add its guessers and a perception column.
"""

from __future__ import annotations

import json
import logging

import jax
from etils import epath

from rewatch_jax.data import chat
from rewatch_jax.evaluation import evaluate, report
from rewatch_jax.train import grpo, sft
from rewatch_jax.train import state as train_state
from rewatch_jax.train.resolve import Run

log = logging.getLogger(__name__)


def write_config(run: Run) -> None:
  """<workdir>/config.json: the resolved config, the one the run reads."""
  if jax.process_index() == 0:
    epath.Path(run.workdir).mkdir(parents=True, exist_ok=True)
    (epath.Path(run.workdir) / "config.json").write_text(run.config.to_json_best_effort(indent=2))


def run(run: Run) -> dict:
  """Every stage of `run`; returns the results (also written under the workdir). A stage stopped
  by SIGTERM ends the run after its checkpoint: the same command resumes it."""
  write_config(run)
  c = run.config
  results, model = {}, None
  if c.eval.enabled and c.eval.before:
    model = train_state.build_model(c, run.model, run.mesh)
    results["before"] = _evaluate(run, model)
  start, last = None, None  # the weights every RL arm starts from; the last SFT-type stage
  for stage in run.stages:
    if stage.trainer == "grpo":
      if start is None:
        start = model if model is not None else train_state.build_model(c, run.model, run.mesh)
        if c.rl.eval_set:
          results[f"after_{last.name}_thinking" if last else "before_rl"] = _evaluate_thinking(run, start)
      model, trained = grpo.train(run, stage, model=start)
    else:
      model, trained = sft.train(run, stage, model=model)
      last, sft_model = stage, model
    results[stage.name] = {"steps": trained.step, "final_loss": trained.final_loss}
    if trained.step < stage.total_steps:
      return results
    if stage.trainer == "grpo" and c.rl.eval_set:
      results[f"after_{stage.name}"] = _evaluate_thinking(run, model)
    elif stage.trainer != "grpo" and c.eval.enabled:
      results[f"after_{stage.name}"] = _evaluate(run, model)
  if c.eval.enabled and c.eval.ablation and last:  # what the accuracy owes to the video (evaluation/ablations.py)
    results[f"after_{last.name}_{c.eval.ablation}"] = _evaluate(run, sft_model, c.eval.ablation)
  results = run.hooks.report(results)
  if jax.process_index() == 0:
    for name, r in results.items():  # every answer, to read or re-score: eval_<name>.jsonl
      if "predictions" in r:
        lines = "".join(json.dumps(p) + "\n" for p in r["predictions"])
        (epath.Path(run.workdir) / f"eval_{name}.jsonl").write_text(lines)
    summary = {k: {a: b for a, b in v.items() if a != "predictions"} for k, v in results.items()}
    (epath.Path(run.workdir) / "results.json").write_text(json.dumps(summary, indent=2))
    table = report.table(results, run.hooks.table_columns(), run.hooks.table_note())
    if table:
      log.info("results (%s/results.json):\n%s", run.workdir, table)
  return results


def _evaluate_thinking(run: Run, model) -> dict:
  """The RL prompts' held-out set in thinking mode, each observation judged (rl.eval_set)."""
  c = run.config
  result = evaluate(model, c.data.dir, c.rl.eval_set, chat.qwen_tokenizer(c.tokenizer), run.rl_buckets,
                    c.eval.batch_size, c.rl.max_new_tokens, stop_ids=run.model.stop_token_ids, pad_id=c.data.pad_id,
                    seed=c.seed, judge=grpo.make_judge(run))
  run.hooks.scored(result)
  return result


def _evaluate(run: Run, model, ablation: str = "") -> dict:
  e = run.config.eval
  result = evaluate(model, e.dir, e.set, chat.qwen_tokenizer(run.config.tokenizer), run.eval_buckets, e.batch_size,
                    e.max_new_tokens, stop_ids=run.model.stop_token_ids, pad_id=run.config.data.pad_id,
                    limit=e.limit or None, ablation=ablation, seed=run.config.seed)
  if result["cut_off"]:
    log.warning("%d of %d answers were cut off by eval.max_new_tokens=%d (scored as unparseable); raise it",
                result["cut_off"], result["n"], e.max_new_tokens)
  run.hooks.scored(result)
  return result
