"""The GRPO trainer: advantages, loss aggregation and KL estimators against hand computations, the
trainer's log-probabilities against the sampler's, and runs of the stage on the toy world (metrics,
rollouts, mini-batches, the reference, resume)."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rewatch_jax.data import records, tfds_rewatch
from rewatch_jax.data.video import VideoSpec
from rewatch_jax.generate import generate
from rewatch_jax.train import grpo
from rewatch_jax.train import state as train_state
from rewatch_jax.train.resolve import ConfigError
from tests.conftest import resolved, small_sft_config

RL = ml_collections.ConfigDict(dict(samples=4, eps=1e-6, std_normalize=True, drop_zero_variance=False))


def test_group_advantages_leave_unscored_samples_out():
  rewards = np.array([1.0, 0.0, 1.0, 0.0, 2.0, 2.0, 2.0, 2.0, 3.0, 1.0, 9.0, 0.0])
  scored = np.array([True] * 8 + [True, True, False, False])
  adv, weight, flat = grpo.advantages(rewards, scored, RL)
  std = np.std([1.0, 0.0, 1.0, 0.0], ddof=1)
  np.testing.assert_allclose(adv[:4], (np.array([1, 0, 1, 0]) - 0.5) / (std + 1e-6), rtol=1e-6)
  assert np.all(adv[4:8] == 0) and list(flat) == [False, True, False]
  np.testing.assert_allclose(adv[8:10], [1 / (np.std([3, 1], ddof=1) + 1e-6), -1 / (np.std([3, 1], ddof=1) + 1e-6)],
                             rtol=1e-6)
  assert list(weight[8:]) == [1, 1, 0, 0] and np.all(adv[10:] == 0)  # unscored: out of the mean and the loss
  dr = ml_collections.ConfigDict(dict(RL, std_normalize=False, drop_zero_variance=True))
  adv, weight, _ = grpo.advantages(rewards, scored, dr)
  np.testing.assert_allclose(adv[:4], [0.5, -0.5, 0.5, -0.5]) and np.testing.assert_array_equal(weight[4:8], 0)


def test_loss_aggregations_and_kl_estimators():
  per_token = jnp.array([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0], [5.0, 5.0, 0.0, 0.0]])
  mask = jnp.array([[1.0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])  # the third row left the loss
  assert float(grpo.aggregate(per_token, mask, "token-mean")) == pytest.approx(10 / 4)
  assert float(grpo.aggregate(per_token, mask, "seq-mean-token-mean")) == pytest.approx((2 + 4) / 2)
  assert float(grpo.aggregate(per_token, mask, "seq-mean-token-sum")) == pytest.approx((6 + 4) / 2)
  for how in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum"):  # micro-batches' sums add up
    parts = [grpo.aggregate_sums(per_token[rows], mask[rows], how) for rows in (slice(0, 2), slice(2, 3))]
    whole = sum(n for n, _ in parts) / max(sum(d for _, d in parts), 1.0)
    assert float(whole) == pytest.approx(float(grpo.aggregate(per_token, mask, how))), how
  logp, ref = jnp.log(jnp.array([0.5, 0.2])), jnp.log(jnp.array([0.25, 0.4]))
  d = np.log([0.5 / 0.25, 0.2 / 0.4])
  np.testing.assert_allclose(grpo.kl_estimate(logp, ref, "k1"), d, rtol=1e-6)
  np.testing.assert_allclose(grpo.kl_estimate(logp, ref, "k2"), 0.5 * d ** 2, rtol=1e-6)
  np.testing.assert_allclose(grpo.kl_estimate(logp, ref, "k3"), np.exp(-d) + d - 1, rtol=1e-5)
  # k3 is unbiased for KL(p || q): over p's own distribution its mean is the exact KL
  p, q = np.array([0.7, 0.2, 0.1]), np.array([0.3, 0.3, 0.4])
  k3 = np.asarray(grpo.kl_estimate(jnp.log(p), jnp.log(q), "k3"))
  assert float(p @ k3) == pytest.approx(float(p @ np.log(p / q)), rel=1e-5)


@pytest.fixture(scope="module")
def rl_prepared(prepared):
  """The small toy world with an RL prompt set (its training QA, thinking prompts, captions)."""
  work, data_dir, tokenizer = prepared
  toy = os.path.join(work, "data", "toy")
  qa = list(records.read_jsonl(os.path.join(toy, "train_qa.jsonl")))
  captions = list(records.read_jsonl(os.path.join(toy, "train_caption.jsonl")))
  spec = VideoSpec(**small_sft_config().video_spec)
  if not tfds_rewatch.set_dirs(data_dir, "rl"):
    tfds_rewatch.prepare(data_dir, "rl", qa, toy, spec, kind="rl", tokenizer=tokenizer, captions=captions)
  if not tfds_rewatch.set_dirs(data_dir, "rl_eval"):
    held = list(records.read_jsonl(os.path.join(toy, "test_qa.jsonl")))[:16]
    tfds_rewatch.prepare(data_dir, "rl_eval", held, toy, spec, kind="rl", tokenizer=tokenizer,
                         captions=list(records.read_jsonl(os.path.join(toy, "test_caption.jsonl"))))
  return prepared


def rl_config(steps=3, **rl):
  c = small_sft_config()
  c.total_steps = 0  # RL alone, from the (random) initial weights
  c.log_every_steps, c.checkpoint_every_steps = 1, 2
  c.rl.update(dict(dict(steps=steps, prompts_per_step=8, samples=4, max_new_tokens=24, log_rollouts=1, arms=(),
                        buckets=[dict(length=320, patches=256, frame_block=64, loss_tokens=1)]), **rl))
  return c


def _run(rl_prepared, workdir, c):
  work, data_dir, tokenizer = rl_prepared
  run = resolved(c, data_dir, tokenizer, str(workdir))
  return run, grpo.train(run, run.stages[-1])


def test_the_trainer_recomputes_the_samplers_log_probabilities(rl_prepared):
  work, data_dir, tokenizer = rl_prepared
  run = resolved(rl_config(), data_dir, tokenizer, os.path.join(work, "lp"))
  from rewatch_jax.data import pipeline
  pc = pipeline.PipelineConfig(data_dir=data_dir, batch_size=8, buckets=run.rl_buckets, pad_id=run.config.data.pad_id)
  batch = next(iter(pipeline.rl_dataset(pc, run.model)))
  model = train_state.build_model(run.config, run.model, run.mesh)
  prompts = jax.tree.map(jnp.asarray, batch["inputs"])
  out = generate(model, prompts, max_new_tokens=24, stop_ids=run.model.stop_token_ids, temperature=0.8, top_p=0.9,
                 num_samples=4, seed=3)
  logprobs, entropy = jax.jit(grpo.response_logprobs, static_argnums=(4, 5))(model, prompts, out.tokens, out.lengths,
                                                                             4, 0.8)
  valid = np.arange(24)[None] < np.asarray(out.lengths)[:, None]
  assert valid.sum() > 100 and np.all(np.asarray(entropy)[valid] > 0)
  np.testing.assert_allclose(np.asarray(logprobs)[valid], np.asarray(out.logprobs)[valid], atol=2e-4)


def test_a_grpo_stage_runs_logs_and_resumes_exactly(rl_prepared, tmp_path):
  c = rl_config(steps=4, beta=0.05)
  run, (model, result) = _run(rl_prepared, tmp_path / "straight", c)
  assert result.step == 4 and np.all(np.isfinite(result.losses))
  rows = [json.loads(line) for line in open(tmp_path / "straight" / "rl" / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  for key in ("reward", "accuracy", "format", "kl", "entropy", "clip_fraction", "logprob_gap", "response_length",
              "actions", "zero_variance_groups", "unscored", "time_rollout", "time_rewards", "time_reference",
              "time_update", "learning_rate"):
    assert key in rows[0], key
  assert rows[0]["logprob_gap"] < 1e-3 and rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference
  assert rows[-1]["kl"] > 0  # the policy has moved from the reference
  rollouts = [json.loads(line) for line in open(tmp_path / "straight" / "rl" / "rollouts.jsonl")]
  assert len(rollouts) == 4 * 4 and {"response", "advantage", "reward", "accuracy", "format"} <= set(rollouts[0])
  # stopped after step 2 (its checkpoint), rerun to 4: the same losses, step by step
  first = rl_config(steps=2, beta=0.05)
  _run(rl_prepared, tmp_path / "resumed", first)
  c2 = rl_config(steps=4, beta=0.05)
  _, (_, resumed) = _run(rl_prepared, tmp_path / "resumed", c2)
  again = [json.loads(line) for line in open(tmp_path / "resumed" / "rl" / "metrics.jsonl")]
  assert [r["loss"] for r in again] == [r["loss"] for r in rows]
  assert len(open(tmp_path / "resumed" / "rl" / "rollouts.jsonl").readlines()) == 16


def test_mini_batches_and_several_updates_take_the_old_policy_from_a_forward(rl_prepared, tmp_path):
  c = rl_config(steps=1, mini_batches=2, updates=2, beta=0.0, loss_agg="seq-mean-token-sum", tis_cap=2.0)
  c.mesh.update(data=4)  # 8 prompts in 2 mini-batches of 4: one a device of the batch axes
  c.mesh.tensor = 2
  _, (_, result) = _run(rl_prepared, tmp_path, c)
  row = json.loads(open(tmp_path / "rl" / "metrics.jsonl").readline())
  assert result.step == 1 and np.isfinite(row["loss"]) and row["logprob_gap"] < 1e-3
  # beta = 0: no reference model, but the old policy's forward (dispatched before scoring) is waited for there
  assert row["time_reference"] > 0 and {"time_rollout", "time_rewards", "time_update"} <= set(row)


@pytest.mark.slow  # (the default suite runs both arms through launch/train.py: test_launch's demo test)
def test_sft_then_two_rl_arms_from_the_same_weights_each_scored_in_thinking_mode(rl_prepared, tmp_path):
  from rewatch_jax.train import driver
  work, data_dir, tokenizer = rl_prepared
  c = rl_config(steps=2, arms=("acc_fmt", "o_and_r"), eval_set="rl_eval", max_new_tokens=16)
  c.total_steps = 2  # a short SFT first
  c.rl.reward.judge = "rewatch_jax.demo.judges:ToyJudge"
  run = resolved(c, data_dir, tokenizer, str(tmp_path))
  assert [(s.name, s.reward) for s in run.stages] == [("sft", ""), ("rl_acc_fmt", "acc_fmt"), ("rl_o_and_r", "o_and_r")]
  results = driver.run(run)
  for name in ("after_sft_thinking", "after_rl_acc_fmt", "after_rl_o_and_r"):
    r = results[name]
    assert r["n"] == 16 and 0 <= r["accuracy"] <= 1 and r["stderr"] >= 0 and 0 <= r["parsed_rate"] <= 1, name
    assert "observations_per_response" in r and "unsupported_observation_rate" in r, name
  assert results["rl_acc_fmt"]["steps"] == results["rl_o_and_r"]["steps"] == 2
  for arm in ("rl_acc_fmt", "rl_o_and_r"):  # each arm's own checkpoints and metrics
    assert os.path.exists(tmp_path / arm / "checkpoints" / "2") and os.path.exists(tmp_path / arm / "metrics.jsonl")
  saved = json.load(open(tmp_path / "results.json"))
  assert saved["after_rl_o_and_r"]["n"] == 16 and os.path.exists(tmp_path / "eval_after_rl_o_and_r.jsonl")


@pytest.mark.parametrize("key, value, message", [
    ("samples", 1, "rl.samples must be >= 2"), ("temperature", 0.0, "rl.temperature must be > 0"),
    ("loss_agg", "mean", "rl.loss_agg must be one of"), ("kl", "k4", "rl.kl must be one of"),
    ("prompts_per_step", 12, "rl.prompts_per_step 12 must split"), ("top_p", 0.0, "rl.top_p"),
    ("micro_batches", 3, r"rl.micro_batches \(3\) must divide each process's prompts"),
    ("set", "qa", "not a prompt set for RL"), ("arms", ("o_and_r", "o_and_r"), "rl.arms must be distinct"),
    ("eval_set", "caption", "rl.eval_set"), ("reward.kind", "o&r", "rl.reward.kind must be one of"),
    ("reward.judge", "judges", "rl.reward.judge must be"),
    ("reward.judge", "rewatch_jax.demo.judges:Nope", "rl.reward.judge: cannot load"),
])
def test_rl_config_checks_name_the_key(rl_prepared, tmp_path, key, value, message):
  work, data_dir, tokenizer = rl_prepared
  c = rl_config()
  *path, last = key.split(".")
  section = c.rl
  for part in path:
    section = section[part]
  section[last] = value
  with pytest.raises(ConfigError, match=message):
    resolved(c, data_dir, tokenizer, str(tmp_path))


def test_the_judges_span_tolerance_defaults_to_one_frame_interval(rl_prepared, tmp_path):
  work, data_dir, tokenizer = rl_prepared
  assert resolved(rl_config(), data_dir, tokenizer, str(tmp_path)).config.rl.reward.tolerance == 2.0  # 0.5 fps



def test_an_update_moves_probability_towards_positive_advantages(rl_prepared):
  """One step's update on real rollouts: the first sample of each group gets advantage +1, the
  second -1 (the others 0); afterwards the policy gives the first more and the second less
  log-probability than before, and clipping engages on a second pass."""
  work, data_dir, tokenizer = rl_prepared
  c = rl_config(updates=2, learning_rate=3e-3, beta=0.0)
  run = resolved(c, data_dir, tokenizer, os.path.join(work, "direction"))
  rl = run.config.rl
  from rewatch_jax.data import pipeline
  pc = pipeline.PipelineConfig(data_dir=data_dir, batch_size=8, buckets=run.rl_buckets, pad_id=run.config.data.pad_id)
  batch, _ = pipeline.to_global(next(iter(pipeline.rl_dataset(pc, run.model))), run.mesh)
  trainable = train_state.setup(train_state.build_model(run.config, run.model, run.mesh), run.stages[-1].optimizer, 1,
                                run.mesh, 0)
  prompts = batch["inputs"]
  out = generate(trainable.model(), prompts, max_new_tokens=24, stop_ids=run.model.stop_token_ids, temperature=0.8,
                 top_p=0.9, num_samples=4, seed=0, mesh=run.mesh)
  advantages = np.tile(np.array([1.0, -1.0, 0.0, 0.0], np.float32), 8)
  train_batch = dict(prompts=prompts, responses=out.tokens, lengths=out.lengths, sampler_logprobs=out.logprobs,
                     advantages=jnp.asarray(advantages), weights=jnp.ones(32, jnp.float32))
  logprobs = jax.jit(grpo.make_logprobs(trainable.graphdef, rl))
  before = np.asarray(logprobs(trainable.state.params, train_batch))
  train_batch["old_logprobs"] = jnp.asarray(before)
  update = jax.jit(grpo.make_update(trainable.graphdef, trainable.tx, rl))
  state, metrics = update(trainable.state, train_batch)
  after = np.asarray(logprobs(state.params, train_batch))
  valid = np.arange(24)[None] < np.asarray(out.lengths)[:, None]
  change = np.where(valid, after - before, 0.0).sum(1).reshape(8, 4)
  assert np.all(change[:, 0] > 0) and np.all(change[:, 1] < 0)
  assert int(state.step) == 1 and float(metrics["applied"]) == 1 and float(metrics["clip_fraction"]) > 0
  np.testing.assert_allclose(before[valid], np.asarray(out.logprobs)[valid], atol=2e-4)


def test_micro_batches_accumulate_the_mini_batchs_gradient_exactly(rl_prepared):
  """One update of a mini-batch in 2 micro-batches of whole prompt groups against the un-split one,
  for token-mean and seq-mean-token-sum (denominators a count of tokens, of responses): the same
  loss, diagnostics and gradient (SGD with a large step, so the parameters after it are the
  gradient, scaled); the old-policy forward split into mini- and micro-batches alike gives the
  same log-probabilities in the rollout's order."""
  import optax
  work, data_dir, tokenizer = rl_prepared
  c = rl_config(beta=0.05, tis_cap=2.0)
  run = resolved(c, data_dir, tokenizer, os.path.join(work, "micro"))
  from rewatch_jax.data import pipeline
  pc = pipeline.PipelineConfig(data_dir=data_dir, batch_size=8, buckets=run.rl_buckets, pad_id=run.config.data.pad_id)
  batch, _ = pipeline.to_global(next(iter(pipeline.rl_dataset(pc, run.model))), run.mesh)
  trainable = train_state.setup(train_state.build_model(run.config, run.model, run.mesh), run.stages[-1].optimizer, 1,
                                run.mesh, 0)
  out = generate(trainable.model(), batch["inputs"], max_new_tokens=24, stop_ids=run.model.stop_token_ids,
                 temperature=0.8, top_p=0.9, num_samples=4, seed=0, mesh=run.mesh)
  rng = np.random.default_rng(0)
  weights = np.ones(32, np.float32)
  weights[[1, 2, 3, 17]] = 0  # unscored or dropped rows: out of the counts
  noise = lambda: jnp.asarray(rng.normal(0, 0.3, out.logprobs.shape), jnp.float32)
  train_batch = dict(prompts=batch["inputs"], responses=out.tokens, lengths=out.lengths, sampler_logprobs=out.logprobs,
                     advantages=jnp.asarray(rng.normal(size=32), jnp.float32), weights=jnp.asarray(weights),
                     old_logprobs=out.logprobs + noise(), ref_logprobs=out.logprobs + noise())  # clipping engages
  lr = 1e4
  tx = optax.sgd(lr)
  state = trainable.state.replace(opt_state=tx.init(trainable.state.params))
  before = [np.asarray(x, np.float64) for x in jax.tree.leaves(state.params)]

  def one_update(**rl):
    update = grpo.make_update(trainable.graphdef, tx, ml_collections.ConfigDict(dict(run.config.rl.to_dict(), **rl)))
    after, metrics = jax.jit(update)(state, train_batch)
    grads = [(b - np.asarray(x, np.float64)) / lr for x, b in zip(jax.tree.leaves(after.params), before)]
    return {k: float(v) for k, v in metrics.items()}, grads

  for how in ("token-mean", "seq-mean-token-sum"):
    (whole, g1), (split, g2) = one_update(loss_agg=how), one_update(loss_agg=how, micro_batches=2)
    assert whole["clip_fraction"] > 0 and whole["kl"] > 0 and whole["trained_tokens"] < float(np.sum(out.lengths))
    for k in whole:
      assert split[k] == pytest.approx(whole[k], rel=1e-5, abs=1e-7), (how, k)
    for a, b in zip(g2, g1):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max(), err_msg=how)
  rl = run.config.rl.to_dict()
  logprobs = lambda **kw: np.asarray(jax.jit(grpo.make_logprobs(trainable.graphdef, ml_collections.ConfigDict(
      dict(rl, **kw))))(state.params, train_batch))
  np.testing.assert_allclose(logprobs(mini_batches=2, micro_batches=2), logprobs(), atol=1e-5)


