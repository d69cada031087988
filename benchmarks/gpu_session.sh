#!/usr/bin/env bash
# One prepared run of benchmarks/train_step_gpu.py on a lent GPU machine (the `device` tool), whose
# image has jax/flax/optax/torch/transformers but not grain, tfds or ml_collections. First, here:
#   echo /.whl/ >> .git/info/exclude; mkdir -p .whl && cd .whl && for p in grain==0.2.18 \
#     array-record==0.8.6 tensorflow-datasets==4.9.10 tensorflow-metadata immutabledict portpicker \
#     toml dm-tree ml-collections==1.1.0 importlib_resources; do python3 -m pip download --no-deps \
#     --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d . $p; done; \
#     python3 -m pip wheel --no-deps promise -w .
# then run `bash benchmarks/gpu_session.sh` there with carry [".whl"]. 2026-11-28 on an H200 it took
# 427 s (smoke ~60 s, ours ~150 s incl. an 86 s compile, HF ~60 s, the einsum-attention run ~120 s).
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import jax,flax,optax,transformers,torch;print('jax',jax.__version__,'flax',flax.__version__,'optax',optax.__version__,'transformers',transformers.__version__,'torch',torch.__version__,jax.devices())"
# a small run first: fails fast (in ~1 min) if the image's packages disagree with our code
timeout 150 python3 benchmarks/train_step_gpu.py --small --impls jax --steps 2 --frames 4 --size 224 --length 512 --trained 64 || exit 1
# --profile_dir: two more traced steps of ours, their longest device ops printed (where MFU is lost)
BENCH_LOG_DIR=${OUT:-/tmp} python3 benchmarks/train_step_gpu.py --budget_s "${BUDGET:-240}" \
  --profile_dir "${OUT:-/tmp}/profile" "$@" 2>&1 | tee "${OUT:-/tmp}/train_step_gpu.txt"
