"""Generation: the sampler (greedy or temperature / top-k / top-p, several samples a prompt from
one prefill, early stop) that evaluation, RL rollouts and the server's engine use."""

from rewatch_jax.generate.sampler import SAMPLER_RULES, Generation, for_sampling, generate, generate_hf_inputs

__all__ = ["SAMPLER_RULES", "Generation", "for_sampling", "generate", "generate_hf_inputs"]
