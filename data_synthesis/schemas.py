"""The JSON each role answers with: one pydantic model per output kind. The model's JSON schema is
sent as the request's `response_format` (vLLM, SGLang and the cloud APIs constrain decoding to
it), and the answer is validated against the same model; its `name` tells the endpoint (and the
offline oracle) what is asked for."""

from __future__ import annotations

from typing import Literal

import pydantic

from rewatch_jax.data.records import LETTERS


class _Out(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="forbid")


class Span(_Out):
  start: float = pydantic.Field(ge=0)  # seconds
  end: float = pydantic.Field(ge=0)

  @pydantic.model_validator(mode="after")
  def _ordered(self):
    if self.end < self.start:
      raise ValueError(f"span ends ({self.end}) before it starts ({self.start})")
    return self


class Segments(_Out):
  """M_seg: semantically coherent segments of the whole video, in order (absolute seconds)."""
  segments: list[Span] = pydantic.Field(min_length=1)


class Event(Span):
  text: str = pydantic.Field(min_length=1)


class Events(_Out):
  """M_cap: the events of one segment, times relative to the segment's start."""
  events: list[Event] = pydantic.Field(min_length=1)


class Summary(_Out):
  """M_sum: C_sum, a short summary of C_detail."""
  summary: str = pydantic.Field(min_length=1)


class Question(_Out):
  question: str = pydantic.Field(min_length=1)
  answer: str = pydantic.Field(min_length=1)
  question_type: str


class Questions(_Out):
  """M_qa: questions answerable from C_detail and not from C_sum."""
  questions: list[Question]


class Verdict(_Out):
  """M_verify (F1): is the answer right, given the detailed caption?"""
  correct: bool


class Answer(_Out):
  """The probes (F2 question only, F3 question and summary)."""
  answer: str


class MultipleChoice(_Out):
  """M_rewrite: four options, one of them the answer."""
  options: list[str] = pydantic.Field(min_length=4, max_length=4)
  answer: Literal[tuple(LETTERS[:4])]


class Step(_Out):
  """The Reasoner: a thought and one action, or the final answer."""
  thought: str
  action: Literal["segment_retrieval", "segment_query", "final_answer"]
  query: str = ""  # segment_retrieval: what to find
  start: str = ""  # segment_query: MM:SS
  end: str = ""
  answer: str = ""  # final_answer


class Observation(_Out):
  """The Observer: what the detailed caption says about the action's query or span."""
  observation: str = pydantic.Field(min_length=1)


class Reasoning(_Out):
  """M_convert: the trajectory as first-person CoT text with <action>, <observation>, <answer>."""
  reasoning: str = pydantic.Field(min_length=1)


def response_format(schema: type[pydantic.BaseModel]) -> dict:
  """The OpenAI `response_format` asking for JSON of `schema`."""
  return {"type": "json_schema", "json_schema": {"name": schema.__name__, "strict": True,
                                                 "schema": schema.model_json_schema()}}

