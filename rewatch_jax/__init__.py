"""rewatch-jax: ReWatch-R1 (video reasoning for Qwen2.5-VL) in JAX/Flax NNX."""

__version__ = "0.1.0"
