"""Flax NNX Qwen2.5-VL (vision tower + M-RoPE language model), numerically matching Hugging Face."""

from rewatch_jax.models.configs import PRESETS, ConfigError, ModelConfig, TextConfig, VisionConfig, get_preset
from rewatch_jax.models.inputs import ModelInputs, from_hf_inputs
from rewatch_jax.models.qwen2_5_vl import Qwen25VL, forward_hf_inputs
from rewatch_jax.models.text import KVCache

__all__ = [
    "PRESETS", "ConfigError", "ModelConfig", "TextConfig", "VisionConfig", "get_preset",
    "ModelInputs", "from_hf_inputs", "Qwen25VL", "forward_hf_inputs", "KVCache",
]
