"""Qwen2.5-VL model configuration: one frozen dataclass, the published sizes, HF config.json I/O.

The published presets are transcribed from the `config.json` of the Qwen/Qwen2.5-VL-*-Instruct
releases; `rewatch_jax.hf.load_pretrained` always reads the folder's own config.json, so the presets
are only used for random initialisation, FLOP counting and `configs/*.py` defaults.
"""

from __future__ import annotations

import dataclasses
from typing import Any


class ConfigError(ValueError):
  """A model configuration that cannot describe a valid Qwen2.5-VL."""


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  depth: int = 32
  hidden_size: int = 1280
  intermediate_size: int = 3420
  num_heads: int = 16
  out_hidden_size: int = 3584
  in_channels: int = 3
  patch_size: int = 14
  temporal_patch_size: int = 2
  spatial_merge_size: int = 2
  window_size: int = 112  # in pixels; windows hold (window_size // patch // merge)^2 merged units
  fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
  tokens_per_second: int = 2  # M-RoPE temporal ids per second of video
  rope_theta: float = 10000.0
  rms_norm_eps: float = 1e-6  # fixed in the reference implementation

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def patch_dim(self) -> int:
    """Length of one flattened pixel row: channels * temporal_patch * patch * patch."""
    return self.in_channels * self.temporal_patch_size * self.patch_size**2

  @property
  def merge_unit(self) -> int:
    return self.spatial_merge_size**2

  @property
  def window_merged(self) -> int:
    """Window side length in merged units (4 for the released models)."""
    return self.window_size // self.spatial_merge_size // self.patch_size


@dataclasses.dataclass(frozen=True)
class TextConfig:
  vocab_size: int = 152064
  hidden_size: int = 3584
  intermediate_size: int = 18944
  num_hidden_layers: int = 28
  num_attention_heads: int = 28
  num_key_value_heads: int = 4
  rms_norm_eps: float = 1e-6
  rope_theta: float = 1e6
  mrope_section: tuple[int, int, int] = (16, 24, 24)  # temporal, height, width (sums to head_dim/2)
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 128000

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads


