#!/usr/bin/env bash
# One prepared run of benchmarks/train_step_gpu.py on a lent GPU machine (the `device` tool), whose
# image has jax/flax/optax/torch/transformers but not grain, tfds or ml_collections. First, here:
#   echo /.whl/ >> .git/info/exclude; mkdir -p .whl && cd .whl && for p in grain==0.2.18 \
#     array-record==0.8.6 tensorflow-datasets==4.9.10 tensorflow-metadata immutabledict portpicker \
#     toml dm-tree ml-collections==1.1.0 importlib_resources; do python3 -m pip download --no-deps \
#     --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d . $p; done; \
#     python3 -m pip wheel --no-deps promise -w .
# then run `bash benchmarks/gpu_session.sh [train_step_gpu.py flags]` there with carry [".whl"]. On an H200
# (2026-11-30) `--impls jax,torch,jax_unpadded --steps 8` ran 349 s: each of ours ~140 s (a ~100 s
# compile, the cuDNN check, 8 steps, 2 traced), HF ~60 s; the machine's start added ~35 s.
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import jax,flax,optax,transformers,torch;print('jax',jax.__version__,'flax',flax.__version__,'optax',optax.__version__,'transformers',transformers.__version__,'torch',torch.__version__,jax.devices())"
# SMOKE=1: a small run first, failing fast (in ~1 min) if the image's packages disagree with our code
[ -z "$SMOKE" ] || timeout 150 python3 benchmarks/train_step_gpu.py --small --impls jax --steps 2 --frames 4 \
  --size 224 --length 512 --trained 64 || exit 1
# --profile_dir: two more traced steps of ours, their longest device ops printed (where MFU is lost);
# HLO=1 adds --dump_hlo: the optimised train step, to read the profile's fusions against (one impl
# then: $OUT brings back at most 8 files). Back here: python benchmarks/gpu_trace.py TRACE [HLO].
mkdir -p "${OUT:=/tmp/out}"
BENCH_LOG_DIR=$OUT python3 benchmarks/train_step_gpu.py --budget_s "${BUDGET:-240}" --profile_dir /tmp/profile \
  ${HLO:+--dump_hlo /tmp/hlo} "$@" 2>&1 | tee "$OUT/train_step_gpu.txt"
cp /tmp/profile/*_device_trace.json.gz "$OUT/" 2>/dev/null
for d in /tmp/hlo/*/; do
  f=$(ls -S "$d"*after_optimizations.txt 2>/dev/null | head -1)
  [ -n "$f" ] && gzip -c "$f" > "$OUT/hlo_$(basename "$d").txt.gz" && cp "${f%.txt}-memory-usage-report.txt" "$OUT/" 2>/dev/null
done
ls -la "$OUT"
