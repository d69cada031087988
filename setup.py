"""rewatch-jax: ReWatch-R1 video reasoning (Qwen2.5-VL, SFT + GRPO) in JAX/Flax NNX."""

from setuptools import find_packages, setup

# One narrow, tested set of pins (Python 3.11, CPU). Accelerator builds come from the extras.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "grain==0.2.18",
    "array-record==0.8.6",
    "tensorflow-datasets==4.9.10",  # builds/reads ArrayRecord without TensorFlow
    "importlib_resources>=6",  # needed by tensorflow-datasets builders, not declared by it
    "transformers==5.24.0",  # tokenizers and the reference processor/config classes
    "tokenizers==0.23.3",
    "safetensors==0.8.0",
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    "imageio-ffmpeg==0.8.1",
    "etils==1.15.0",
    "gcsfs==2026.10.1",  # gs:// workdirs and HF folders (etils.epath opens them with it)
    "numpy>=2.0,<2.5",
    "tqdm>=4.66",
    "tensorboard==2.21.0",  # event files for metrics (no TensorFlow needed)
    # the RL reward's scorers (rewards/accuracy.py): word error rate, ROUGE, number words
    "jiwer==4.0.0",
    "rouge-score==0.1.2",
    "word2number==1.1",
    "httpx==0.29.0",  # the hosted-model client (rewatch_jax/hosted/): judges, synthesis
    # the OpenAI-compatible server (rewatch_jax/serve/, vLLM's stack) and synthesis's output schemas
    "fastapi==0.165.0",
    "uvicorn==0.55.0",
    "pydantic==2.14.4",
    "pillow>=10",  # frames sent to hosted models as JPEG
]

EXTRAS = {
    # torch pinned to the CPU build that pip finds locally; a bare `torch` pulls a multi-GB CUDA build.
    "test": ["pytest==9.2.0", "torch==2.13.0", "ruff==0.14.10"],
    "tpu": ["jax[tpu]==0.10.2"],
    "gpu": ["jax[cuda12]==0.10.2"],
}

setup(
    name="rewatch-jax",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.11",
    # launch/ (the absl entry points) is installed as rewatch_jax.launch, for the console scripts;
    # `python launch/<name>.py` runs the same files.
    packages=[*find_packages(include=["rewatch_jax", "rewatch_jax.*", "data_synthesis", "data_synthesis.*"]),
              "rewatch_jax.launch"],
    package_dir={"rewatch_jax.launch": "launch"},
    package_data={"data_synthesis": ["prompts/*.txt"]},
    entry_points={"console_scripts": [f"rewatch-{name} = rewatch_jax.launch.{name}:entry"
                                      for name in ("train", "prepare", "convert", "sweep", "synthesize", "serve")]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
