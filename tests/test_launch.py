"""The README's main command, as a user runs it, and its config validation."""

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "launch/train.py", *args], cwd=ROOT, capture_output=True,
                        text=True, env=env, timeout=600)


def test_demo_runs_end_to_end(tmp_path):
  """The README's main command, shrunk: toy data prepared, evaluated, trained, evaluated, then the
  two RL arms, each scored in thinking mode on the held-out world."""
  args = ("--config", "configs/demo.py", "--workdir", str(tmp_path), "--config.demo.videos=3",
          "--config.pretrain.steps=2", "--config.pretrain.batch_size=4", "--config.total_steps=3",
          "--config.log_every_steps=1", "--config.data.batch_size=4", "--config.eval.batch_size=8",
          "--config.demo.rl_test_videos=2", "--config.rl.steps=2", "--config.rl.prompts_per_step=2",
          "--config.rl.samples=2", "--config.rl.max_new_tokens=8")
  out = _train(*args)
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["pretrain"]["steps"] == 2 and results["sft"]["steps"] == 3
  assert results["after_pretrain"]["n"] == results["after_sft"]["n"]  # the table's after-pretraining row
  assert 0 <= results["after_sft"]["accuracy"] <= 1 and 0 <= results["after_sft"]["perception"] <= 1
  assert results["after_sft_swap"]["n"] == results["after_sft"]["n"] > 8  # the video ablation
  answers = [json.loads(line) for line in (tmp_path / "eval_after_sft.jsonl").read_text().splitlines()]
  assert {"id", "question", "answer", "response", "correct", "truncated"} <= set(answers[0])
  assert "after_sft" in out.stderr and "chance" in out.stderr and "perception" in out.stderr  # the table
  # the guessers that never see a frame, on the same questions
  assert results["chance"]["n"] == results["text only"]["n"] == results["after_sft"]["n"]
  assert "text only" in out.stderr and 0 < results["chance"]["by_form"]["mc"] == 0.25
  assert 0 < results["chance"]["perception"] <= 1 and "parsed_rate" not in results["text only"]
  # evaluation's progress bar (with its ETA) runs to the number of batches
  batches = -(-results["after_sft"]["n"] // 8)
  assert re.search(rf"eval qa_eval \(swap\): 100%.*\b{batches}/{batches} \[", out.stderr), out.stderr[-2000:]
  assert json.loads((tmp_path / "config.json").read_text())["total_steps"] == 3
  assert (tmp_path / "checkpoints" / "3").exists() and (tmp_path / "metrics.jsonl").exists()
  # the pretraining stage: its own checkpoints and metrics, only the perception task
  stage = [json.loads(line) for line in (tmp_path / "pretrain" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in stage] == [1, 2] and (tmp_path / "pretrain" / "checkpoints" / "2").exists()
  assert all({k for k in r if k.startswith("loss_")} == {"loss_perception"} for r in stage)
  # RL: two arms from the SFT weights, the SFT weights and each arm scored on the held-out world
  for name in ("after_sft_thinking", "after_rl_acc_fmt", "after_rl_o_and_r"):
    assert {"accuracy", "n", "parsed_rate", "observations_per_response", "unsupported_observation_rate",
            "stderr"} <= set(results[name]) and results[name]["n"] == results["after_sft_thinking"]["n"] > 0, name
  assert "vs_sft" in results["after_rl_o_and_r"] and "after_rl_o_and_r" in out.stderr and "starts from" in out.stderr
  # the same command again finds every stage finished: nothing is trained twice, the same answers
  stages = ("pretrain", ".", "rl_acc_fmt", "rl_o_and_r")
  logs = [(tmp_path / d / "metrics.jsonl").read_text() for d in stages]
  out = _train(*args)
  assert out.returncode == 0, out.stderr[-3000:]
  assert [(tmp_path / d / "metrics.jsonl").read_text() for d in stages] == logs
  again = json.loads((tmp_path / "results.json").read_text())
  assert again["after_sft"] == results["after_sft"] and again["after_rl_o_and_r"] == results["after_rl_o_and_r"]


def test_recipe_runs_as_users_launch_it(tmp_path):
  """`launch/train.py --config configs/sft_qwen2_5_vl_7b.py` as a TPU user runs it, its `:tiny`
  variant on CPU: the tiny architecture with the recipe's numerics (float32 master weights, bf16
  compute, full remat), its task mix by size, the Qwen vocabulary, the data prepared by
  `launch/prepare.py`, evaluation after training. (It once stopped at start-up: the recipes had no
  tokenizer field; and generation with remat failed to trace.)"""
  from rewatch_jax.demo import toyworld
  toy = tmp_path / "toy"
  toyworld.build(str(toy), count=3, seed=5, test_fraction=0.34)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  small = ["--fps=1", "--max_frames=4", f"--max_pixels={56 * 56}", f"--min_pixels={56 * 56}"]
  for config, split, kind in (("caption", "train", "caption"), ("qa", "train", "qa"), ("cot", "train", "cot"),
                              ("qa_eval", "test", "qa")):
    out = subprocess.run([sys.executable, "launch/prepare.py", "--records", str(toy / f"{split}_{kind}.jsonl"),
                          "--videos", str(toy), "--out", str(tmp_path / "data"), "--config", config, *small],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
  work = tmp_path / "run"
  out = _train("--config", "configs/sft_qwen2_5_vl_7b.py:tiny", "--workdir", str(work),
               f"--config.data.dir={tmp_path / 'data'}", "--config.data.batch_size=4", "--config.total_steps=2",
               "--config.log_every_steps=1", "--config.eval.enabled=True", "--config.eval.limit=4",
               "--config.eval.max_new_tokens=4",  # and the VideoSpec the data was prepared with:
               "--config.video_spec.fps=1", "--config.video_spec.max_frames=4", f"--config.video_spec.min_pixels={56 * 56}",
               f"--config.video_spec.max_pixels={56 * 56}")
  assert out.returncode == 0, out.stderr[-3000:]
  steps = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in steps] == [1, 2] and all(r["skipped_steps"] == 0 for r in steps)
  results = json.loads((work / "results.json").read_text())
  assert results["sft"]["steps"] == 2 and results["after_sft"]["n"] >= 4


def test_console_scripts_run_from_any_folder(tmp_path):
  """The installed entry points (setup.py's console scripts) run outside the checkout: no sys.path
  edits, the config files import only the installed package."""
  bin_dir = os.path.dirname(sys.executable)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  run = lambda name, *args: subprocess.run([os.path.join(bin_dir, name), *args], cwd=tmp_path, capture_output=True,
                                           text=True, env=env, timeout=300)
  out = run("rewatch-prepare", "--toyworld", "1", "--out", str(tmp_path / "toy"))
  assert out.returncode == 0 and "toy world: 1 videos" in out.stderr, out.stderr[-2000:]
  out = run("rewatch-train", "--config", os.path.join(ROOT, "configs", "demo.py"), "--workdir", str(tmp_path / "run"),
            "--config.pretrain.steps=-5")
  assert out.returncode != 0 and "pretrain.steps must be >= 0" in out.stderr and "Traceback" not in out.stderr
  out = run("rewatch-sweep", "--config", os.path.join(ROOT, "configs", "sft_qwen2_5_vl_7b.py"), "--workdir", "/w")
  assert out.returncode == 0 and len(out.stdout.splitlines()) == 3, out.stderr[-2000:]
  assert run("rewatch-convert", "--hf_dir", "x").returncode != 0  # (its usage error)


def test_mistyped_override_fails_at_start():
  out = _train("--config", "configs/demo.py", "--workdir", "/tmp/unused", "--config.data.batch_sise=4")
  assert out.returncode != 0 and "batch_sise" in out.stderr


def test_bad_malloc_setting_is_named_without_a_traceback():
  env = dict(os.environ, JAX_PLATFORMS="cpu", REWATCH_CPU_MALLOC="yes")
  out = subprocess.run([sys.executable, "launch/train.py", "--config", "configs/demo.py", "--workdir", "/tmp/unused"],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
  assert out.returncode != 0 and "REWATCH_CPU_MALLOC must be 0" in out.stderr and "Traceback" not in out.stderr


def test_pretraining_stage_takes_its_own_batch_and_warm_up(prepared, tmp_path):
  """The stage takes its steps, batch size and warm-up (0: the SFT's) and task mix; the SFT's are
  its own."""
  from configs import demo
  from tests.conftest import resolved
  _, data_dir, tokenizer = prepared
  c = demo.get_config()
  c.pretrain.batch_size, c.pretrain.warmup_steps, c.rl.steps = 16, 0, 0
  pretrain, sft = resolved(c, data_dir, tokenizer, str(tmp_path)).stages
  assert (pretrain.total_steps, pretrain.batch_size, pretrain.optimizer.warmup_steps) == (700, 16, 40)
  assert pretrain.task_weights == {"perception": 1.0} and sft.batch_size == 8
  assert sft.task_weights == {"caption": 0.5, "qa": 2.0, "cot": 0.5, "perception": 1.0, "perception_cot": 1.0}


@pytest.mark.parametrize("override, message", [("--config.pretrain.steps=-5", "pretrain.steps must be >= 0"),
                                               ("--config.pretrain.warmup_steps=-1", "pretrain.warmup_steps must be >= 0"),
                                               ("--config.eval.ablation=swp", "eval.ablation must be one of")])
def test_bad_values_fail_at_start_naming_the_key(override, message, tmp_path):
  out = _train("--config", "configs/demo.py", "--workdir", str(tmp_path), override)
  assert out.returncode != 0 and message in out.stderr and "Traceback" not in out.stderr
  assert not os.listdir(tmp_path)  # before the toy world, checkpoints or config.json


def test_invalid_model_override_is_named():
  out = _train("--config", "configs/demo.py", "--workdir", "/tmp/unused", "--config.model.text.num_key_value_heads=3",
               "--verbosity=0")
  assert out.returncode != 0 and "num_key_value_heads" in out.stderr
  assert "malloc uses transparent huge pages" in out.stderr  # rewatch_jax/host.py: restarted before anything else


def test_prepare_toyworld(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "launch/prepare.py", "--toyworld", "3", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert len(list((tmp_path / "videos").glob("*.mp4"))) == 3
  assert (tmp_path / "test_qa.jsonl").stat().st_size > 0 and "train_cot" in out.stderr
  assert "train_perception" in out.stderr and (tmp_path / "manifest.json").exists()


def test_prepare_records_into_array_record(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = lambda *a: subprocess.run([sys.executable, "launch/prepare.py", *a], cwd=ROOT, capture_output=True,
                                  text=True, env=env, timeout=600)
  out = run("--toyworld", "2", "--out", str(tmp_path / "toy"), "--test_fraction", "0.5")
  assert out.returncode == 0, out.stderr[-2000:]
  out = run("--records", str(tmp_path / "toy" / "test_caption.jsonl"), "--videos", str(tmp_path / "toy"),
            "--out", str(tmp_path / "prep"), "--config", "caption", "--max_frames", "4",
            "--min_pixels", "3136", "--max_pixels", "3136")
  assert out.returncode == 0, out.stderr[-2000:]
  assert "caption: wrote 1 of 1 records" in out.stderr
  assert "1 video, 1 new in the video store" in out.stderr
  assert (tmp_path / "prep" / "rewatch" / "caption" / "1.1.0" / "prepare_report.json").exists()
  assert list((tmp_path / "prep" / "video_store").glob("caption-*.keys.json"))
  out = run("--records", "x.jsonl", "--out", str(tmp_path))
  assert out.returncode != 0 and "--records, --videos and --config" in out.stderr


def test_prepare_reads_released_rewatch_and_video_r1_files(tmp_path):
  """Users train on data they have: the released ReWatch JSON and Video-R1's (whose image records
  are left out), straight from launch/prepare.py."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = lambda *a: subprocess.run([sys.executable, "launch/prepare.py", *a], cwd=ROOT, capture_output=True,
                                  text=True, env=env, timeout=600)
  assert run("--toyworld", "1", "--out", str(tmp_path / "toy"), "--test_fraction", "0").returncode == 0
  video = sorted((tmp_path / "toy" / "videos").glob("*.mp4"))[0].name
  released = [{"source": "videos", "video_path": video, "question": "What moves first?", "answer": "a circle",
               "question_type": "Event Localization"}]
  r1 = [{"problem": "Which shape?", "problem_type": "multiple choice", "options": ["A. circle", "B. square"],
         "solution": "<answer>A</answer>", "path": f"./videos/{video}", "data_type": "video"},
        {"problem": "What is in the image?", "problem_type": "free-form", "solution": "<answer>a cat</answer>",
         "path": "./Image/cat.jpg", "data_type": "image"}]
  (tmp_path / "qa.json").write_text(json.dumps(released))
  (tmp_path / "r1.json").write_text(json.dumps(r1))
  small = ("--max_frames", "4", "--min_pixels", "3136", "--max_pixels", "3136", "--videos", str(tmp_path / "toy"))
  out = run("--records", str(tmp_path / "qa.json"), "--records_format", "rewatch", "--out", str(tmp_path / "a"),
            "--config", "qa", *small)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "read 1 records" in out.stderr and "qa: wrote 1 of 1 records" in out.stderr
  out = run("--records", str(tmp_path / "r1.json"), "--records_format", "video_r1", "--out", str(tmp_path / "b"),
            "--config", "qa", *small)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "qa: wrote 1 of 1 records" in out.stderr and "left out 1 image records" in out.stderr
  out = run("--records", str(tmp_path / "qa.json"), "--out", str(tmp_path / "c"), "--config", "qa", *small)
  assert out.returncode != 0 and "no row of" in out.stderr and "prefix it, e.g. rewatch:" in out.stderr
  # the RL mix in one call, each file in its own format, with a caption-less video reported
  out = run("--records", f"rewatch:{tmp_path / 'qa.json'},video_r1:{tmp_path / 'r1.json'}", "--out",
            str(tmp_path / "d"), "--config", "rl", *small)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "rl: wrote 2 of 2 records" in out.stderr and "2 of 2 records have no caption" in out.stderr


def test_sweep_dry_run_and_tpu_pod_command():
  out = subprocess.run([sys.executable, "launch/sweep.py", "--config", "configs/sft_qwen2_5_vl_7b.py",
                        "--workdir", "gs://b/sweep", "--tpu", "pod-1", "--zone", "us-east5-a"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 3 and "dry run: 3 runs" in out.stderr
  assert lines[0].startswith("gcloud compute tpus tpu-vm ssh pod-1 --worker=all")
  assert "--config.optimizer.learning_rate=5e-07" in lines[0] and "gs://b/sweep/learning_rate=5e-07_seed=0" in lines[0]


def test_compilation_cache_goes_under_the_workdir_on_accelerators_only():
  from rewatch_jax.train.resolve import _compilation_cache_dir as cache_dir
  assert cache_dir("jax_cache", "gs://b/run", "tpu") == "gs://b/run/jax_cache"
  assert cache_dir("jax_cache", "/runs/a", "gpu") == "/runs/a/jax_cache"
  assert cache_dir("jax_cache", "/runs/a", "cpu") == ""  # executables use the host's instruction set
  for path in ("/shared/jax_cache", "gs://b/cache"):
    assert cache_dir(path, "/runs/a", "tpu") == path
  assert cache_dir("", "/runs/a", "tpu") == ""
