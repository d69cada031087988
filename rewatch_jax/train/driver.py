"""What `launch/train.py` runs: (toy-world data preparation for the demo), evaluation before,
(a pretraining stage,) SFT, evaluation after, and a results table."""

from __future__ import annotations

import json
import os

import jax
from etils import epath

from rewatch_jax.data import chat, pipeline, records, tfds_rewatch
from rewatch_jax.demo import toyworld
from rewatch_jax.data.video import VideoSpec
from rewatch_jax.models import ModelConfig


def prepare_toyworld(config, workdir: str) -> tuple[set[str], dict]:
  """Generate and prepare the demo's data under <workdir>/data unless it is already there; returns
  the ids of the held-out perception questions (the results table shows their accuracy apart) and
  the guessers that never see a frame (`toyworld.baselines`: the table's first rows)."""
  tw = config.toyworld
  root = os.path.join(workdir, "data")
  toy, prepared = os.path.join(root, "toy"), os.path.join(root, "prepared")
  spec = VideoSpec(**config.video_spec.to_dict())
  world = dict(seed=tw.seed, test_fraction=tw.test_fraction, duration=tuple(tw.duration), shapes=tuple(tw.shapes),
               spec=spec)
  if not toyworld.built(toy, toyworld.manifest(tw.videos, **world)):
    print(f"toy world: generating {tw.videos} videos -> {toy}")
    toyworld.build(toy, tw.videos, **world)
  tokenizer = os.path.join(toy, "tokenizer.json")
  read = lambda split, kind: list(records.read_jsonl(os.path.join(toy, f"{split}_{kind}.jsonl")))
  for name, split, kind in (("caption", "train", "caption"), ("qa", "train", "qa"), ("cot", "train", "cot"),
                            ("perception", "train", "perception"), ("qa_eval", "test", "qa")):
    if not os.path.exists(os.path.join(prepared, "rewatch", name, tfds_rewatch.VERSION, "dataset_info.json")):
      report = tfds_rewatch.prepare(prepared, name, read(split, kind), toy, spec, tokenizer=tokenizer)
      print(f"prepared {name}: {report['written']} examples ({len(report['skipped'])} skipped)")
  config.data.dir = config.eval.dir = prepared
  config.tokenizer = tokenizer
  return {r.id for r in read("test", "perception")}, toyworld.baselines(read("train", "qa"), read("test", "qa"))


def compilation_cache_dir(config, workdir: str, backend: str) -> str | None:
  """Where JAX's persistent compilation cache goes for this run (config.compilation_cache_dir,
  relative to the workdir unless absolute or a URL), or None: turned off, or on the CPU backend,
  whose executables use the host's instruction set: JAX's cache key hashes the platform version
  and a topology fingerprint, and we found nothing saying that tells an AVX2 host from an AVX-512
  one sharing a cache folder (a wrong executable would crash, for seconds of compile saved)."""
  path = config.compilation_cache_dir
  if not path or backend == "cpu":
    return None
  return path if "://" in path or os.path.isabs(path) else os.path.join(workdir, path)


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


def _pretrain_config(config):
  """The SFT config with the pretraining stage's steps, batch size, warm-up and task mix (same
  model, other optimizer settings and data)."""
  stage = config.copy_and_resolve_references()
  with stage.unlocked():
    stage.total_steps, stage.epochs = config.pretrain.steps, 0.0
    stage.data.batch_size = config.pretrain.batch_size or config.data.batch_size
    stage.optimizer.warmup_steps = config.pretrain.warmup_steps or config.optimizer.warmup_steps
    stage.data.weights = config.pretrain.weights.copy_and_resolve_references()
  return stage


def _evaluate(model, config, ablation: str = "", perception: set[str] = frozenset()):
  from rewatch_jax.evaluation import evaluate
  e = config.eval
  tok = chat.qwen_tokenizer(config.tokenizer or None)
  buckets = [pipeline.Bucket(**dict(b)) for b in e.buckets]
  result = evaluate(model, e.dir or config.data.dir, e.config, tok, buckets, e.batch_size,
                    e.max_new_tokens, eos_id=config.model.eos_token_id, pad_id=config.data.pad_id,
                    limit=e.limit or None, ablation=ablation, seed=config.seed)
  trained = tfds_rewatch.video_spec_of(config.data.dir, [t for t, w in config.data.weights.items() if w > 0])
  if result["video_spec_hash"] != trained["video_spec_hash"]:  # the drift peers' users report most
    print(f"warning: the evaluation data was decoded with VideoSpec {result['video_spec']}, the training data "
          f"with {trained['video_spec']}: accuracy measured on other frames than the model learnt from")
  hits = [bool(p["correct"]) for p in result["predictions"] if p["id"] in perception]
  if hits:  # the accuracy on the perception questions alone
    result["perception"] = sum(hits) / len(hits)
  if result["cut_off"]:
    print(f"warning: {result['cut_off']} of {result['n']} answers were cut off by eval.max_new_tokens="
          f"{e.max_new_tokens} (scored as unparseable); raise it")
  return result


