"""ReWatch's data synthesis (captions -> QA -> filters -> MC -> Multi-Agent ReAct CoT) over hosted models.

  python launch/synthesize.py --config configs/synthesis.py --videos DIR --out DIR \
      --config.client.base_url=http://HOST:PORT/v1 --config.roles.reasoner.model=NAME ...
  python launch/synthesize.py --config configs/synthesis.py:toy --videos TOYWORLD --out DIR
      (against `python launch/serve.py --backend oracle --toyworld TOYWORLD --port 8000`)

The paper's models per role (section 2-4 of REWATCH_METHOD.md) and list prices in USD per million
tokens (check your provider's; a self-hosted model is priced 0). Where the paper is silent the
choice is marked INFERRED.
"""

import ml_collections

from rewatch_jax.data.records import QUESTION_TYPES

FLASH, LITE, GPT41 = "gemini-2.5-flash", "gemini-2.5-flash-lite", "gpt-4.1"
PROBES = ("qwen3-235b-a22b-instruct", "qwen2.5-vl-72b-instruct")


def _role(model: str, prompt: str, max_tokens: int, temperature: float = 0.0, top_p: float = 1.0):
  return dict(model=model, prompt=prompt, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
              base_url="")  # "": client.base_url; set it to send one role elsewhere


def get_config(arg: str | None = None):
  c = ml_collections.ConfigDict()
  c.client = dict(
      base_url="http://localhost:8000/v1",
      api_key_env="OPENAI_API_KEY",  # the environment variable holding the key (never written anywhere)
      max_concurrency=32, requests_per_minute=0.0, tokens_per_minute=0.0,  # 0: no client-side limit
      timeout=180.0, max_retries=6, backoff=1.0, max_backoff=60.0,
      cache_dir="",  # "": <out>/cache (a rerun pays for nothing it has)
  )
  c.roles = dict(
      segment=_role(FLASH, "segment.v1", 1024),  # M_seg, low fps
      caption=_role(FLASH, "caption.v1", 8192),  # M_cap, high fps, per segment
      summary=_role(LITE, "summary.v1", 512),  # M_sum
      qa=_role(FLASH, "qa.v1", 8192, temperature=0.7),  # M_qa (thinking in the paper)
      verify=_role(GPT41, "verify.v1", 64),  # F1
      probe_text=_role("", "probe_text.v1", 128),  # F2: models from filter.text_probes
      probe_summary=_role("", "probe_summary.v1", 128),  # F3: models from filter.summary_probes
      rewrite=_role(FLASH, "rewrite.v1", 1024),  # M_rewrite to four options
      reasoner=_role(FLASH, "reasoner.v1", 2048, temperature=0.7),  # A_R
      observer=_role(GPT41, "observer.v1", 1024),  # A_O
      convert=_role(LITE, "convert.v1", 4096),  # M_convert
  )
  # (model, USD per million prompt tokens, USD per million completion tokens); model names hold dots,
  # which ConfigDict keys cannot. Override: --config.prices="(('my-model', 0.5, 1.5),)"
  c.prices = ((FLASH, 0.30, 2.50), (LITE, 0.10, 0.40), (GPT41, 2.00, 8.00),
              *((m, 0.0, 0.0) for m in PROBES))  # the probes self-hosted
  c.budget = 0.0  # USD; 0: no cap. The run stops cleanly once spent (its report written)
  c.caption = dict(
      segment_fps=0.5, caption_fps=2.0,  # INFERRED (the paper: "low" and "high")
      segment_length=600.0,  # videos longer than this are split by M_seg into ~this long segments
      min_duration=2.0,  # shorter videos are skipped (and reported)
      frame_pixels=448 * 448, max_frames=1024,  # per video, at each fps
      frames_per_call=256,  # at most this many frames in one request (evenly spread over the span)
      image_tokens=258,  # prompt tokens per frame, for --dry_run's estimate (Gemini's count)
  )
  c.qa = dict(per_video=20, question_types=QUESTION_TYPES[:10])
  # F2/F3: drop a pair when the mean correctness of the probes reaches theta (1: only if every probe
  # answers right, as the paper). "~" is the project's answer scorer (rewards.accuracy) == 1.
  c.filter = dict(text_probes=PROBES, summary_probes=PROBES, theta_text=1.0, theta_sum=1.0)
  c.cot = dict(max_steps=10, forms=("open", "mc"))  # INFERRED: 8-12 steps; a CoT for both forms
  c.repair_attempts = 2  # an invalid answer is asked again this often, then quarantined
  c.items_in_flight = 64  # work items (videos, QA pairs) in progress at once
  c.decode_workers = 2  # videos decoded at once
  c.dry_run_keep_fraction = 0.5  # the share of QA pairs a dry run assumes the filters keep
  if arg == "toy":
    _toy(c)
  elif arg:
    raise ValueError(f"unknown variant {arg!r} (known: toy)")
  return c


def _toy(c):
  """The toy world against the oracle server: every role one model, short segments so that
  segmentation runs, small frames, prices as if paid (so that the accounting shows)."""
  for role in c.roles.values():
    role.model = "oracle" if role.model else ""
  c.filter.text_probes = c.filter.summary_probes = ("oracle",)
  c.prices = (("oracle", 0.5, 1.5),)
  c.client.base_url = "http://127.0.0.1:8000/v1"
  c.client.timeout, c.client.backoff, c.client.max_backoff = 10.0, 0.05, 1.0
  c.caption.update(dict(segment_length=10.0, frame_pixels=112 * 112, max_frames=64, frames_per_call=32))
  c.qa.per_video = 30
  c.items_in_flight = 16
