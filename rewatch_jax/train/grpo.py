"""GRPO with ReWatch's reward, on the parts the SFT trainer uses (train/state.py, train/loop.py).

One step, as the algorithm reads:
  1. rollout: `rl.samples` responses to each of `rl.prompts_per_step` prompts from the sampler (one
     vision encoding and one prefill a prompt), with the log-probabilities they were drawn with;
  2. rewards: the responses decoded on the host and scored (rewards/: acc+fmt or O&R, the judge);
  3. advantages: per prompt group (r - mean) / (std + eps), or r - mean (`rl.std_normalize`);
     unscored samples (a judge failed) leave their group's statistics and the loss, and are
     counted; optionally groups whose rewards all agree leave the loss (`rl.drop_zero_variance`);
  4. reference: the frozen starting weights' log-probabilities of the responses (`rl.beta` > 0);
  5. update: `rl.updates` passes of `rl.mini_batches` optimizer updates, each over whole prompt
     groups: per response token the clipped ratio loss max(-A r, -A clip(r, 1 - low, 1 + high))
     plus beta times the KL estimate (k1, k2 or k3), aggregated by `rl.loss_agg`; with
     `rl.micro_batches` > 1 a mini-batch's gradient is accumulated over micro-batches of whole
     groups (the loss as a numerator and a denominator, each summed, divided once: exact).

The forwards of 4 (and the old policy's, below) need the responses, not their rewards: they are
dispatched before 2 and run on the device while the host scores (a hosted judge's HTTP calls
included); `time_reference` is their dispatch plus what of them is left to wait for after scoring.
Overlapping the next step's rollout with this step's scoring and update would need one-step
off-policy sampling (rolling out with the weights before this update), which this trainer does not
do: the next rollout samples from this step's updated policy.

The update recomputes the policy's log-probabilities (the prompt's vision tokens computed once and
shared by its samples here too) under the same temperature as the sampler; their gap to the
sampler's is logged (it is ~0 at the first update: both are the same weights). With one update a
step the old policy is the current one (ratio 1, no extra forward); with more, the old
log-probabilities come from one forward before the first update. `rl.tis_cap` weighs each token by
min(exp(old - sampler), cap) where sampler and trainer differ (other kernels, other precision).

The reference model is the stage's starting weights, kept in memory and rebuilt from where they
came from on resume (the SFT stage's last checkpoint, init_from_checkpoint or init_from_hf), so
checkpoints hold the policy, its optimizer, the step, the RNG and the data position, as SFT's do.
A sample of each step's rollouts (prompt id, response, every reward component, advantage) goes to
<workdir>/rl/rollouts.jsonl. With several processes each decodes and scores its own prompts' samples
(a prompt's group never spans two), and the reward metrics are process 0's.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from rewatch_jax.checkpoint import TrainCheckpointer
from rewatch_jax.data import chat, pipeline, records
from rewatch_jax.generate import for_sampling, generate
from rewatch_jax.models import ModelInputs, Qwen25VL
from rewatch_jax.models.sharding import axis_rules
from rewatch_jax.rewards import CaptionJudge, HostedJudge, Judge, RewardConfig, Sample, reward
from rewatch_jax.train import loop
from rewatch_jax.train import state as train_state
from rewatch_jax.train.resolve import Run, Stage, load_attribute
from rewatch_jax.train.state import TrainState

log = logging.getLogger(__name__)

COMPONENTS = ("reward", "accuracy", "format", "observation", "reasoning")

# ---- the policy's log-probabilities of its responses ----


def response_logprobs(model: Qwen25VL, prompts: ModelInputs, responses: jax.Array, lengths: jax.Array,
                      samples: int, temperature: float) -> tuple[jax.Array, jax.Array]:
  """Per response token, its log-probability under the temperature-scaled distribution and that
  distribution's entropy, (R, T) fp32 each. `prompts`: P right-padded prompts; `responses`
  (R = P x samples, T): a prompt's samples consecutive, `lengths` tokens each. Each prompt's
  embeddings (vision tower included) are computed once; every row is its prompt's real tokens,
  then its response, then padding."""
  length, new = prompts.input_ids.shape[1], responses.shape[1]
  embedded = jnp.repeat(model.input_embeddings(prompts), samples, axis=0)  # (R, L, D)
  real = jnp.repeat(prompts.attention_mask.astype(bool), samples, axis=0)
  n = jnp.sum(real, axis=1)  # each row's prompt tokens (right-padded: they come first)
  j = jnp.arange(length + new)[None]
  in_prompt = j < n[:, None]
  k = jnp.clip(j - n[:, None], 0, new - 1)  # the response token at each place after the prompt
  pad = lambda x, axis: jnp.pad(x, [(0, new) if a == axis else (0, 0) for a in range(x.ndim)])
  answer = jnp.take_along_axis(model.text.embed(responses), k[..., None], axis=1)
  x = jnp.where(in_prompt[..., None], pad(embedded, 1), answer)
  prompt_positions = jnp.repeat(prompts.positions, samples, axis=1)  # (3, R, L)
  first = jnp.max(jnp.where(real[None], prompt_positions, -1), axis=(0, 2)) + 1  # as the sampler continues
  positions = jnp.where(in_prompt[None], pad(prompt_positions, 2), (first[:, None] + k)[None])
  hidden, _ = model.text(x, positions, j < (n + lengths)[:, None])
  # the token at response place t is predicted from the place before it
  at = jnp.take_along_axis(hidden, (n[:, None] - 1 + jnp.arange(new)[None])[..., None], axis=1)
  logits = model.text.logits(at) / temperature  # fp32
  lse = jax.nn.logsumexp(logits, -1)
  logprobs = jnp.take_along_axis(logits, responses[..., None], -1)[..., 0] - lse
  entropy = lse - jnp.sum(jax.nn.softmax(logits, -1) * logits, -1)
  return logprobs, entropy


# ---- the loss ----

def kl_estimate(logprobs: jax.Array, ref_logprobs: jax.Array, estimator: str) -> jax.Array:
  """Per-token estimates of KL(policy || reference) from samples of the policy."""
  log_ratio = logprobs - ref_logprobs
  if estimator == "k1":
    return log_ratio
  if estimator == "k2":
    return 0.5 * log_ratio ** 2
  return jnp.exp(-log_ratio) + log_ratio - 1  # k3


def aggregate_sums(per_token: jax.Array, mask: jax.Array, how: str) -> tuple[jax.Array, jax.Array]:
  """`aggregate`'s numerator and denominator, each a sum over rows, so that micro-batches' add up
  to their mini-batch's: token-mean's are the masked per-token terms and the (weighted) token
  count; the seq-mean ones' each response's term (its token mean or sum) and the responses with a
  token in the loss."""
  total = jnp.sum(per_token * mask, -1)
  if how == "token-mean":
    return jnp.sum(total), jnp.sum(mask)
  rows = jnp.any(mask > 0, -1)
  if how == "seq-mean-token-mean":
    total = total / jnp.maximum(jnp.sum(mask, -1), 1.0)
  return jnp.sum(jnp.where(rows, total, 0.0)), jnp.sum(rows.astype(jnp.float32))


def aggregate(per_token: jax.Array, mask: jax.Array, how: str) -> jax.Array:
  """The loss of a mini-batch from per-token terms (R, T) and a 0/1 mask (unscored and dropped rows
  all 0): token-mean (every token alike), seq-mean-token-mean (each response alike),
  seq-mean-token-sum (each response by its token sum: Dr. GRPO, no length normalisation)."""
  numerator, denominator = aggregate_sums(per_token, mask, how)
  return numerator / jnp.maximum(denominator, 1.0)


def grpo_sums(model: Qwen25VL, batch: dict[str, Any], rl) -> dict[str, jax.Array]:
  """The clipped policy-gradient loss (+ beta KL) of whole prompt groups as sums: its numerator
  (`loss`) and denominator (`count`, `aggregate_sums`) and each diagnostic's sum with the count it
  is a mean over; micro-batches' sums add up (`logprob_gap_max`: the larger) to their mini-batch's,
  and `finish` divides once."""
  new = batch["responses"].shape[1]
  logprobs, entropy = response_logprobs(model, batch["prompts"], batch["responses"], batch["lengths"], rl.samples,
                                        rl.temperature)
  tokens = (jnp.arange(new)[None] < batch["lengths"][:, None]).astype(jnp.float32)
  mask = tokens * batch["weights"][:, None]
  old = batch["old_logprobs"] if "old_logprobs" in batch else jax.lax.stop_gradient(logprobs)
  ratio = jnp.exp(logprobs - old)
  advantage = batch["advantages"][:, None]
  unclipped, clipped = -advantage * ratio, -advantage * jnp.clip(ratio, 1 - rl.clip_low, 1 + rl.clip_high)
  per_token = jnp.maximum(unclipped, clipped)
  if rl.tis_cap:
    per_token = per_token * jnp.minimum(jnp.exp(old - batch["sampler_logprobs"]), rl.tis_cap)
  kl = jnp.zeros_like(per_token)
  if rl.beta:
    kl = kl_estimate(logprobs, batch["ref_logprobs"], rl.kl)
    per_token = per_token + rl.beta * kl
  numerator, denominator = aggregate_sums(per_token, mask, rl.loss_agg)
  total = lambda x, m=mask: jnp.sum(x * m)
  gap = jnp.abs(logprobs - batch["sampler_logprobs"])
  return dict(loss=numerator, count=denominator, kl=total(kl), entropy=total(entropy),
              clipped=total((clipped > unclipped).astype(jnp.float32)), trained_tokens=jnp.sum(mask),
              gap=total(gap, tokens), tokens=jnp.sum(tokens), logprob_gap_max=jnp.max(gap * tokens))


SUMS = ("loss", "count", "kl", "entropy", "clipped", "trained_tokens", "gap", "tokens", "logprob_gap_max")


def add_sums(a: dict[str, jax.Array], b: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Two micro-batches' `grpo_sums` as one batch's."""
  return {k: jnp.maximum(a[k], b[k]) if k == "logprob_gap_max" else a[k] + b[k] for k in SUMS}


