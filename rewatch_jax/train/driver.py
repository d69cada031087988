"""What `launch/train.py` runs for a resolved run: evaluation before training (if asked), each
training stage (an optional pretraining stage, the SFT, then RL, each optional), an evaluation after each, the video
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
  for stage in run.stages:
    trainer = grpo if stage.trainer == "grpo" else sft
    model, trained = trainer.train(run, stage, model=model)
    results[stage.name] = {"steps": trained.step, "final_loss": trained.final_loss}
    if trained.step < stage.total_steps:
      return results
    if c.eval.enabled:
      results[f"after_{stage.name}"] = _evaluate(run, model)
  if c.eval.enabled and c.eval.ablation:  # what the accuracy owes to the video (evaluation/ablations.py)
    results[f"after_{run.stages[-1].name}_{c.eval.ablation}"] = _evaluate(run, model, c.eval.ablation)
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
