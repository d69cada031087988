"""The roles of the pipeline (M_seg, M_cap, M_sum, M_qa, M_verify, the probes, M_rewrite, Reasoner,
Observer, M_convert) and how one is asked.

A role is a config entry: endpoint, model, sampling parameters and a prompt version, the file
`prompts/<prompt>.txt` (a `str.format` template; a changed prompt gets a new file, so the version in
every record's lineage names the exact text). `Asker.ask` sends the prompt with the role's JSON
schema as `response_format`, validates the answer against it (and an optional check of its
meaning), and on an invalid answer asks again with the error appended (`repair_attempts` times);
an answer that stays invalid is quarantined with its raw text and the item goes on without it.
Every completion is charged to its stage and role (costs.py).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable, Sequence

import pydantic

from data_synthesis import schemas
from data_synthesis.costs import Costs
from data_synthesis.store import append_log, read_log
from rewatch_jax.hosted.client import Completion, HostedClient, HostedError, Request

PROMPTS = os.path.join(os.path.dirname(__file__), "prompts")
SCHEMAS = {"segment": schemas.Segments, "caption": schemas.Events, "summary": schemas.Summary,
           "qa": schemas.Questions, "verify": schemas.Verdict, "probe_text": schemas.Answer,
           "probe_summary": schemas.Answer, "rewrite": schemas.MultipleChoice, "reasoner": schemas.Step,
           "observer": schemas.Observation, "convert": schemas.Reasoning}
REPAIR = "Your answer is not valid: {error}. Reply again with JSON only, matching the schema."
FINAL = ("content_filter",)  # what no rerun fixes: the item fails (a 4xx may be fixed in the config)


@dataclasses.dataclass(frozen=True)
class Role:
  name: str  # a key of SCHEMAS
  model: str
  prompt: str  # prompts/<prompt>.txt, e.g. "caption.v1"
  temperature: float = 0.0
  top_p: float = 1.0
  max_tokens: int = 1024
  base_url: str = ""  # "": the config's client.base_url

  def __post_init__(self):
    if self.name not in SCHEMAS:
      raise ValueError(f"unknown role {self.name!r}; roles: {sorted(SCHEMAS)}")
    template(self.prompt)  # fails fast on a missing prompt file

  @property
  def schema(self) -> type[pydantic.BaseModel]:
    return SCHEMAS[self.name]

  def params(self) -> dict:
    return dict(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                response_format=schemas.response_format(self.schema))

  def lineage(self, model: str = "") -> dict:
    return dict(model=model or self.model, prompt=self.prompt, temperature=self.temperature, top_p=self.top_p,
                max_tokens=self.max_tokens)


@functools.cache
def template(name: str) -> str:
  path = os.path.join(PROMPTS, f"{name}.txt")
  if not os.path.exists(path):
    have = sorted(f[:-4] for f in os.listdir(PROMPTS))
    raise ValueError(f"no prompt {name!r} ({path}); prompts: {have}")
  with open(path) as f:
    return f.read()


class Unfinished(Exception):
  """A request failed for a reason a later run may not meet (the endpoint down, retries spent, a
  request refused with a 4xx): the item is left undone, to be redone by the next run."""


class Failed(Exception):
  """A request no rerun fixes (a content filter): the item is recorded as failed."""

  def __init__(self, kind: str, message: str):
    super().__init__(message)
    self.kind = kind


class Quarantine:
  """`quarantine.jsonl`: answers that stayed invalid, with their raw text; each written once."""

  def __init__(self, out_dir: str):
    self.path = os.path.join(out_dir, "quarantine.jsonl")
    self.keys = {e["key"] for e in read_log(self.path)}

  def add(self, **entry) -> None:
    key = hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:16]
    if key in self.keys:
      return
    self.keys.add(key)
    append_log(self.path, dict(key=key, **entry))


@dataclasses.dataclass
class Usage:
  """The tokens and list-price cost of the answers one work item took, paid now or by an earlier
  run (its records' lineage; the same whichever run made them)."""
  prompt_tokens: int = 0
  completion_tokens: int = 0
  cost: float = 0.0
  answers: int = 0

  def add(self, completion: Completion, cost: float) -> None:
    self.prompt_tokens += completion.prompt_tokens
    self.completion_tokens += completion.completion_tokens
    self.cost = round(self.cost + cost, 9)
    self.answers += 1

  def merge(self, other: dict) -> None:
    """Add a `since` of an earlier run (a journaled ReAct step)."""
    for k, v in other.items():
      setattr(self, k, round(getattr(self, k) + v, 9) if k == "cost" else getattr(self, k) + v)

  def since(self, before: dict) -> dict:
    """What was added after `before` (a `dataclasses.asdict` of this usage)."""
    return {k: round(v - before[k], 9) if k == "cost" else v - before[k] for k, v in dataclasses.asdict(self).items()}


class Asker:
  def __init__(self, clients: dict[str, HostedClient], default_url: str, costs: Costs, quarantine: Quarantine,
               repair_attempts: int = 2):
    self.clients, self.default_url, self.costs, self.quarantine = clients, default_url, costs, quarantine
    self.repair_attempts = repair_attempts
    self.invalid = 0  # answers that failed validation (repaired or not)

  async def ask(self, stage: str, item: str, role: Role, fields: dict, usage: Usage, images: Sequence[dict] = (),
                model: str = "", check: Callable[[pydantic.BaseModel], None] | None = None):
    """The role's validated answer (a `role.schema` instance), or None once quarantined."""
    model = model or role.model
    text = template(role.prompt).format(**fields)
    content = [*images, {"type": "text", "text": text}] if images else text
    messages = [{"role": "user", "content": content}]
    client = self.clients[role.base_url or self.default_url]
    for attempt in range(self.repair_attempts + 1):
      (result,) = await client.complete([Request(model, messages, role.params(), tag=stage)])
      if isinstance(result, HostedError):
        if result.kind in FINAL:
          raise Failed(result.kind, f"{role.name} ({model}): {result}")
        raise Unfinished(f"{role.name} ({model}): {result}")
      self.costs.charge(stage, role.name, model, result)
      usage.add(result, self.costs.prices[model].of(result.prompt_tokens, result.completion_tokens))
      try:
        answer = role.schema.model_validate_json(result.text)
        if check is not None:
          check(answer)
        return answer
      except (pydantic.ValidationError, ValueError) as e:
        self.invalid += 1
        error = str(e).splitlines()[0] if not isinstance(e, pydantic.ValidationError) else _short(e)
        if attempt == self.repair_attempts:
          self.quarantine.add(stage=stage, item=item, role=role.name, model=model, prompt=role.prompt,
                              error=error, raw=result.text)
          return None
        messages = [*messages, {"role": "assistant", "content": result.text},
                    {"role": "user", "content": REPAIR.format(error=error)}]
    raise AssertionError("unreachable")


def _short(e: pydantic.ValidationError) -> str:
  err = e.errors()[0]
  where = ".".join(str(x) for x in err.get("loc", ())) or "the answer"
  return f"{where}: {err['msg']} ({e.error_count()} error(s))"