def finish(sums: dict[str, jax.Array]) -> tuple[jax.Array, dict]:
  """`grpo_sums` -> the loss and its diagnostics (token-weighted means: the mask's tokens, the
  log-probability gap's every response token)."""
  over = lambda k, n: sums[k] / jnp.maximum(sums[n], 1.0)
  return over("loss", "count"), dict(kl=over("kl", "trained_tokens"), entropy=over("entropy", "trained_tokens"),
                                     clip_fraction=over("clipped", "trained_tokens"), logprob_gap=over("gap", "tokens"),
                                     logprob_gap_max=sums["logprob_gap_max"], trained_tokens=sums["trained_tokens"])


def grpo_loss(model: Qwen25VL, batch: dict[str, Any], rl) -> tuple[jax.Array, dict]:
  """The clipped policy-gradient loss (+ beta KL) of a mini-batch and its diagnostics."""
  return finish(grpo_sums(model, batch, rl))


# ---- the update ----

def _by_prompt(batch: dict[str, Any], samples: int) -> dict[str, Any]:
  """Rollout arrays (P x samples, ...) -> (P, samples, ...), so mini-batches take whole groups."""
  return {k: v if isinstance(v, ModelInputs) else v.reshape(v.shape[0] // samples, samples, *v.shape[1:])
          for k, v in batch.items()}


def _by_row(batch: dict[str, Any]) -> dict[str, Any]:
  return {k: v if isinstance(v, ModelInputs) else v.reshape(-1, *v.shape[2:]) for k, v in batch.items()}


def make_update(graphdef, tx, rl):
  """(state, batch) -> (state, metrics): the step's optimizer updates; the batch holds the prompts,
  responses, lengths, advantages, row weights and the sampler's (and reference's, and the old
  policy's) log-probabilities. With `rl.micro_batches` > 1 each mini-batch's gradient is a scan over
  micro-batches of whole prompt groups (a prompt's vision tokens serve its samples), their loss
  sums and gradients added in fp32 and divided once by the mini-batch's denominator: the un-split
  gradient, in less memory. Metrics are the mini-batches' means, the log-probability gap the first
  mini-batch's (before any update)."""
  def loss_and_grads(params, mb):
    if rl.micro_batches == 1:  # the loss itself differentiated, no scan
      f = lambda p: grpo_loss(nnx.merge(graphdef, p), _by_row(mb), rl)
      (loss, aux), grads = jax.value_and_grad(f, has_aux=True)(params)
      return loss, aux, grads

    def micro(carry, piece):  # (the parameters ride in the carry: see make_logprobs)
      params, grads, sums = carry
      f = lambda p: (lambda s: (s["loss"], s))(grpo_sums(nnx.merge(graphdef, p), _by_row(piece), rl))
      g, s = jax.grad(f, has_aux=True)(params)
      grads = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), grads, g)
      return (params, grads, add_sums(sums, s)), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    init = (params, zeros, {k: jnp.zeros((), jnp.float32) for k in SUMS})
    (_, grads, sums), _ = jax.lax.scan(micro, init, train_state.split_rows(mb, rl.micro_batches))
    loss, aux = finish(sums)
    return loss, aux, jax.tree.map(lambda g: g / jnp.maximum(sums["count"], 1.0), grads)

  def one(state: TrainState, mb):
    loss, aux, grads = loss_and_grads(state.params, mb)
    state, update = state.apply_gradients(grads, tx, jnp.isfinite(loss))
    return state, dict(loss=loss, **aux, **update)

  def update(state: TrainState, batch):
    minis = train_state.split_rows(_by_prompt(batch, rl.samples), rl.mini_batches)
    step, history = state.step, []
    for _ in range(rl.updates):  # static: a few passes
      state, m = jax.lax.scan(one, state, minis)
      history.append(m)
    m = jax.tree.map(lambda *xs: jnp.concatenate(xs), *history)
    out = {k: jnp.mean(v) for k, v in m.items()}
    out.update(logprob_gap=m["logprob_gap"][0], logprob_gap_max=m["logprob_gap_max"][0],
               applied=jnp.min(m["applied"]), grad_norm=m["grad_norm"][-1])
    return state.replace(step=step + 1), out  # a trainer step counts once, whatever its updates
  return update


