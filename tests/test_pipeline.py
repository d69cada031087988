"""Grain pipelines over prepared toy-world data: mixture, buckets, host slices, exact resume, mesh."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rewatch_jax.data import pipeline, records, tfds_rewatch
from rewatch_jax.data.batching import Bucket, unfit_summary
from rewatch_jax.data.video import VideoSpec
from rewatch_jax.demo import toyworld
from rewatch_jax.models import Qwen25VL, get_preset

SPEC = VideoSpec(fps=1.0, max_frames=4, min_pixels=56 * 56, max_pixels=56 * 56, total_pixels=4 * 56 * 56)
BUCKETS = [Bucket(length=640, patches=512, frame_block=64)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("pipe")
  toyworld.build(str(root / "toy"), count=3, seed=21, test_fraction=0.34)
  read = lambda name: list(records.read_jsonl(str(root / "toy" / f"train_{name}.jsonl")))
  caps = read("caption")
  qas = read("qa")
  two_videos = [q for pair in zip(qas[:3], qas[-3:]) for q in pair]  # alternating videos
  assert len({q.video for q in two_videos}) == 2
  for name, recs, kind in (("caption", caps, None), ("qa", qas[:12], None), ("cot", read("cot")[:12], None),
                           ("rl", two_videos, None), ("perception", read("perception")[:8], "qa")):
    tfds_rewatch.prepare(str(root / "prep"), name, recs, str(root / "toy"), SPEC, kind=kind, captions=caps)
  return str(root / "prep")


def _cfg():
  tiny = get_preset("tiny")
  return tiny.replace(text=tiny.text.__class__(**{**tiny.text.__dict__, "vocab_size": 151680}),
                      image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                      vision_end_token_id=151653, bos_token_id=151643, eos_token_id=151645)


def _pc(data, **kw):
  return pipeline.PipelineConfig(data_dir=data, **{"batch_size": 4, "buckets": BUCKETS, **kw})


def test_sft_mixture_shapes_and_weights(data):
  it = iter(pipeline.sft_dataset(_pc(data, weights={"caption": 1, "qa": 2, "cot": 1}), _cfg()))
  tasks = collections.Counter()
  for _ in range(6):
    b = next(it)
    assert b["inputs"].input_ids.shape == (4, 640) and b["inputs"].pixel_values.shape[:2] == (4, 512)
    assert b["loss_targets"].shape == (4, 640) and (b["loss_weights"].sum(1) > 0).all()
    rows = np.arange(4)[:, None]
    real = b["loss_weights"] > 0  # each trained target is the token after its index
    np.testing.assert_array_equal(b["inputs"].input_ids[rows, b["loss_index"] + 1][real], b["loss_targets"][real])
    tasks.update(b["task"].tolist())
  assert tasks[1] > tasks[0] and tasks[1] > tasks[2] and len(tasks) == 3  # qa weighted 2:1:1


def test_mixing_by_size_draws_each_example_equally_often(data):
  """mix_by_size (the recipes): weights 1 draw tasks in proportion to their sizes (here 2 captions,
  12 QA, 12 CoT), ReWatch's concatenation; without it, by weight alone."""
  share = {}
  for by_size in (True, False):
    it = iter(pipeline.sft_dataset(_pc(data, weights={"caption": 1, "qa": 1, "cot": 1}, batch_by_task=False,
                                       mix_by_size=by_size), _cfg()))
    tasks = collections.Counter(t for _ in range(30) for t in next(it)["task"].tolist())
    share[by_size] = tasks[0] / sum(tasks.values())
  assert share[True] < 0.15 and 0.2 < share[False] < 0.45  # 2/26 = 0.08 against 1/3


def test_perception_examples_count_as_their_own_task(data):
  """Perception examples are QA records prepared as a set of their own; their losses are logged
  under the task they are drawn from, in either batching."""
  for by_task in (True, False):
    it = iter(pipeline.sft_dataset(_pc(data, weights={"qa": 1, "perception": 1}, batch_by_task=by_task), _cfg()))
    seen = collections.Counter(t for _ in range(6) for t in next(it)["task"].tolist())
    assert set(seen) == {0, 1}, seen  # numbered in the order of the weights


def test_iterator_state_restores_exactly(data):
  ds = pipeline.sft_dataset(_pc(data, seed=3), _cfg())
  it = iter(ds)
  for _ in range(2):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(2)]
  again = iter(ds)
  again.set_state(state)
  for want in expected:
    got = next(again)
    assert got["meta"]["id"] == want["meta"]["id"]
    np.testing.assert_array_equal(got["inputs"].pixel_values, want["inputs"].pixel_values)