# ModelConfig fields that change numerics or memory, not the architecture or the weights: a
# checkpoint or HF folder can be loaded with any of them.
RUNTIME_FIELDS = ("param_dtype", "dtype", "remat", "attention", "pad_mlp_to")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture (first block) plus numerics/runtime options (second block)."""
  vision: VisionConfig = VisionConfig()
  text: TextConfig = TextConfig()
  image_token_id: int = 151655
  video_token_id: int = 151656
  vision_start_token_id: int = 151652
  vision_end_token_id: int = 151653
  bos_token_id: int = 151643
  eos_token_id: int = 151645

  param_dtype: str = "float32"
  dtype: str = "float32"  # compute dtype of matmuls; norms, rotary, softmax and logits stay fp32
  remat: str = "none"  # none | full | dots (save matmul outputs) -- applied per decoder/vision block
  # Text self-attention without a KV cache (training, scoring): "xla" (einsum, fp32 softmax, any
  # mask) or "cudnn" (jax.nn.dot_product_attention's fused flash kernel; NVIDIA GPUs, bf16/fp16,
  # causal only, so batches must be right-padded as our collators make them). Decoding with a
  # cache and the vision tower's small block-diagonal attention always use "xla".
  attention: str = "xla"
  # MLP hidden widths computed zero-padded to a multiple of this (layers.SwiGLU): 128 turns the
  # vision tower's 3420 into 3456, which GPU matmul kernels run far faster (the H200 step 1.1x,
  # benchmarks/RESULTS.md); 1 (off) on CPU, where it would only add work.
  pad_mlp_to: int = 1

  @property
  def stop_token_ids(self) -> tuple[int, int]:
    """Where generation stops: <|im_end|> (eos_token_id) and <|endoftext|> (bos_token_id in Qwen's
    config), as the released models' generation_config.json lists them."""
    return self.eos_token_id, self.bos_token_id

  def replace(self, **kw) -> ModelConfig:
    return dataclasses.replace(self, **kw)

  def validate(self) -> ModelConfig:
    v, t = self.vision, self.text
    problems = []
    if t.hidden_size % t.num_attention_heads:
      problems.append(f"text hidden_size {t.hidden_size} not divisible by num_attention_heads {t.num_attention_heads}")
    if t.num_attention_heads % t.num_key_value_heads:
      problems.append(f"num_attention_heads {t.num_attention_heads} not divisible by num_key_value_heads "
                      f"{t.num_key_value_heads}")
    if len(t.mrope_section) != 3 or sum(t.mrope_section) != t.head_dim // 2:
      problems.append(f"mrope_section {tuple(t.mrope_section)} must have 3 entries summing to head_dim/2 = "
                      f"{t.head_dim // 2}")
    if v.hidden_size % v.num_heads:
      problems.append(f"vision hidden_size {v.hidden_size} not divisible by num_heads {v.num_heads}")
    if v.head_dim % 4:
      problems.append(f"vision head_dim {v.head_dim} must be divisible by 4 (2D rotary)")
    if v.out_hidden_size != t.hidden_size:
      problems.append(f"vision out_hidden_size {v.out_hidden_size} != text hidden_size {t.hidden_size}")
    if v.window_merged < 1 or v.window_size % (v.patch_size * v.spatial_merge_size):
      problems.append(f"window_size {v.window_size} must be a positive multiple of patch_size*spatial_merge_size")
    bad = [i for i in v.fullatt_block_indexes if not 0 <= i < v.depth]
    if bad:
      problems.append(f"fullatt_block_indexes {bad} outside [0, depth={v.depth})")
    ids = dict(image=self.image_token_id, video=self.video_token_id,
               vision_start=self.vision_start_token_id, vision_end=self.vision_end_token_id)
    for name, i in ids.items():
      if not 0 <= i < t.vocab_size:
        problems.append(f"{name}_token_id {i} outside vocab_size {t.vocab_size}")
    for name, value in (("param_dtype", self.param_dtype), ("dtype", self.dtype)):
      if value not in ("float32", "bfloat16"):
        problems.append(f"{name} must be float32 or bfloat16, got {value!r}")
    if self.remat not in ("none", "full", "dots"):
      problems.append(f"remat must be none|full|dots, got {self.remat!r}")
    if self.attention not in ("xla", "cudnn"):
      problems.append(f"attention must be xla|cudnn, got {self.attention!r}")
    if self.attention == "cudnn" and self.dtype != "bfloat16":
      problems.append("attention='cudnn' needs dtype='bfloat16' (the fused kernel has no fp32 path)")
    if self.pad_mlp_to < 1:
      problems.append(f"pad_mlp_to must be >= 1, got {self.pad_mlp_to}")
    if problems:
      raise ConfigError("Invalid Qwen2.5-VL config: " + "; ".join(problems))
    return self

  # ---- plain dicts (checkpoints, ml_collections) ----
  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any], **overrides) -> ModelConfig:
    d = dict(d)
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ConfigError(f"unknown model config fields: {sorted(unknown)}")
    tuples = lambda sub: {k: tuple(x) if isinstance(x, list) else x for k, x in sub.items()}
    vision = VisionConfig(**tuples(d.pop("vision", {})))
    text = TextConfig(**tuples(d.pop("text", {})))
    return cls(vision=vision, text=text, **{**d, **overrides}).validate()

  # ---- Hugging Face config.json ----
  @classmethod
  def from_hf_dict(cls, d: dict[str, Any], **runtime) -> ModelConfig:
    """Reads both the released (transformers 4, flat text fields) and transformers 5 layouts."""
    if d.get("model_type") not in (None, "qwen2_5_vl"):
      raise ConfigError(f"config.json model_type is {d.get('model_type')!r}, expected 'qwen2_5_vl'")
    td = dict(d)
    td.update(d.get("text_config") or {})
    rope = td.get("rope_parameters") or td.get("rope_scaling") or {}
    vd = d.get("vision_config") or {}
    vrope = vd.get("rope_parameters") or {}
    text = TextConfig(
        vocab_size=td["vocab_size"], hidden_size=td["hidden_size"],
        intermediate_size=td["intermediate_size"], num_hidden_layers=td["num_hidden_layers"],
        num_attention_heads=td["num_attention_heads"],
        num_key_value_heads=td.get("num_key_value_heads") or td["num_attention_heads"],
        rms_norm_eps=td.get("rms_norm_eps", 1e-6),
        rope_theta=rope.get("rope_theta", td.get("rope_theta", 1e6)),
        mrope_section=tuple(rope.get("mrope_section", (16, 24, 24))),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", td.get("tie_word_embeddings", False))),
        max_position_embeddings=td.get("max_position_embeddings", 128000),
    )
    vision = VisionConfig(
        depth=vd.get("depth", 32), hidden_size=vd.get("hidden_size", 1280),
        intermediate_size=vd.get("intermediate_size", 3420), num_heads=vd.get("num_heads", 16),
        out_hidden_size=vd.get("out_hidden_size", text.hidden_size),
        in_channels=vd.get("in_channels", vd.get("in_chans", 3)), patch_size=vd.get("patch_size", 14),
        temporal_patch_size=vd.get("temporal_patch_size", 2),
        spatial_merge_size=vd.get("spatial_merge_size", 2), window_size=vd.get("window_size", 112),
        fullatt_block_indexes=tuple(vd.get("fullatt_block_indexes", (7, 15, 23, 31))),
        tokens_per_second=vd.get("tokens_per_second", 2),
        rope_theta=vrope.get("rope_theta", 10000.0),
    )
    if vd.get("hidden_act", "silu") != "silu" or td.get("hidden_act", "silu") != "silu":
      raise ConfigError("only hidden_act='silu' is supported (as in every released Qwen2.5-VL)")
    eos = d.get("eos_token_id", td.get("eos_token_id", 151645))
    return cls(
        vision=vision, text=text,
        image_token_id=d.get("image_token_id", 151655), video_token_id=d.get("video_token_id", 151656),
        vision_start_token_id=d.get("vision_start_token_id", 151652),
        vision_end_token_id=d.get("vision_end_token_id", 151653),
        bos_token_id=d.get("bos_token_id", td.get("bos_token_id", 151643)) or 151643,
        eos_token_id=eos[0] if isinstance(eos, list) else eos,
        **runtime,
    ).validate()

  def to_hf_dict(self) -> dict[str, Any]:
    """The released (flat) layout, which transformers 4.49+ and 5.x both read."""
    t, v = self.text, self.vision
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
        "intermediate_size": t.intermediate_size, "num_hidden_layers": t.num_hidden_layers,
        "num_attention_heads": t.num_attention_heads, "num_key_value_heads": t.num_key_value_heads,
        "hidden_act": "silu", "rms_norm_eps": t.rms_norm_eps, "rope_theta": t.rope_theta,
        "rope_scaling": {"type": "mrope", "mrope_section": list(t.mrope_section)},
        "max_position_embeddings": t.max_position_embeddings,
        "tie_word_embeddings": t.tie_word_embeddings, "use_cache": True, "use_sliding_window": False,
        "attention_dropout": 0.0, "torch_dtype": self.param_dtype,
        "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id,
        "image_token_id": self.image_token_id, "video_token_id": self.video_token_id,
        "vision_start_token_id": self.vision_start_token_id,
        "vision_end_token_id": self.vision_end_token_id,
        "vision_config": {
            "depth": v.depth, "hidden_size": v.hidden_size, "intermediate_size": v.intermediate_size,
            "num_heads": v.num_heads, "out_hidden_size": v.out_hidden_size,
            "in_chans": v.in_channels, "in_channels": v.in_channels, "patch_size": v.patch_size,
            "temporal_patch_size": v.temporal_patch_size, "spatial_merge_size": v.spatial_merge_size,
            "window_size": v.window_size, "fullatt_block_indexes": list(v.fullatt_block_indexes),
            "tokens_per_second": v.tokens_per_second, "hidden_act": "silu",
            "model_type": "qwen2_5_vl",
        },
    }


