"""An offline stand-in for the hosted LVLM: every role answered from the toy world's ground truth.

`OracleBackend(toyworld_dir)` plugs into `rewatch_jax.serve.app` (`launch/serve.py --backend
oracle --toyworld DIR`), so that synthesis runs end to end with no network: synthesize -> prepare
-> train. It reads what `launch/prepare.py --toyworld` wrote (the captions, QA and true CoT
traces of every video) and answers by the requested JSON schema's name (schemas.py), reading the
prompt as a model would: the video named on its `Video:` line, the caption, question and history
in its text, and at least one frame where the role is given frames. It behaves like a decent but
imperfect model, so that every filter and check has something to catch, always the same way for
the same request (a rerun, or a retry, gets the same answer):
* M_qa gives a wrong answer to about 1 question in 8 (F1 catches it);
* the text probe guesses the most common answer of the question's template over the other videos
  (a text-only prior: right where the question gives its answer away, F2 drops those); the summary
  probe answers right when the summary states the answer (F3);
* the Reasoner answers wrongly about 1 trajectory in 6 (rejection sampling drops it);
* about 1 answer in 10 is invalid JSON the first time, valid when asked to repair it;
* M_convert breaks the CoT format for about 1 item in 20, even on repair (quarantined).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re

from data_synthesis.roles import REPAIR
from rewatch_jax.data import records
from rewatch_jax.data.records import LETTERS, format_timestamp, parse_caption, parse_timestamp
from rewatch_jax.demo import toyworld
from rewatch_jax.rewards.accuracy import accuracy
from rewatch_jax.rewards.format import check_format
from rewatch_jax.rewards.judges import content_words

REPAIR_MARK = REPAIR.split("{")[0]  # how the pipeline asks for a repair


def _hash(*parts) -> int:
  return int(hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:8], 16)


def _field(text: str, name: str) -> str:
  m = re.search(rf"^{name}: (.*)$", text, re.M)
  return m.group(1).strip() if m else ""


class OracleBackend:
  def __init__(self, toyworld_dir: str, models: tuple[str, ...] = ("oracle",)):
    self._models = list(models)
    self.captions: dict[str, records.CaptionRecord] = {}
    self.open: dict[tuple[str, str], records.QARecord] = {}
    self.mc: dict[tuple[str, str], records.QARecord] = {}
    self.traces: dict[tuple[str, str], list] = {}
    found = False
    for split in ("train", "test"):
      path = os.path.join(toyworld_dir, f"{split}_caption.jsonl")
      if not os.path.exists(path):
        continue
      found = True
      for c in records.read_jsonl(path):
        self.captions[c.video] = c
      for q in records.read_jsonl(os.path.join(toyworld_dir, f"{split}_qa.jsonl")):
        (self.open if q.form == "open" else self.mc)[q.video, q.question] = q
      for c in records.read_jsonl(os.path.join(toyworld_dir, f"{split}_cot.jsonl")):
        if c.form == "open":
          self.traces[c.video, c.question] = list(check_format(c.reasoning, c.duration).steps)
    if not found:
      raise ValueError(f"{toyworld_dir} holds no toy world ({{train,test}}_caption.jsonl); "
                       "write one with `python launch/prepare.py --toyworld DIR`")
    self.by_summary = {self._summary(c): v for v, c in self.captions.items()}
    self.priors = collections.defaultdict(collections.Counter)  # template -> video -> answers
    for q in self.open.values():
      self.priors[toyworld.template(q)][q.video, q.answer] += 1

  def models(self) -> list[str]:
    return self._models

  def complete(self, model: str, messages: list[dict], params: dict) -> str:
    schema = ((params.get("response_format") or {}).get("json_schema") or {}).get("name")
    handler = getattr(self, f"_{schema}", None)
    if handler is None:
      raise ValueError(f"the oracle answers only JSON-schema requests of the synthesis roles, not {schema!r}")
    texts, images = [], 0
    for m in messages:
      content = m.get("content")
      for p in [{"type": "text", "text": content}] if isinstance(content, str) else content or []:
        if p.get("type") == "text":
          texts.append(p["text"])
        else:
          images += 1
    prompt = "\n".join(texts)
    video = re.search(r"^Video: (\S+)", prompt, re.M)
    video = video.group(1) if video else ""
    if schema in ("Segments", "Events") and not images:
      raise ValueError(f"{schema}: no frames in the request")
    if schema not in ("Answer", "Reasoning") and video not in self.captions:  # (probes, M_convert: no video)
      raise ValueError(f"the oracle knows no video {video!r}" if video else f"{schema}: no 'Video:' line in the prompt")
    out = json.dumps(handler(video, prompt))
    repairing = REPAIR_MARK in prompt
    if not repairing and _hash(schema, prompt) % 10 == 0:
      return out[:-1] + ", and that is my answer"  # invalid JSON, fixed on repair
    return out

  # ---- captions ----

  def _Segments(self, video: str, prompt: str) -> dict:
    caption = self.captions[video]
    length = float(re.search(r"about (\d+(?:\.\d+)?) seconds", prompt).group(1))
    cuts, start = [0.0], 0.0
    for s in caption.segments[:-1]:
      if s.end - start >= length:
        cuts.append(s.end)
        start = s.end
    cuts.append(caption.duration)
    return {"segments": [{"start": a, "end": b} for a, b in zip(cuts[:-1], cuts[1:])]}

  def _Events(self, video: str, prompt: str) -> dict:
    a, b = map(float, re.search(r"segment (\d+(?:\.\d+)?)-(\d+(?:\.\d+)?) s", prompt).groups())
    events = [{"start": max(s.start, a) - a, "end": min(s.end, b) - a, "text": s.text}
              for s in self.captions[video].segments if s.start < b and s.end > a]
    return {"events": events}

  # ---- QA ----

  @staticmethod
  def _summary(caption: records.CaptionRecord) -> str:
    opening = re.split(r"[;.]", caption.segments[0].text)[0]
    return f"{opening}. Then coloured shapes and words come and go on the screen."

  def _Summary(self, video: str, prompt: str) -> dict:
    return {"summary": self._summary(self.captions[video])}

  def _Questions(self, video: str, prompt: str) -> dict:
    limit = int(re.search(r"up to (\d+) question", prompt).group(1))
    out = []
    for (v, question), q in self.open.items():
      if v != video or len(out) >= limit:
        continue
      answer = q.answer
      mc = self.mc.get((v, question))
      if mc is not None and _hash("wrong", v, question) % 8 == 0:
        answer = next(o for o in mc.options if o != q.answer)
      out.append({"question": question, "answer": answer, "question_type": q.question_type})
    return {"questions": out}

  def _truth(self, video: str, question: str) -> records.QARecord:
    q = self.open.get((video, question))
    if q is None:
      raise ValueError(f"the oracle has no question {question!r} on {video}")
    return q

  def _Verdict(self, video: str, prompt: str) -> dict:
    truth = self._truth(video, _field(prompt, "Question"))
    return {"correct": accuracy(_field(prompt, "Proposed answer"), truth) == 1.0}

  def _Answer(self, video: str, prompt: str) -> dict:
    question, summary = _field(prompt, "Question"), _field(prompt, "Summary")
    video = self.by_summary.get(summary, "")
    if video and (video, question) in self.open:
      truth = self.open[video, question].answer
      if re.search(rf"\b{re.escape(truth.lower())}\b", summary.lower()):
        return {"answer": truth}
    # the text prior: the template's most common answer on the other videos
    matches = [q for q in self.open.values() if q.question == question]
    if not matches:
      return {"answer": "I cannot tell"}
    counts = collections.Counter()
    for (v, answer), n in self.priors[toyworld.template(matches[0])].items():
      if v != video and not (len(matches) == 1 and v == matches[0].video):
        counts[answer] += n
    return {"answer": min(counts, key=lambda a: (-counts[a], a)) if counts else "I cannot tell"}

  def _MultipleChoice(self, video: str, prompt: str) -> dict:
    question, answer = _field(prompt, "Question"), _field(prompt, "Correct answer")
    mc = self.mc.get((video, question))
    if mc is not None and answer in mc.options:
      options = [o for o in mc.options if o != answer][:3]
    else:
      pool = sorted({a for (_, a) in self.priors[toyworld.template(self._truth(video, question))]} - {answer})
      options = (pool + ["none of these", "it cannot be seen", "something else"])[:3]
    at = _hash("mc", video, question) % 4
    options.insert(at, answer)
    return {"options": options, "answer": LETTERS[at]}

  # ---- CoT ----

  def _Step(self, video: str, prompt: str) -> dict:
    question = _field(prompt, "Question")
    truth, steps = self._truth(video, question), self.traces.get((video, question), [])
    done = prompt.count("\nObservation: ")
    retrieval_first = bool(steps) and _hash("retrieve", video, question) % 2 == 0
    plan = [("segment_retrieval", s) for s in steps[:1]] * retrieval_first + [("segment_query", s) for s in steps]
    if done < len(plan):
      action, s = plan[done]
      span = f"{format_timestamp(s.start)}-{format_timestamp(s.end)}"
      if action == "segment_retrieval":
        query = " ".join(sorted(content_words(s.observation))[:4])
        return {"thought": f"I should find when {query} happens.", "action": action, "query": query}
      return {"thought": f"I should look closely at {span}.", "action": action,
              "start": format_timestamp(s.start), "end": format_timestamp(s.end)}
    wrong = _hash("wrong-final", video, question) % 6 == 0
    options = re.findall(r"([A-H])\. ([^|]+?)(?: \||$)", _field(prompt, "Options"))
    if options:
      right = [k for k, text in options if text.strip() == truth.answer]
      others = [k for k, text in options if text.strip() != truth.answer]
      answer = others[0] if wrong or not right else right[0]
    else:
      answer = "I am not sure" if wrong else truth.answer
    return {"thought": "I have seen enough to answer.", "action": "final_answer", "answer": answer}

  def _Observation(self, video: str, prompt: str) -> dict:
    caption = parse_caption("\n".join(line for line in prompt.splitlines() if line.startswith("[")))
    request = _field(prompt, "Request")
    span = re.match(r"segment_query (\d+:\d+)-(\d+:\d+)", request)
    if span:
      a, b = parse_timestamp(span.group(1)), parse_timestamp(span.group(2))
      hits = [s for s in caption if s.start < b and s.end > a] or [min(caption, key=lambda s: abs(s.start - a))]
      text = "; ".join(s.text.rstrip(".") for s in hits)
      return {"observation": f"[{span.group(1)}-{span.group(2)}] {text}."}
    words = content_words(request.removeprefix("segment_retrieval"))
    hits = [s for s in caption if len(words & content_words(s.text)) * 2 >= len(words)]
    if not hits:
      return {"observation": "Nothing in the video matches that."}
    return {"observation": " ".join(f"[{format_timestamp(s.start)}-{format_timestamp(s.end)}] {s.text}" for s in hits)}

  def _Reasoning(self, video: str, prompt: str) -> dict:
    lines = prompt[prompt.index("Investigation:"):].splitlines()[1:]
    parts = ["Let me re-watch the parts of the video that matter."]
    for line in lines:
      if line.startswith("Action: segment_query "):
        span = line.removeprefix("Action: segment_query ").strip()
        parts.append(f"<action>re-watch {span} to look closely</action>")
      elif line.startswith("Action: segment_retrieval "):
        parts.append(f"<action>re-watch the video to find when {line.split(' ', 2)[2]} happens</action>")
      elif line.startswith("Observation: "):
        obs = line.removeprefix("Observation: ")
        if not obs.startswith("["):
          parts.pop()  # nothing seen: drop the action
          continue
        parts.append(f"<observation>{obs}</observation>")
      elif line.startswith("Final answer: "):
        answer = line.removeprefix("Final answer: ").strip()
        parts.append(f"So the answer is {answer}.<answer>{answer}</answer>")
    text = " ".join(parts)
    if _hash("broken-cot", video, _field(prompt, "Question")) % 20 == 0:
      text += " I hope that helps."  # text after </answer>: fails the format check, always
    return {"reasoning": text}
