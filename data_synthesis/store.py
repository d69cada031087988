"""A stage's output that survives kill -9 without losing or repeating work.

Each stage writes two append-only JSONL files under the output folder:
* `<stage>.jsonl`: its records in the project's record format (`records.to_json`), which
  `launch/prepare.py --records` reads as they are;
* `<stage>.done.jsonl`: the done-manifest, one line per finished work item (a video, a QA pair):
  its stable id, its status ("ok", "skipped", "quarantined", ...), the ids of the records it wrote,
  and whatever the stage notes about it (usage, cost, verdicts).

An item is committed by appending its records, flushing them to disk, then appending its done line
and flushing that: the done line is the commit point. Reopening a stage (a rerun of the same
command) keeps exactly the records of committed items: a torn last line (killed mid-write) and the
records of an item killed before its done line are dropped (the files rewritten atomically), and
the item counts as not done, so it is redone (its paid requests answered from the hosted client's
cache). A record id committed twice is written once. The committed records are also
kept in memory (`order`, `by_id`), where the next stage reads them as they come.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

from rewatch_jax.data import records


class StageStore:
  """The records and done-manifest of one stage in `out_dir` (see the module docstring)."""

  def __init__(self, out_dir: str, stage: str):
    os.makedirs(out_dir, exist_ok=True)
    self.path = os.path.join(out_dir, f"{stage}.jsonl")
    self.done_path = os.path.join(out_dir, f"{stage}.done.jsonl")
    done_lines, torn = _read_lines(self.done_path)
    self.done: dict[str, dict] = {d["item"]: d for d in done_lines}
    if torn:
      _rewrite(self.done_path, done_lines)
    committed = {rid for d in self.done.values() for rid in d["records"]}
    lines, torn = _read_lines(self.path)
    kept, seen = [], set()
    for line in lines:  # the records of committed items, each once
      if line["id"] in committed and line["id"] not in seen:
        kept.append(line)
        seen.add(line["id"])
    self.dropped = len(lines) - len(kept)  # written by an item killed before its commit
    if torn or self.dropped:
      _rewrite(self.path, kept)
    self.order = [records.from_json(line) for line in kept]  # committed records, in commit order
    self.by_id = {r.id: r for r in self.order}

  def is_done(self, item: str) -> bool:
    return item in self.done

  def commit(self, item: str, recs: Iterable[records.Record] = (), status: str = "ok", **info: Any) -> None:
    """Append an item's records, then its done line (the commit point); `info` must be JSON."""
    if item in self.done:
      raise ValueError(f"item {item!r} is already done in {self.done_path}")
    recs = list(recs)
    new = list({r.id: r for r in recs if r.id not in self.by_id}.values())
    _append(self.path, [records.to_json(r) for r in new])
    line = dict(item=item, status=status, records=[r.id for r in recs], **info)
    _append(self.done_path, [line])
    self.done[item] = line
    self.order += new  # (visible to the next stage once committed)
    self.by_id.update((r.id, r) for r in new)

  def records(self) -> Iterator[records.Record]:
    return iter(self.order)

  def __len__(self) -> int:
    return len(self.order)


def read_log(path: str) -> list[dict]:
  """The entries of an append-only JSONL log (the spending ledger, the quarantine, the ReAct
  journal); a last line torn by a kill is cut off the file, so that the next append starts clean."""
  lines, torn = _read_lines(path)
  if torn:
    with open(path, "rb+") as f:
      data = f.read()
      f.truncate(data.rfind(b"\n") + 1)
  return lines


def append_log(path: str, entry: dict) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(entry, ensure_ascii=False) + "\n")


def _read_lines(path: str) -> tuple[list[dict], bool]:
  """The JSON lines of `path` and whether its last line was torn (not newline-terminated JSON)."""
  if not os.path.exists(path):
    return [], False
  with open(path, "rb") as f:
    data = f.read()
  lines, torn = data.split(b"\n"), False
  if lines and lines[-1]:  # no final newline: a write cut short
    lines, torn = lines[:-1], True
  out = []
  for i, raw in enumerate(lines):
    if not raw.strip():
      continue
    try:
      out.append(json.loads(raw))
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{i + 1}: not JSON ({e}); this file is written only by the synthesis run") from None
  return out, torn


def _append(path: str, lines: list[dict]) -> None:
  if not lines:
    return
  data = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode()
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    os.write(fd, data)
    os.fsync(fd)
  finally:
    os.close(fd)


def _rewrite(path: str, lines: list[dict]) -> None:
  write_atomic(path, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))


def write_atomic(path: str, text: str) -> None:
  """Replace `path` with `text` all at once (a kill leaves the old file or the new, never half)."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
  with os.fdopen(fd, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
