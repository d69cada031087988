"""Costs: per stage and role from the price table, nothing for cached answers, the cap checked."""

import pytest

from data_synthesis.costs import BudgetExceeded, Costs, Price
from rewatch_jax.hosted.client import Completion


def test_costs_by_stage_and_role_and_the_budget_cap():
  costs = Costs({"flash": {"prompt": 0.30, "completion": 2.50}, "local": Price(0, 0)}, budget=0.01)
  costs.check_models(["flash", "local"])
  with pytest.raises(ValueError, match="no price for model.*gpt-x"):
    costs.check_models(["flash", "gpt-x"])
  paid = Completion("x", "stop", prompt_tokens=10_000, completion_tokens=1_000)
  assert costs.charge("caption", "M_cap", "flash", paid) == pytest.approx(0.003 + 0.0025)
  assert costs.charge("caption", "M_cap", "flash", Completion("x", "stop", 10_000, 1_000, cached=True)) == 0.0
  costs.charge("cot", "observer", "local", paid)
  costs.check()  # 0.0055 of 0.01
  costs.charge("qa", "M_qa", "flash", paid)
  assert costs.exhausted
  with pytest.raises(BudgetExceeded, match="spent \\$0.0110 of the \\$0.0100 budget"):
    costs.check()
  table = costs.table()
  assert table["caption"]["M_cap"] == dict(requests=1, cached=1, prompt_tokens=10_000, completion_tokens=1_000,
                                           cost=pytest.approx(0.0055))
  assert table["cot"]["observer"]["cost"] == 0.0
  assert costs.estimate("flash", 100, 2_000, 500) == pytest.approx(100 * (0.0006 + 0.00125))
  assert not Costs({}, budget=0).exhausted  # 0: no cap
  assert Costs({}, budget=1.0, spent=1.5).exhausted  # a rerun carries what earlier runs spent


def test_the_ledger_carries_spending_over_runs(tmp_path):
  ledger = str(tmp_path / "spend.jsonl")
  first = Costs({"flash": Price(0.30, 2.50)}, budget=1.0, ledger=ledger)
  paid = Completion("x", "stop", prompt_tokens=10_000, completion_tokens=1_000)
  first.charge("qa", "M_qa", "flash", paid)
  first.charge("qa", "M_qa", "flash", Completion("x", "stop", 10_000, 1_000, cached=True))  # not in the ledger
  with open(ledger, "a") as f:
    f.write('{"stage": "qa", "role"')  # a line torn by kill -9
  rerun = Costs({"flash": Price(0.30, 2.50)}, budget=1.0, ledger=ledger)
  assert rerun.spent == pytest.approx(0.0055)
  rerun.charge("qa", "M_qa", "flash", paid)  # (after the torn line: read back too)
  assert Costs({}, ledger=ledger).spent == pytest.approx(0.011)
  assert rerun.table()["qa"]["M_qa"] == dict(requests=2, cached=0, prompt_tokens=20_000, completion_tokens=2_000,
                                             cost=pytest.approx(0.011))
