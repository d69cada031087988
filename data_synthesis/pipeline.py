"""The synthesis run: stages over work items, resumable, with its report and dataset card.

`Synthesis(config, videos, out).run(stages)` runs the stages (stages.py has what each does), all
at once: a stage's work items (a video; a QA pair) start as the stage before commits their
inputs, at most `items_in_flight` at once a stage, all sharing one hosted client per endpoint (its
concurrency and rate limits); an item's records are committed to the stage's StageStore as it
finishes, so a run killed at any moment and started again redoes only unfinished items, and their
requests already paid for come from the client's cache. An item fails alone: an unreadable video,
an answer that stays invalid (quarantined), a content filter; an endpoint that stays down leaves
its items undone for the next run. Once the budget is spent no new item starts; the run ends with
its report written.

Outputs under `out`: captions.jsonl, qa.jsonl (open and MC forms, linked by `lineage.extra.pair`),
cot.jsonl; the intermediate qa_candidates.jsonl and qa_filtered.jsonl; each stage's done-manifest
(<stage>.done.jsonl); quarantine.jsonl; spend.jsonl (the ledger of paid requests); cache/ (the
answers); report.json and README.md (the dataset card).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import json
import os
import time
from collections.abc import Sequence

import ml_collections
from tqdm import tqdm

from data_synthesis import stages
from data_synthesis.costs import BudgetExceeded, Costs, Price
from data_synthesis.roles import Asker, Failed, Quarantine, Role, Unfinished
from data_synthesis.stages import Outcome
from data_synthesis.store import StageStore, write_atomic
from rewatch_jax.data.records import CaptionRecord
from rewatch_jax.hosted.client import ClientConfig, HostedClient, HostedError

STAGES = stages.STAGE_NAMES
STORES = {"caption": "captions", "qa": "qa_candidates", "filter": "qa_filtered", "mc": "qa", "cot": "cot"}


class Synthesis:
  def __init__(self, config: ml_collections.ConfigDict, videos: str, out: str):
    self.c, self.videos_dir, self.out = config, videos, out
    os.makedirs(out, exist_ok=True)
    self.roles = {name: Role(name=name, **dict(cfg)) for name, cfg in config.roles.items()}
    client_cfg = dict(config.client)
    client_cfg["cache_dir"] = client_cfg["cache_dir"] or os.path.join(out, "cache")
    urls = {client_cfg["base_url"], *(r.base_url for r in self.roles.values() if r.base_url)}
    self.clients = {url: HostedClient(ClientConfig(**{**client_cfg, "base_url": url})) for url in urls}
    self.costs = Costs({m: Price(p, c) for m, p, c in config.prices}, config.budget,
                       ledger=os.path.join(out, "spend.jsonl"))
    self.quarantine = Quarantine(out)
    self.asker = Asker(self.clients, client_cfg["base_url"], self.costs, self.quarantine, config.repair_attempts)
    self.stores = {stage: StageStore(out, name) for stage, name in STORES.items()}
    self.journal = stages.StepJournal(os.path.join(out, "cot.steps.jsonl"))
    self.unfinished: collections.Counter = collections.Counter()
    self.stopped = ""  # why the run stopped early (the budget spent), "" when it did not
    self.decode_slots: asyncio.Semaphore | None = None
    self._captions: dict[str, CaptionRecord] = {}
    self._captions_seen = 0

  # ---- start-up checks ----

  def models_used(self) -> dict[str, set[str]]:
    """{base_url: models} the configured roles call."""
    used = collections.defaultdict(set)
    for role in self.roles.values():
      url = role.base_url or self.c.client.base_url
      if role.name == "probe_text":
        used[url].update(self.c.filter.text_probes)
      elif role.name == "probe_summary":
        used[url].update(self.c.filter.summary_probes)
      else:
        used[url].add(role.model)
    return used

  def check(self) -> None:
    """Fail fast, before decoding anything: every model priced, every endpoint up and serving it."""
    used = self.models_used()
    self.costs.check_models(set().union(*used.values()))
    for url, models in used.items():
      try:
        served = set(self.clients[url].models())
      except HostedError as e:
        raise SystemExit(f"error: the endpoint is not reachable: {e}") from None
      missing = sorted(models - served)
      if missing:
        raise SystemExit(f"error: {url} does not serve {missing} (it serves {sorted(served)}); "
                         "fix the roles' models in the config")

  # ---- running ----

  def run(self, which: Sequence[str] = STAGES) -> dict:
    unknown = [s for s in which if s not in STAGES]
    if unknown:
      raise ValueError(f"unknown stages {unknown}; stages: {STAGES}")
    self.check()
    started = time.time()
    try:
      asyncio.run(self._run(which))
    finally:
      report = self.report(time.time() - started)
    return report

  async def _run(self, which: Sequence[str]) -> None:
    self.decode_slots = asyncio.Semaphore(self.c.decode_workers)
    self.wake = {name: asyncio.Event() for name in STAGES}
    self.finished = {name: asyncio.Event() for name in STAGES}
    for name in STAGES:
      if name not in which:  # its records so far are all the next stage gets
        self.finished[name].set()
    async with contextlib.AsyncExitStack() as sessions:
      for client in self.clients.values():  # one connection pool and rate limit per endpoint
        await sessions.enter_async_context(client.session())
      await asyncio.gather(*(self._stage(name, getattr(stages, name)(self)) for name in STAGES if name in which))

  async def _stage(self, name: str, stage: stages.Stage) -> None:
    """Run `stage`'s items as they become known: all at once for the first stage, then one per
    record the upstream stage commits, at most `items_in_flight` at a time, until the upstream
    stage has finished and nothing is left (the stages overlap: no stage waits for the last item
    of the one before)."""
    store, wake, limit = self.stores[name], self.wake[name], self.c.items_in_flight
    bar = tqdm(total=0, desc=f"{name:8s}", unit="item", position=STAGES.index(name), dynamic_ncols=True)
    queue, started, running, errors = collections.deque(stage.initial), set(), set(), []
    seen = 0  # upstream records read so far

    def finished(task: asyncio.Task) -> None:
      running.discard(task)
      if not task.cancelled() and task.exception() is not None:
        errors.append(task.exception())
      wake.set()

    while True:
      wake.clear()
      upstream_done = stage.upstream is None or self.finished[stage.upstream].is_set()  # (before reading)
      if stage.upstream is not None:
        upstream = self.stores[stage.upstream].order
        for record in upstream[seen:]:
          queue.extend(stage.items_of(record))
        seen = len(upstream)
      while queue and len(running) < limit and not self.stopped:
        item = queue.popleft()
        if item in started:
          continue
        started.add(item)
        bar.total += 1
        if store.is_done(item):
          bar.update(1)
          continue
        task = asyncio.create_task(self._item(name, item, stage.work, bar))
        running.add(task)
        task.add_done_callback(finished)
      bar.refresh()
      if errors:
        raise errors[0]
      if upstream_done and not running and (not queue or self.stopped):
        break
      await wake.wait()
    bar.close()
    self.finished[name].set()
    for event in self.wake.values():
      event.set()

  async def _item(self, name: str, item: str, work, bar) -> None:
    """One work item: done and committed, failed and committed, or left for the next run."""
    try:
      self.costs.check()
    except BudgetExceeded as e:
      self.stopped = str(e)
      return
    try:
      outcome = await work(item)
    except Unfinished as e:
      self.unfinished[name] += 1
      if self.unfinished[name] <= 3:
        tqdm.write(f"{name}: {item} left for the next run: {e}" + ("; further ones are counted in the report"
                                                                    if self.unfinished[name] == 3 else ""))
      return
    except Failed as e:
      outcome = Outcome(status=f"error:{e.kind}", info={"error": str(e)})
    self.stores[name].commit(item, outcome.records, outcome.status, **outcome.info)
    bar.update(1)
    bar.set_postfix_str(f"${self.costs.spent:.4f} {self._tokens() / 1e3:.0f}k tok", refresh=False)
    for event in self.wake.values():  # (the next stage has a new record)
      event.set()

  def caption(self, video: str) -> CaptionRecord:
    """The committed caption (C_detail) of `video`."""
    captions = self.stores["caption"].order
    while self._captions_seen < len(captions):
      self._captions[captions[self._captions_seen].video] = captions[self._captions_seen]
      self._captions_seen += 1
    return self._captions[video]

  def _tokens(self) -> int:
    return sum(r["prompt_tokens"] + r["completion_tokens"] for r in self.costs.usage.values())

  # ---- report ----

  def report(self, seconds: float = 0.0) -> dict:
    """report.json and README.md (the dataset card), from the files (they count what is there)."""
    done = {name: list(store.done.values()) for name, store in self.stores.items()}
    by_status = {name: dict(collections.Counter(d["status"] for d in lines)) for name, lines in done.items()}
    files = {STORES[name]: len(store) for name, store in self.stores.items()}
    errors = collections.defaultdict(collections.Counter)  # stage -> request errors by kind
    for client in self.clients.values():
      for stage, counts in client.errors_by_tag.items():
        errors[stage].update(counts)
    filters = collections.Counter()
    per_type = collections.defaultdict(collections.Counter)
    for d in done["filter"]:
      filters[d["status"]] += 1
      for why in d.get("dropped_by", []):
        filters[f"dropped_by_{why}"] += 1
      per_type[d.get("question_type", "?")][d["status"]] += 1
    cot = collections.Counter(d["status"] for d in done["cot"])
    tried = sum(cot.values())
    report = dict(
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        stopped=self.stopped, seconds_this_run=round(seconds, 1),
        files=dict(**{f"{k}.jsonl": v for k, v in files.items()},
                   **{"quarantine.jsonl": len(self.quarantine.keys)}),
        items=by_status, unfinished=dict(self.unfinished),
        unreadable=[{"video": d["item"], "error": d.get("error", "")} for d in done["caption"]
                    if d["status"] in ("unreadable", "too_short")],
        usage=self.costs.table(), spent=round(self.costs.spent, 6), budget=self.c.budget,
        errors_this_run={stage: dict(c) for stage, c in sorted(errors.items())},
        invalid_answers_this_run=self.asker.invalid,
        filters=dict(kept=filters["kept"], dropped=filters["dropped"],
                     **{k: v for k, v in filters.items() if k.startswith("dropped_by_")}),
        filters_by_type={t: dict(c) for t, c in sorted(per_type.items())},
        cot=dict(tried=tried, accepted=cot["ok"], acceptance_rate=round(cot["ok"] / tried, 4) if tried else None,
                 **{k: v for k, v in cot.items() if k != "ok"}),
        roles={name: {**r.lineage(), **({"models": list(self.c.filter.text_probes)} if name == "probe_text" else
                                         {"models": list(self.c.filter.summary_probes)} if name == "probe_summary"
                                         else {})}
               for name, r in self.roles.items()},
        video_spec_hash=stages.spec_hashes(self),
    )
    write_atomic(os.path.join(self.out, "report.json"), json.dumps(report, indent=1))
    write_atomic(os.path.join(self.out, "README.md"), card(report))
    return report


def card(r: dict) -> str:
  """The dataset card (README.md) from a report."""
  lines = ["# ReWatch synthetic data", "",
           f"Written {r['created']} by rewatch-jax `launch/synthesize.py`. Records in the project's format: "
           "`launch/prepare.py --records` reads them as they are.", ""]
  if r["stopped"]:
    lines += [f"**The run stopped early:** {r['stopped']}", ""]
  lines += ["## Files", "", "| file | records |", "|---|---:|"]
  lines += [f"| {f} | {n} |" for f, n in r["files"].items()]
  lines += ["", "## Work items per stage", "", "| stage | status | items |", "|---|---|---:|"]
  for stage, counts in r["items"].items():
    lines += [f"| {stage} | {status} | {n} |" for status, n in sorted(counts.items())]
  if r["unfinished"]:
    lines += ["", f"Unfinished (endpoint errors; a rerun redoes them): {r['unfinished']}"]
  if r["unreadable"]:
    lines += ["", "Skipped videos:", ""] + [f"- `{u['video']}`: {u['error']}" for u in r["unreadable"]]
  lines += ["", "## Usage and cost (USD)", "", "| stage | role | requests | cached | prompt tokens | "
            "completion tokens | cost |", "|---|---|---:|---:|---:|---:|---:|"]
  for stage, roles in r["usage"].items():
    for role, u in roles.items():
      lines.append(f"| {stage} | {role} | {u['requests']} | {u['cached']} | {u['prompt_tokens']} | "
                   f"{u['completion_tokens']} | {u['cost']:.4f} |")
  lines += ["", f"Spent ${r['spent']:.4f}" + (f" of a ${r['budget']:.2f} budget." if r["budget"] else "."), "",
            "Request errors this run (each retried, or its item left for the next run), by stage and kind: "
            + ("; ".join(f"{stage}: {dict(c)}" for stage, c in r["errors_this_run"].items()) or "none")
            + f". Invalid answers (repaired or quarantined): {r['invalid_answers_this_run']}.", "",
            "## Filters (F1 answer verification, F2 text-only probes, F3 summary probes)", "",
            f"Kept {r['filters']['kept']}, dropped {r['filters']['dropped']} "
            f"({', '.join(f'{k[11:]}: {v}' for k, v in r['filters'].items() if k.startswith('dropped_by_')) or '-'}).",
            "", "| question type | kept | dropped |", "|---|---:|---:|"]
  lines += [f"| {t} | {c.get('kept', 0)} | {c.get('dropped', 0)} |" for t, c in r["filters_by_type"].items()]
  c = r["cot"]
  lines += ["", "## CoT (Multi-Agent ReAct)", "",
            f"{c['accepted']} of {c['tried']} trajectories accepted (rate {c['acceptance_rate']}); "
            + ", ".join(f"{k}: {v}" for k, v in c.items() if k not in ("tried", "accepted", "acceptance_rate")), "",
            "## Models and prompts", "", "| role | model | prompt | temperature | top_p | max_tokens |",
            "|---|---|---|---:|---:|---:|"]
  for name, role in r["roles"].items():
    model = ", ".join(role["models"]) if "models" in role else role["model"]
    lines.append(f"| {name} | {model} | {role['prompt']} | {role['temperature']} | {role['top_p']} | "
                 f"{role['max_tokens']} |")
  lines += ["", f"VideoSpec hashes: {r['video_spec_hash']}", ""]
  return "\n".join(lines)