@pytest.mark.parametrize("by_task", [True, False])
def test_sft_stream_starts_at_a_batch(data, by_task):
  """`start=k` reads on from batch k of the same stream: how a run resumes on another process count."""
  pc = _pc(data, batch_by_task=by_task)
  fresh = iter(pipeline.sft_dataset(pc, _cfg()))
  want = [next(fresh) for _ in range(5)][3:]
  later = iter(pipeline.sft_dataset(pc, _cfg(), start=3))
  for w in want:
    got = next(later)
    assert got["meta"]["id"] == w["meta"]["id"]
    np.testing.assert_array_equal(got["inputs"].input_ids, w["inputs"].input_ids)


def test_processes_read_disjoint_slices(data, monkeypatch):
  """Evaluation: every process reads its own rows of each global batch, the last one padded with
  copies (meta["real"] counts the real rows) so that all have as many batches, all full."""
  seen, counts = [], []
  for i in range(2):
    monkeypatch.setattr(jax, "process_index", lambda i=i: i)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    batches = list(pipeline.eval_dataset(_pc(data), _cfg(), "qa"))
    assert all(b["inputs"].input_ids.shape == (4, 640) for b in batches)
    counts.append([b["meta"]["real"] for b in batches])
    seen.append([x for b in batches for x in b["meta"]["id"][:b["meta"]["real"]]])
  assert counts == [[4, 2], [4, 2]]  # 12 questions in global batches of 8, rows interleaved
  assert not set(seen[0]) & set(seen[1]) and len(seen[0] + seen[1]) == len(set(seen[0] + seen[1])) == 12