def _published(text: TextConfig, vision_intermediate: int) -> ModelConfig:
  return ModelConfig(
      text=text,
      vision=VisionConfig(intermediate_size=vision_intermediate, out_hidden_size=text.hidden_size))


PRESETS: dict[str, ModelConfig] = {
    "3b": _published(TextConfig(vocab_size=151936, hidden_size=2048, intermediate_size=11008,
                                num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                                tie_word_embeddings=True), 3420),
    "7b": _published(TextConfig(), 3420),
    "32b": _published(TextConfig(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
                                 num_attention_heads=40, num_key_value_heads=8), 3456),
    "72b": _published(TextConfig(hidden_size=8192, intermediate_size=29568, num_hidden_layers=80,
                                 num_attention_heads=64, num_key_value_heads=8), 3456),
    # Same architecture, test-sized: GQA, 2 windows per 8x8-merged frame, one full-attention block,
    # mrope sections summing to head_dim/2, special ids inside a small vocabulary.
    "tiny": ModelConfig(
        text=TextConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, mrope_section=(2, 3, 3)),
        vision=VisionConfig(depth=3, hidden_size=32, intermediate_size=64, num_heads=2,
                            out_hidden_size=64, window_size=56, fullatt_block_indexes=(1,)),
        image_token_id=500, video_token_id=501, vision_start_token_id=502,
        vision_end_token_id=503, bos_token_id=504, eos_token_id=505),
}


def get_preset(name: str, **overrides) -> ModelConfig:
  if name not in PRESETS:
    raise ConfigError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides).validate()
