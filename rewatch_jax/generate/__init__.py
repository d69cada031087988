"""Generation with the KV cache (the evaluation's greedy decoding; the RL sampler and the server's
engine will live here)."""

from rewatch_jax.generate.sampler import greedy_generate

__all__ = ["greedy_generate"]