@pytest.mark.slow
def test_kill_9_during_rl_and_resume_is_bit_exact(rl_prepared, tmp_path):
  """`launch/train.py` with an RL stage alone, killed with SIGKILL after its step-2 checkpoint and
  run again: every step's loss and reward as an uninterrupted run's, and each step's rollouts once."""
  import signal
  import subprocess
  import sys
  import time
  work, data_dir, tokenizer = rl_prepared
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)

  def cmd(workdir):
    return [sys.executable, "launch/train.py", "--config", "configs/demo.py:sft", "--workdir", workdir,
            "--config.total_steps=0", "--config.rl.steps=5", "--config.rl.prompts_per_step=8",
            "--config.rl.samples=4", "--config.rl.max_new_tokens=24", "--config.rl.beta=0.05",
            "--config.log_every_steps=1", "--config.checkpoint_every_steps=2", "--config.demo.videos=0",
            f"--config.data.dir={data_dir}", f"--config.tokenizer={tokenizer}"]

  def rows(workdir):
    out = {}
    for line in open(os.path.join(workdir, "rl", "metrics.jsonl")):
      row = json.loads(line)
      out[row["step"]] = (row["loss"], row["reward"], row["kl"])
    return out

  ref = str(tmp_path / "ref")
  done = subprocess.run(cmd(ref), cwd=root, env=env, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  run = str(tmp_path / "run")
  proc = subprocess.Popen(cmd(run), cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  while time.time() < deadline and not os.path.exists(os.path.join(run, "rl", "checkpoints", "2")):
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert os.path.exists(os.path.join(run, "rl", "checkpoints", "2")), "the run never reached step 2"
  done = subprocess.run(cmd(run), cwd=root, env=env, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  assert rows(run) == rows(ref) and len(rows(ref)) == 5
  steps = [json.loads(line)["step"] for line in open(os.path.join(run, "rl", "rollouts.jsonl"))]
  assert steps == [s for s in range(1, 6) for _ in range(2 * 4)]  # rl.log_rollouts = 2 prompts of 4 samples


def test_a_hosted_judge_must_answer_at_start_up(rl_prepared, tmp_path):
  from tests.openai_server import FakeEndpoint
  work, data_dir, tokenizer = rl_prepared
  c = rl_config()
  c.rl.reward.judge = "hosted"
  with pytest.raises(ConfigError, match="base_url and .model"):
    resolved(c, data_dir, tokenizer, str(tmp_path))
  with FakeEndpoint(lambda prompt: "1", models=("qwen3-judge",)) as endpoint:
    c.rl.reward.hosted.update(base_url=endpoint.base_url, model="other-model")
    with pytest.raises(ConfigError, match="does not serve 'other-model'"):
      resolved(c, data_dir, tokenizer, str(tmp_path))
    c.rl.reward.hosted.model = "qwen3-judge"
    run = resolved(c, data_dir, tokenizer, str(tmp_path))
    assert run.config.rl.reward.hosted.cache_dir == os.path.join(str(tmp_path), "judge_cache")
  c.rl.reward.hosted.base_url = endpoint.base_url  # (now shut down)
  with pytest.raises(ConfigError, match="does not answer GET /models"):
    resolved(c, data_dir, tokenizer, str(tmp_path))