def make_logprobs(graphdef, rl):
  """(params, batch) -> (R, T) log-probabilities of the batch's prompts, responses and lengths (the
  old policy's or the reference's: no gradient), micro-batch by micro-batch of every mini-batch
  (rl.mini_batches x rl.micro_batches scanned parts of whole prompt groups: the update's memory)."""
  def one(params, mb):
    rows = _by_row(mb)
    return params, response_logprobs(nnx.merge(graphdef, params), mb["prompts"], rows["responses"], rows["lengths"],
                                     rl.samples, rl.temperature)[0]

  def logprobs(params, batch):
    batch = {k: batch[k] for k in ("prompts", "responses", "lengths")}
    parts = train_state.split_rows(_by_prompt(batch, rl.samples), rl.mini_batches * rl.micro_batches)
    # (the parameters ride in the scan's carry: NNX variables must enter its trace as its inputs, not
    # be closed over, or the model's remat sees variables of another trace)
    _, out = jax.lax.scan(one, params, parts)
    # (parts, P / parts * samples, T), prompts with stride `parts` -> back to the rollout's row order
    m, rows = out.shape[0], out.shape[1]
    return out.reshape(m, rows // rl.samples, rl.samples, -1).swapaxes(0, 1).reshape(m * rows, -1)
  return logprobs


# ---- advantages (host) ----

def advantages(rewards: np.ndarray, scored: np.ndarray, rl) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per sample (prompt-major, `rl.samples` a prompt): the advantage, its weight in the loss (0:
  unscored, or in a dropped group) and, per group, whether its scored rewards all agree."""
  r = rewards.reshape(-1, rl.samples)
  ok = scored.reshape(r.shape)
  n = ok.sum(1, keepdims=True)
  mean = np.where(ok, r, 0.0).sum(1, keepdims=True) / np.maximum(n, 1)
  centred = np.where(ok, r - mean, 0.0)
  std = np.sqrt((centred ** 2).sum(1, keepdims=True) / np.maximum(n - 1, 1))  # unbiased, as verl and TRL
  flat = (std[:, 0] < 1e-8) | (n[:, 0] < 2)
  adv = centred / (std + rl.eps) if rl.std_normalize else centred
  weight = ok & ~(flat[:, None] & rl.drop_zero_variance)
  return adv.reshape(-1).astype(np.float32), weight.reshape(-1).astype(np.float32), flat


# ---- the run ----

def make_judge(run: Run) -> Judge:
  spec = run.config.rl.reward.judge
  if spec == "caption":
    return CaptionJudge(tolerance=run.config.rl.reward.tolerance)
  if spec == "hosted":
    return HostedJudge.from_config(run.config)
  return load_attribute(spec, "rl.reward.judge")(run.config)


def train(run: Run, stage: Stage, model: Qwen25VL | None = None) -> tuple[Qwen25VL, loop.Result]:
  """The GRPO stage from `model` (else the config's initial weights), which is also the frozen
  reference; resumes from the stage's last checkpoint."""
  c, mesh, rl = run.config, run.mesh, run.config.rl
  start = model if model is not None else train_state.build_model(c, run.model, mesh)
  # The policy trains a copy (the update donates its buffers); the starting weights stay whole: the
  # reference, and the start of any further RL arm.
  graphdef, weights = nnx.split(start)
  policy = nnx.merge(graphdef, jax.tree.map(lambda x: x.copy(), weights))
  trainable = train_state.setup(policy, stage.optimizer, stage.total_steps * rl.mini_batches * rl.updates, mesh,
                                c.seed)
  reference = nnx.state(start, nnx.Param) if rl.beta else None
  pc = pipeline.PipelineConfig(data_dir=c.data.dir, batch_size=stage.batch_size // jax.process_count(),
                               buckets=run.rl_buckets, seed=c.seed, workers=c.data.workers, pad_id=c.data.pad_id)
  checkpointer = TrainCheckpointer(f"{stage.workdir}/checkpoints", run.model, keep=c.keep_checkpoints,
                                   identity=run.identity)
  state, data = loop.restore(checkpointer, trainable.state, iter(pipeline.rl_dataset(pc, run.model, rl.set)),
                             lambda first: iter(pipeline.rl_dataset(pc, run.model, rl.set, start=first)))
  update = jax.jit(make_update(trainable.graphdef, trainable.tx, rl), donate_argnums=0,
                   out_shardings=(trainable.shardings, None))
  logprobs = jax.jit(make_logprobs(trainable.graphdef, rl))
  tokenizer, judge = chat.qwen_tokenizer(c.tokenizer), make_judge(run)
  reward_cfg = RewardConfig(kind=stage.reward, observation=rl.reward.observation, reasoning=rl.reward.reasoning,
                            min_steps=rl.reward.min_steps, judge_all=rl.reward.judge_all)
  stops = run.model.stop_token_ids
  state_at_start = int(state.step)
  rollouts = RolloutLog(f"{stage.workdir}/rollouts.jsonl", state_at_start)

  def step(state: TrainState, index: int):
    times = {}
    t = time.perf_counter()
    batch, meta = pipeline.to_global(next(data), mesh)
    prompts = batch["inputs"]
    sampler = for_sampling(trainable.model(state), mesh)  # laid out for decoding once a step
    out = generate(sampler, prompts, max_new_tokens=rl.max_new_tokens, stop_ids=stops, temperature=rl.temperature,
                   top_p=rl.top_p, top_k=rl.top_k, num_samples=rl.samples, mesh=mesh,
                   seed=(c.seed * 1_000_003 + index) % 2**31)  # a step's draws: the same on resume
    tokens, lengths = pipeline.rows_to_host((out.tokens, out.lengths), mesh)
    times["rollout"] = time.perf_counter() - t

    # The reference's and the old policy's log-probabilities need the responses, not their rewards:
    # dispatched now and not waited for, the device computes them while the host scores (the judge).
    t = time.perf_counter()
    responses = dict(prompts=prompts, responses=out.tokens, lengths=out.lengths)
    forwards = {}
    with axis_rules(mesh):
      if rl.beta:
        forwards["ref_logprobs"] = logprobs(reference, responses)
      if rl.mini_batches > 1 or rl.updates > 1:
        forwards["old_logprobs"] = logprobs(state.params, responses)
    dispatched = time.perf_counter() - t

    t = time.perf_counter()
    texts = [tokenizer.decode(row[:n - (row[n - 1] in stops)].tolist(), skip_special_tokens=False)
             for row, n in zip(tokens, lengths)]
    prompt_records = [records.from_json(json.loads(r)) for r in meta["record"]]
    samples = [Sample(rec, cap, texts[i * rl.samples + g]) for i, (rec, cap) in enumerate(zip(prompt_records,
                                                                                               meta["caption"]))
               for g in range(rl.samples)]
    scores = reward(samples, judge, reward_cfg)
    rewards = np.array([s["reward"] for s in scores], np.float64)
    scored = np.array([s["scored"] for s in scores])
    truncated = np.array([row[n - 1] not in stops for row, n in zip(tokens, lengths)])
    adv, weight, flat = advantages(np.nan_to_num(rewards), scored, rl)
    if rl.mask_truncated:
      weight = weight * ~truncated
    times["rewards"] = time.perf_counter() - t

    t = time.perf_counter()
    jax.block_until_ready(forwards)
    times["reference"] = dispatched + time.perf_counter() - t  # what of those forwards the scoring did not hide
    rows = pipeline.rows_to_global(dict(advantages=adv, weights=weight), mesh)
    train_batch = dict(**responses, sampler_logprobs=out.logprobs, **rows, **forwards)
    t = time.perf_counter()
    with axis_rules(mesh):
      state, metrics = update(state, train_batch)
      jax.block_until_ready(state.params)  # (the next rollout waits for these weights anyway)
    times["update"] = time.perf_counter() - t

    rollouts.write(index + 1, meta["id"], texts, scores, adv, rl)
    right = np.array([s["accuracy"] == 1.0 for s in scores]).reshape(-1, rl.samples)
    info = dict(ids=meta["id"], times=times, scores=scores, unscored=int((~scored).sum()), flat=float(flat.mean()),
                truncated=float(truncated.mean()), length=float(np.mean(lengths)), pass_at_g=float(right.any(1).mean()),
                mixed=float((right.any(1) & ~right.all(1)).mean()))
    if index == state_at_start:  # what RL starts from, on its own prompts (the policy has not moved yet)
      log.info("%s starts from: sampled accuracy %.3f, pass@%d %.3f, groups of mixed correctness %.3f, format %.3f "
               "(step %d's rollouts)", stage.name, float(right.mean()), rl.samples, info["pass_at_g"], info["mixed"],
               float(np.mean([s["format"] for s in scores])), index + 1)
    return state, metrics, info

  def summarize(fetched: list[loop.Logged], seconds: float) -> dict[str, float]:
    mean = lambda xs: float(np.mean(xs)) if len(xs) else float("nan")
    scores = [s for p in fetched for s in p.info["scores"]]
    row = {k: mean([float(p.metrics[k]) for p in fetched])
           for k in ("kl", "entropy", "clip_fraction", "logprob_gap", "logprob_gap_max", "grad_norm")}
    for k in COMPONENTS:
      row[k] = mean([s[k] for s in scores if s[k] is not None and s["scored"]])
    row.update(learning_rate=float(trainable.learning_rate(fetched[-1].step * rl.mini_batches * rl.updates - 1)),
               parsed_rate=mean([s["parsed"] for s in scores]), actions=mean([s["steps"] for s in scores]),
               response_length=mean([p.info["length"] for p in fetched]),
               truncated=mean([p.info["truncated"] for p in fetched]),
               zero_variance_groups=mean([p.info["flat"] for p in fetched]),
               pass_at_g=mean([p.info["pass_at_g"] for p in fetched]),
               mixed_groups=mean([p.info["mixed"] for p in fetched]),
               unscored=float(sum(p.info["unscored"] for p in fetched)),
               steps_per_sec=len(fetched) / max(seconds, 1e-9))
    for part in ("rollout", "rewards", "reference", "update"):
      row[f"time_{part}"] = mean([p.info["times"][part] for p in fetched])
    return row

  state, result = loop.run(state, step, name=stage.name, workdir=stage.workdir, total_steps=stage.total_steps,
                           checkpointer=checkpointer, data=data, summarize=summarize, **loop.cadence(c))
  return trainable.model(state), result


class RolloutLog:
  """<workdir>/rollouts.jsonl: each step's first `rl.log_rollouts` prompts, every sample with its
  reward components and advantage (process 0's prompts). Lines of steps after `resumed_at` (written
  before a kill, past the checkpoint the run resumes from) are dropped at start, so a step appears
  once."""

  def __init__(self, path: str, resumed_at: int):
    self.path = epath.Path(path)
    self.enabled = jax.process_index() == 0
    if self.enabled and self.path.exists():
      kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= resumed_at]
      self.path.write_text("".join(line + "\n" for line in kept))

  def write(self, step: int, ids: list[str], texts: list[str], scores: list[dict], adv: np.ndarray, rl) -> None:
    if not self.enabled or not rl.log_rollouts:
      return
    lines = []
    for i, prompt in enumerate(ids[:rl.log_rollouts]):
      for g in range(rl.samples):
        k = i * rl.samples + g
        components = {key: None if isinstance(v, float) and np.isnan(v) else v for key, v in scores[k].items()}
        lines.append(json.dumps(dict(step=step, prompt=prompt, sample=g, response=texts[k], advantage=float(adv[k]),
                                     **components)) + "\n")
    self.path.parent.mkdir(parents=True, exist_ok=True)
    with self.path.open("a") as f:
      f.write("".join(lines))

