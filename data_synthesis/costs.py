"""Usage and cost per stage and role from a price table, and the budget cap.

Prices are USD per million prompt and completion tokens, per model name, from the config (a model
with no price is refused at start-up, before anything is spent, unless it is priced at 0 on
purpose: a self-hosted endpoint). A completion answered from the hosted client's cache costs
nothing: it was paid for by an earlier run, whose spending the rerun carries over: every paid
completion is appended to a ledger (`spend.jsonl` in the output folder), which a rerun reads back,
so the totals and the cap count what killed runs paid too. The
cap is checked before new work starts, so a run stops cleanly with what is done kept; work already
in flight finishes, so the total may pass the cap by at most that much.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Mapping

from data_synthesis.store import append_log, read_log
from rewatch_jax.hosted.client import Completion


@dataclasses.dataclass(frozen=True)
class Price:
  prompt: float  # USD per million prompt tokens
  completion: float  # USD per million completion tokens

  def of(self, prompt_tokens: float, completion_tokens: float) -> float:
    return (prompt_tokens * self.prompt + completion_tokens * self.completion) / 1e6


class BudgetExceeded(RuntimeError):
  pass


class Costs:
  """Spending of one run: `charge` each completion, `estimate` planned requests (a dry run)."""

  def __init__(self, prices: Mapping[str, Price | Mapping[str, float]], budget: float = 0.0, spent: float = 0.0,
               ledger: str = ""):
    self.prices = {m: p if isinstance(p, Price) else Price(**p) for m, p in prices.items()}
    self.budget, self.spent = float(budget), float(spent)  # budget 0: no cap
    self.usage = collections.defaultdict(collections.Counter)  # (stage, role) -> counts and cost
    self.ledger = ledger
    for e in read_log(ledger) if ledger else ():
      row = self.usage[e["stage"], e["role"]]
      row.update(requests=1, prompt_tokens=e["prompt_tokens"], completion_tokens=e["completion_tokens"])
      row["cost"] += e["cost"]
      self.spent += e["cost"]

  def check_models(self, models: Iterable[str]) -> None:
    """Raise (naming them) if a model the run will call has no price."""
    missing = sorted(set(models) - set(self.prices))
    if missing:
      raise ValueError(f"no price for model(s) {missing} in the config's price table (USD per million prompt and "
                       "completion tokens; 0 for a self-hosted endpoint)")

  def charge(self, stage: str, role: str, model: str, completion: Completion) -> float:
    """Count a completion's tokens and cost (0 when it came from the cache); returns the cost."""
    cost = 0.0 if completion.cached else self.prices[model].of(completion.prompt_tokens, completion.completion_tokens)
    row = self.usage[stage, role]
    paid = not completion.cached
    row.update(requests=int(paid), cached=int(completion.cached), prompt_tokens=paid * completion.prompt_tokens,
               completion_tokens=paid * completion.completion_tokens)
    row["cost"] += cost
    self.spent += cost
    if self.ledger and not completion.cached:
      append_log(self.ledger, dict(stage=stage, role=role, model=model, prompt_tokens=completion.prompt_tokens,
                                   completion_tokens=completion.completion_tokens, cost=cost))
    return cost

  def estimate(self, model: str, requests: int, prompt_tokens: float, completion_tokens: float) -> float:
    """The cost of `requests` requests of about these many tokens each."""
    return requests * self.prices[model].of(prompt_tokens, completion_tokens)

  @property
  def exhausted(self) -> bool:
    return bool(self.budget) and self.spent >= self.budget

  def check(self) -> None:
    """Before starting new work: raise BudgetExceeded once the cap is reached."""
    if self.exhausted:
      raise BudgetExceeded(f"spent ${self.spent:.4f} of the ${self.budget:.4f} budget; rerun with a larger "
                           "budget to continue where this run stopped")

  def table(self) -> dict[str, dict[str, dict[str, float]]]:
    """{stage: {role: requests (paid, by this run and the earlier ones in the ledger), cached
    (answered from the cache by this run), prompt_tokens and completion_tokens (paid), cost}}."""
    out = collections.defaultdict(dict)
    for (stage, role), row in sorted(self.usage.items()):
      out[stage][role] = {k: row[k] for k in ("requests", "cached", "prompt_tokens", "completion_tokens", "cost")}
    return dict(out)