def run(config, workdir: str) -> dict:
  from rewatch_jax.evaluation import ABLATIONS, check_batch
  from rewatch_jax.train import sft
  from rewatch_jax.mesh import make_mesh
  if config.eval.ablation not in ABLATIONS:  # fail before training, not after
    raise ValueError(f"eval.ablation must be one of {ABLATIONS}, got {config.eval.ablation!r}")
  if config.eval.enabled:
    mesh = make_mesh(dict(config.mesh))
    config.eval.batch_size = config.eval.batch_size or pipeline.batch_rows(mesh)
    check_batch(config.eval.batch_size, mesh)
  if min(config.pretrain.steps, config.pretrain.batch_size, config.pretrain.warmup_steps) < 0:
    raise ValueError(f"pretrain.steps, pretrain.batch_size and pretrain.warmup_steps must be >= 0, got "
                     f"{config.pretrain.steps}, {config.pretrain.batch_size} and {config.pretrain.warmup_steps}")
  if config.profile.start < 0 or config.profile.steps < 0:
    raise ValueError(f"profile.start and profile.steps must be >= 0, got {config.profile.start} and "
                     f"{config.profile.steps}")
  perception, guessers = prepare_toyworld(config, workdir) if config.toyworld.videos else (set(), {})
  _check_tokenizer(config)
  if config.eval.enabled:  # an evaluation batch with such an example raises: say so before training
    unfit = pipeline.unfit_summary(config.eval.dir or config.data.dir, config.eval.config,
                                   ModelConfig.from_dict(config.model.to_dict()),
                                   [pipeline.Bucket(**dict(b)) for b in config.eval.buckets],
                                   fate="would stop the evaluation")
    if unfit:
      raise ValueError(f"{unfit}: add a larger bucket to eval.buckets")
  if config.epochs:
    examples = sum(len(pipeline.source(config.data.dir, t)) * (w > 0) for t, w in config.data.weights.items())
    config.total_steps = max(1, int(config.epochs * examples / config.data.batch_size))
    print(f"{config.epochs} epochs of {examples} examples = {config.total_steps} steps")
  results = {}
  model = None
  if config.eval.enabled and config.eval.before:
    model = sft.build_model(config, make_mesh(dict(config.mesh)))
    results["before"] = _evaluate(model, config, perception=perception)
  if config.pretrain.steps:
    model, pre = sft.train(_pretrain_config(config), f"{workdir}/pretrain", model=model, name="pretrain")
    results["pretrain"] = {"steps": pre.step, "final_loss": pre.final_loss}
    if pre.step < config.pretrain.steps:  # stopped (SIGTERM): the rerun resumes here
      return results
    if config.eval.enabled:
      results["after_pretrain"] = _evaluate(model, config, perception=perception)
  model, train_result = sft.train(config, workdir, model=model)
  results["sft"] = {"steps": train_result.step, "final_loss": train_result.final_loss}
  if train_result.step < config.total_steps:
    return results
  if config.eval.enabled:
    results["after_sft"] = _evaluate(model, config, perception=perception)
    if config.eval.ablation:  # what the accuracy owes to the video (evaluate.py)
      results[f"after_sft_{config.eval.ablation}"] = _evaluate(model, config, config.eval.ablation, perception)
  evaluated = next((r["predictions"] for r in results.values() if "predictions" in r), [])
  results = {**guesser_rows(guessers, evaluated, perception), **results}
  if jax.process_index() == 0:
    for stage, r in results.items():  # every answer, to read or re-score: eval_<stage>.jsonl
      if "predictions" in r:
        (epath.Path(workdir) / f"eval_{stage}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in r["predictions"]))
    summary = {k: {a: b for a, b in v.items() if a != "predictions"} for k, v in results.items()}
    (epath.Path(workdir) / "results.json").write_text(json.dumps(summary, indent=2))
    print_table(results)
  return results


def guesser_rows(guessers: dict[str, dict], predictions: list[dict], perception: set[str]) -> dict[str, dict]:
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


def print_table(results: dict) -> None:
  rows = [(k, v) for k, v in results.items() if isinstance(v, dict) and "accuracy" in v]
  if not rows:
    return
  forms = sorted({f for _, v in rows for f in v["by_form"]})
  cols = [f"acc {f}" for f in forms] + ["perception"] * any("perception" in v for _, v in rows)
  print("\n" + f"{'stage':<24}{'accuracy':>10}" + "".join(f"{c:>11}" for c in cols) + f"{'parsed':>9}{'n':>6}")
  for name, v in rows:
    values = [v["by_form"].get(f, float("nan")) for f in forms] + [v.get("perception", float("nan"))] * ("perception" in cols)
    parsed = f"{v['parsed_rate']:>9.2f}" if "parsed_rate" in v else f"{'-':>9}"
    print(f"{name:<24}{v['accuracy']:>10.3f}" + "".join(f"{x:>11.3f}" for x in values) + f"{parsed}{v['n']:>6}")
  print("(chance: a uniform guess, 1/4 on multiple choice, 1/(answers the question's template takes) when open;"
        " text only: the most common training answer of the question's template, no frames; perception: the"
        " open questions about the backdrop; *_swap: each question shown another video's frames, *_blank:"
        " frames blanked)")
