"""What `launch/train.py` runs: (toy-world data preparation for the demo), evaluation before,
SFT, evaluation after, and a results table."""

from __future__ import annotations

import json
import os

import jax
from etils import epath

from rewatch_jax.data import chat, pipeline, records as R, tfds_rewatch, toyworld
from rewatch_jax.data.video import VideoSpec


def prepare_toyworld(config, workdir: str) -> None:
  """Generate and prepare the demo's data under <workdir>/data unless it is already there."""
  tw = config.toyworld
  root = os.path.join(workdir, "data")
  toy, prepared = os.path.join(root, "toy"), os.path.join(root, "prepared")
  if not os.path.exists(os.path.join(toy, "tokenizer.json")):
    print(f"toy world: generating {tw.videos} videos -> {toy}")
    toyworld.build(toy, tw.videos, seed=tw.seed, test_fraction=tw.test_fraction, duration=tuple(tw.duration),
                   shapes=tuple(tw.shapes))
  tokenizer = os.path.join(toy, "tokenizer.json")
  spec = VideoSpec(**config.video_spec.to_dict())
  read = lambda split, kind: list(R.read_jsonl(os.path.join(toy, f"{split}_{kind}.jsonl")))
  for name, split, kind in (("caption", "train", "caption"), ("qa", "train", "qa"), ("cot", "train", "cot"),
                            ("qa_eval", "test", "qa")):
    if not os.path.exists(os.path.join(prepared, "rewatch", name, tfds_rewatch.VERSION, "dataset_info.json")):
      report = tfds_rewatch.prepare(prepared, name, read(split, kind), toy, spec, tokenizer=tokenizer,
                                    cache_dir=os.path.join(root, "frame_cache"))
      print(f"prepared {name}: {report['written']} examples ({len(report['skipped'])} skipped)")
  config.data.dir = config.eval.dir = prepared
  config.tokenizer = tokenizer


def _check_tokenizer(config) -> None:
  tok = chat.qwen_tokenizer(config.tokenizer or None)
  m = config.model
  want = {"<|image_pad|>": m.image_token_id, "<|video_pad|>": m.video_token_id,
          "<|vision_start|>": m.vision_start_token_id, "<|vision_end|>": m.vision_end_token_id,
          "<|im_end|>": m.eos_token_id}
  wrong = {k: (tok.token_to_id(k), v) for k, v in want.items() if tok.token_to_id(k) != v}
  if wrong:
    raise ValueError(f"tokenizer and model config disagree on special token ids (tokenizer, model): {wrong}")
  if tok.get_vocab_size() > m.text.vocab_size:
    raise ValueError(f"tokenizer has {tok.get_vocab_size()} tokens, model vocab_size is {m.text.vocab_size}")


def _evaluate(model, config, ablation: str = ""):
  from rewatch_jax.evaluate import evaluate
  e = config.eval
  tok = chat.qwen_tokenizer(config.tokenizer or None)
  result = evaluate(model, e.dir or config.data.dir, e.config, tok, pipeline.Bucket(**dict(e.bucket)), e.batch_size,
                    e.max_new_tokens, eos_id=config.model.eos_token_id, pad_id=config.data.pad_id,
                    limit=e.limit or None, ablation=ablation, seed=config.seed)
  if result["cut_off"]:
    print(f"warning: {result['cut_off']} of {result['n']} answers were cut off by eval.max_new_tokens="
          f"{e.max_new_tokens} (scored as unparseable); raise it")
  return result


def run(config, workdir: str) -> dict:
  from rewatch_jax.evaluate import ABLATIONS
  from rewatch_jax.train import sft
  if config.eval.ablation not in ABLATIONS:  # fail before training, not after
    raise ValueError(f"eval.ablation must be one of {ABLATIONS}, got {config.eval.ablation!r}")
  if config.toyworld.videos:
    prepare_toyworld(config, workdir)
  _check_tokenizer(config)
  if config.epochs:
    examples = sum(len(pipeline.source(config.data.dir, t)) * (w > 0) for t, w in config.data.weights.items())
    config.total_steps = max(1, int(config.epochs * examples / config.data.batch_size))
    print(f"{config.epochs} epochs of {examples} examples = {config.total_steps} steps")
  results = {}
  model = None
  if config.eval.enabled and config.eval.before:
    from rewatch_jax.train.mesh import make_mesh
    model = sft.build_model(config, make_mesh(dict(config.mesh)))
    results["before"] = _evaluate(model, config)
  model, train_result = sft.train(config, workdir, model=model)
  results["sft"] = {"steps": train_result.step, "final_loss": train_result.final_loss}
  if config.eval.enabled:
    results["after_sft"] = _evaluate(model, config)
    if config.eval.ablation:  # what the accuracy owes to the video (evaluate.py)
      results[f"after_sft_{config.eval.ablation}"] = _evaluate(model, config, config.eval.ablation)
  if jax.process_index() == 0:
    for stage, r in results.items():  # every answer, to read or re-score: eval_<stage>.jsonl
      if "predictions" in r:
        (epath.Path(workdir) / f"eval_{stage}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in r["predictions"]))
    summary = {k: {a: b for a, b in v.items() if a != "predictions"} for k, v in results.items()}
    (epath.Path(workdir) / "results.json").write_text(json.dumps(summary, indent=2))
    print_table(results)
  return results


def print_table(results: dict) -> None:
  rows = [(k, v) for k, v in results.items() if isinstance(v, dict) and "accuracy" in v]
  if not rows:
    return
  forms = sorted({f for _, v in rows for f in v["by_form"]})
  print("\n" + f"{'stage':<24}{'accuracy':>10}" + "".join(f"{'acc ' + f:>10}" for f in forms) + f"{'parsed':>9}{'n':>6}")
  for name, v in rows:
    print(f"{name:<24}{v['accuracy']:>10.3f}" + "".join(f"{v['by_form'].get(f, float('nan')):>10.3f}" for f in forms)
          + f"{v['parsed_rate']:>9.2f}{v['n']:>6}")
  print("(chance: 0.25 on 4-way multiple choice; *_swap: each question shown another video's frames,"
        " *_blank: frames blanked)")