def test_processes_agree_on_every_batchs_bucket(data, monkeypatch):
  """Each global batch takes the bucket that holds all of it, read from the shapes prepare kept,
  so every process's arrays have one shape (jax.make_array_from_process_local_data needs it): a
  process whose own examples fit the short bucket still pads to the long one its batch-mates
  need. The global batches are the ones a single process reads, in the same bucket."""
  buckets = [Bucket(length=200, patches=512, frame_block=64), Bucket(length=640, patches=512, frame_block=64)]

  def read(rank, count, **kw):
    monkeypatch.setattr(jax, "process_index", lambda: rank)
    monkeypatch.setattr(jax, "process_count", lambda: count)
    pc = pipeline.PipelineConfig(data_dir=data, batch_size=4 // count, buckets=buckets, seed=3, **kw)
    if kw:
      it = iter(pipeline.sft_dataset(pc, _cfg()))
      return [next(it) for _ in range(12)]
    return list(pipeline.eval_dataset(pc, _cfg(), "rl"))

  longest = lambda b: int(b["inputs"].attention_mask[:b["meta"]["real"]].sum(1).max(initial=0))
  for kw in (dict(weights={"qa": 2, "cot": 1}, batch_by_task=False), {}):  # SFT mixing tasks, evaluation
    one, two = read(0, 1, **kw), zip(read(0, 2, **kw), read(1, 2, **kw))
    short_on_one_side = 0  # batches where one process alone would have taken the short bucket
    for j, (a, (b, c)) in enumerate(zip(one, two)):
      assert a["inputs"].input_ids.shape[1] == b["inputs"].input_ids.shape[1] == c["inputs"].input_ids.shape[1], j
      assert sorted(a["meta"]["id"]) == sorted(b["meta"]["id"] + c["meta"]["id"])
      short_on_one_side += min(longest(b), longest(c)) <= 200 < max(longest(b), longest(c))
    assert short_on_one_side > 0


def test_rl_and_eval_keep_ground_truth(data):
  batch = next(iter(pipeline.eval_dataset(_pc(data), _cfg(), "rl")))
  assert batch["loss_weights"].sum() == 0  # prompts only
  assert all(batch["meta"]["caption"]) and all(batch["meta"]["answer"])
  rl = next(iter(pipeline.rl_dataset(_pc(data), _cfg())))
  assert rl["inputs"].input_ids.shape == (4, 640)


def test_multiprocess_workers_match_in_process(data):
  a = iter(pipeline.sft_dataset(_pc(data, seed=5), _cfg()))
  b = iter(pipeline.sft_dataset(_pc(data, seed=5, workers=1), _cfg()))
  try:
    for _ in range(2):
      x, y = next(a), next(b)
      assert x["meta"]["id"] == y["meta"]["id"]
      np.testing.assert_array_equal(x["inputs"].positions, y["inputs"].positions)
  finally:
    b.close()


def test_bucket_overflow_is_named(data):
  pc = _cfg()
  small = pipeline.PipelineConfig(data_dir=data, batch_size=2, buckets=[Bucket(32, 512, 64)])
  with pytest.raises(ValueError, match="fits no bucket"):
    next(iter(pipeline.eval_dataset(small, pc, "qa")))
  with pytest.raises(ValueError, match="fits no bucket"):  # SFT batches are collated per task
    next(iter(pipeline.sft_dataset(small, pc)))


def test_training_batches_replace_examples_that_fit_no_bucket(data):
  """A CoT example too long for the only bucket does not stop training (at real scale that would be
  hours in, and again at the same batch after every resume): it becomes a zero-weight copy of the
  shortest example that fits, listed under meta["unfit"], and the batch keeps its shape."""
  short = Bucket(length=200, patches=512, frame_block=64)
  pc = pipeline.PipelineConfig(data_dir=data, batch_size=4, buckets=[short], weights={"qa": 4, "cot": 1},
                               batch_by_task=False)
  it = iter(pipeline.sft_dataset(pc, _cfg()))
  unfit = 0
  for _ in range(8):
    b = next(it)
    assert b["inputs"].input_ids.shape == (4, 200)
    blank = b["loss_weights"].sum(1) == 0
    assert blank.sum() == len(b["meta"]["unfit"]) and set(b["meta"]["unfit"]).isdisjoint(np.array(b["meta"]["id"])[~blank])
    assert (b["task"][~blank] == 0).all()  # only QA (task 0) fits 200 tokens: the CoT rows are stand-ins
    unfit += len(b["meta"]["unfit"])
  assert unfit > 0
  # ... and the trainer says at start-up how many there are, from the shapes prepare kept: here
  # every CoT example (all longer than 200 tokens), no QA
  from rewatch_jax.data import tfds_rewatch
  cot = tfds_rewatch.example_shapes(data, "cot")
  assert cot is not None and (cot[:, 3] > 200).all()
  line = unfit_summary(data, "cot", _cfg(), [short])
  assert line.startswith(f"cot: {len(cot)} of {len(cot)} prepared examples (100.0%) fit no bucket")
  assert unfit_summary(data, "qa", _cfg(), [short]) is None
  assert unfit_summary(data, "cot", _cfg(), BUCKETS) is None



def test_a_process_whose_examples_all_fit_no_bucket_stands_in_its_batch_mates(data, monkeypatch):
  """Two processes, batches mixing QA (fits the 200-token bucket) and CoT (does not): where all of
  one process's rows are CoT, its rows become zero-weight copies of the global batch's shortest
  fitting example (read from the other process's share), in the bucket both use."""
  short = Bucket(length=200, patches=512, frame_block=64)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  streams = []
  for rank in range(2):
    monkeypatch.setattr(jax, "process_index", lambda rank=rank: rank)
    pc = pipeline.PipelineConfig(data_dir=data, batch_size=2, buckets=[short], weights={"qa": 1, "cot": 1},
                                 batch_by_task=False, seed=1)
    it = iter(pipeline.sft_dataset(pc, _cfg()))
    streams.append([next(it) for _ in range(16)])
  seen = 0
  for a, b in zip(*streams):
    for mine, theirs in ((a, b), (b, a)):
      if len(mine["meta"]["unfit"]) == 2 and not theirs["meta"]["unfit"] == theirs["meta"]["id"]:
        seen += 1
        assert mine["inputs"].input_ids.shape == (2, 200) and mine["loss_weights"].sum() == 0
        length = lambda r: sum(t != 151643 for t in r)
        fitting = {tuple(r) for r in theirs["inputs"].input_ids[theirs["loss_weights"].sum(1) > 0].tolist()}
        for r in map(tuple, mine["inputs"].input_ids.tolist()):
          assert r in fitting and length(r) == min(map(length, fitting))
  assert seen > 0

def test_batches_go_onto_the_mesh_and_through_the_model(data):
  mesh = jax.make_mesh((4, 2, 1), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
  pc = pipeline.PipelineConfig(data_dir=data, batch_size=8, buckets=BUCKETS)
  batch = next(iter(pipeline.sft_dataset(pc, _cfg())))
  placed, meta = pipeline.to_global(batch, mesh)
  assert len(meta["id"]) == 8
  assert placed["inputs"].positions.sharding.spec == jax.sharding.PartitionSpec(None, ("data", "fsdp"))
  assert len(placed["inputs"].pixel_values.addressable_shards) == 8
  model = Qwen25VL(_cfg(), rngs=nnx.Rngs(0))
  hidden = nnx.jit(lambda m, x: m(x, return_hidden=True))(model, placed["inputs"])
  assert hidden.shape == (8, 640, 64) and bool(jnp.isfinite(hidden).all())


def test_evaluate_scores_prompts_and_runs_the_video_ablations(data, monkeypatch):
  from rewatch_jax.data import chat
  from rewatch_jax.evaluation import accuracy, evaluate
  model = Qwen25VL(_cfg(), rngs=nnx.Rngs(0))
  fed = []  # the pixel rows each generation saw
  generate = accuracy.generate
  monkeypatch.setattr(accuracy, "generate", lambda m, x, **k: fed.append(np.asarray(x.pixel_values)) or generate(m, x, **k))
  run = lambda ablation: evaluate(model, data, "rl", chat.qwen_tokenizer(), BUCKETS[:1], batch_size=6,
                                  max_new_tokens=6, stop_ids=_cfg().stop_token_ids, pad_id=151643, ablation=ablation)
  seen, blind, swap = run(""), run("blank"), run("swap")
  assert fed[0].dtype == np.uint8 and fed[0].any()  # the pipeline's raw rows, normalised by the model
  assert fed[1].dtype == np.float32 and not fed[1].any()  # blank: normalised zeros (mid-grey), not black
  assert seen["n"] == blind["n"] == swap["n"] == 6 and 0 <= seen["accuracy"] <= seen["parsed_rate"] <= 1
  assert set(seen["by_type"]) <= set(records.QUESTION_TYPES) and set(seen["by_form"]) <= {"mc", "open"}
  assert swap["swapped"] == 1.0 and "swapped" not in seen  # one batch of 3 + 3 questions
  assert seen["video_spec_hash"] == SPEC.hash  # the report says which frames it scored
  # the same prompts, different pixels: a random model's greedy tokens change
  assert [p["question"] for p in seen["predictions"]] == [p["question"] for p in blind["predictions"]]
  assert [p["response"] for p in seen["predictions"]] != [p["response"] for p in blind["predictions"]]
  for r in (seen, blind, swap):  # one row per question, and the summary counts them
    assert len(r["predictions"]) == r["n"]
    assert sum(p["correct"] is True for p in r["predictions"]) == round(r["accuracy"] * r["n"])
    assert sum(p["correct"] is not None for p in r["predictions"]) == round(r["parsed_rate"] * r["n"])
    assert sum(p["truncated"] for p in r["predictions"]) == round(r["truncated"] * r["n"]) >= r["cut_off"]
  with pytest.raises(ValueError, match="ablation"):
    run("shuffle")


def test_swap_gives_each_question_another_videos_frames(data):
  import json

  from rewatch_jax.evaluation import swap_videos
  batch = next(iter(pipeline.eval_dataset(_pc(data, batch_size=6), _cfg(), "rl")))  # 3 + 3 questions
  videos = [json.loads(r)["video"] for r in batch["meta"]["record"]]
  assert sorted(collections.Counter(videos).values()) == [3, 3]
  old = np.asarray(batch["inputs"].pixel_values)
  new, moved = swap_videos(batch["inputs"], videos)
  assert moved == len(videos)
  for i, rows in enumerate(np.asarray(new.pixel_values)):
    sources = [j for j in range(len(videos)) if np.array_equal(rows, old[j])]
    assert sources and all(videos[j] != videos[i] for j in sources)
  # one video only: nothing can move
  assert swap_videos(batch["inputs"], ["v"] * len(videos))[1] == 0


def test_batches_hold_one_task_and_take_its_smallest_bucket(data):
  """batch_by_task (the default): QA batches fit a short bucket that captions and CoT overflow;
  with it off, tasks share batches and every batch pads to the long bucket."""
  short, long = Bucket(length=200, patches=512, frame_block=64), BUCKETS[0]
  lengths = {}
  for by_task in (True, False):
    pc = pipeline.PipelineConfig(data_dir=data, batch_size=4, buckets=[short, long], batch_by_task=by_task)
    it = iter(pipeline.sft_dataset(pc, _cfg()))
    batches = [next(it) for _ in range(12)]
    lengths[by_task] = {(len(set(b["task"].tolist())), b["task"][0], b["inputs"].input_ids.shape[1]) for b in batches}
  assert {(1, 1, 200), (1, 0, 640), (1, 2, 640)} == lengths[True]
  assert all(n > 1 for n, _, _ in lengths[False])  # mixed batches
