"""Hugging Face Qwen2.5-VL folders in and out.

One name-mapping table (`name_map`) drives both directions: HF key <-> our parameter path, with
the layout change between them ('linear': torch (out, in) <-> our (in, out); 'patch': the Conv3d
(D, C, T, P, P) <-> our (C*T*P*P, D) patch-embedding matmul; 'copy').
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils
from safetensors import safe_open
from safetensors.numpy import save_file

from rewatch_jax.models import ModelConfig, Qwen25VL
from rewatch_jax.models.sharding import DEFAULT_RULES, Rules, param_shardings


class CheckpointError(ValueError):
  """An HF folder that does not hold exactly the tensors of the configured model."""


_VISION_BLOCK = {
    "norm1.weight": ("norm1.scale", "copy"), "norm2.weight": ("norm2.scale", "copy"),
    "attn.qkv.weight": ("attn.qkv.kernel", "linear"), "attn.qkv.bias": ("attn.qkv.bias", "copy"),
    "attn.proj.weight": ("attn.proj.kernel", "linear"), "attn.proj.bias": ("attn.proj.bias", "copy"),
    "mlp.gate_proj.weight": ("mlp.gate.kernel", "linear"), "mlp.gate_proj.bias": ("mlp.gate.bias", "copy"),
    "mlp.up_proj.weight": ("mlp.up.kernel", "linear"), "mlp.up_proj.bias": ("mlp.up.bias", "copy"),
    "mlp.down_proj.weight": ("mlp.down.kernel", "linear"), "mlp.down_proj.bias": ("mlp.down.bias", "copy"),
}
_DECODER_LAYER = {
    "input_layernorm.weight": ("input_layernorm.scale", "copy"),
    "post_attention_layernorm.weight": ("post_attention_layernorm.scale", "copy"),
    **{f"self_attn.{p}_proj.weight": (f"self_attn.{p}_proj.kernel", "linear") for p in "qkvo"},
    **{f"self_attn.{p}_proj.bias": (f"self_attn.{p}_proj.bias", "copy") for p in "qkv"},
    **{f"mlp.{p}_proj.weight": (f"mlp.{p}.kernel", "linear") for p in ("gate", "up", "down")},
}
_TOP = {
    "visual.patch_embed.proj.weight": ("visual.patch_embed.kernel", "patch"),
    "visual.merger.ln_q.weight": ("visual.merger.ln_q.scale", "copy"),
    "visual.merger.mlp.0.weight": ("visual.merger.fc1.kernel", "linear"),
    "visual.merger.mlp.0.bias": ("visual.merger.fc1.bias", "copy"),
    "visual.merger.mlp.2.weight": ("visual.merger.fc2.kernel", "linear"),
    "visual.merger.mlp.2.bias": ("visual.merger.fc2.bias", "copy"),
    "model.embed_tokens.weight": ("text.embed_tokens", "copy"),
    "model.norm.weight": ("text.norm.scale", "copy"),
}


def name_map(cfg: ModelConfig) -> dict[str, tuple[tuple, str]]:
  """HF key (released naming) -> (our nnx state path, layout kind), in a stable order."""
  out = {}
  def add(hf, ours, kind):
    out[hf] = (tuple(int(p) if p.isdigit() else p for p in ours.split(".")), kind)
  for hf, (ours, kind) in _TOP.items():
    add(hf, ours, kind)
  for i in range(cfg.vision.depth):
    for hf, (ours, kind) in _VISION_BLOCK.items():
      add(f"visual.blocks.{i}.{hf}", f"visual.blocks.{i}.{ours}", kind)
  for i in range(cfg.text.num_hidden_layers):
    for hf, (ours, kind) in _DECODER_LAYER.items():
      add(f"model.layers.{i}.{hf}", f"text.layers.{i}.{ours}", kind)
  if not cfg.text.tie_word_embeddings:
    add("lm_head.weight", "text.lm_head", "linear")
  return out


def _canonical(key: str) -> str:
  """transformers 5 in-memory names -> the released checkpoint names."""
  if key.startswith("model.language_model."):
    return "model." + key[len("model.language_model."):]
  if key.startswith("model.visual."):
    return key[len("model."):]
  return key


def to_ours(x: np.ndarray, kind: str) -> np.ndarray:
  if kind == "linear":
    return x.T
  if kind == "patch":
    return x.reshape(x.shape[0], -1).T
  return x


def _our_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
  if kind == "linear":
    return tuple(reversed(shape))
  if kind == "patch":
    return (int(np.prod(shape[1:])), shape[0])
  return tuple(shape)


def from_ours(x: np.ndarray, kind: str, cfg: ModelConfig) -> np.ndarray:
  if kind == "linear":
    return x.T
  if kind == "patch":
    v = cfg.vision
    return x.T.reshape(-1, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
  return x


def _local_dir(path: str) -> tuple[str, str | None]:
  """Local folders are used in place; gs:// (or any epath) folders are copied file by file."""
  p = epath.Path(path)
  if str(path).startswith(("gs://", "s3://")):
    tmp = tempfile.mkdtemp(prefix="rewatch_hf_")
    for f in p.iterdir():
      if f.name.endswith((".json", ".safetensors")):
        f.copy(epath.Path(tmp) / f.name)
    return tmp, tmp
  if not p.is_dir():
    raise CheckpointError(f"{path} is not a directory")
  return str(p), None


def _safetensors_files(d: str) -> list[str]:
  index = os.path.join(d, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      names = sorted(set(json.load(f)["weight_map"].values()))
  else:
    names = sorted(n for n in os.listdir(d) if n.endswith(".safetensors"))
  if not names:
    raise CheckpointError(f"no *.safetensors files in {d}")
  return [os.path.join(d, n) for n in names]


def load_config(hf_dir: str, **runtime) -> ModelConfig:
  with epath.Path(hf_dir, "config.json").open() as f:
    return ModelConfig.from_hf_dict(json.load(f), **runtime)


def load_pretrained(hf_dir: str, dtype: str = "float32", mesh: jax.sharding.Mesh | None = None,
                    rules: Rules = DEFAULT_RULES, **runtime) -> Qwen25VL:
  """Load an HF Qwen2.5-VL folder (config.json + safetensors, local or gs://) into our model.

  Every key, shape and missing/extra tensor is checked before any weight is read, so a bad folder
  fails with one error listing the problems and never yields a partly loaded model. Tensors are
  read one at a time and placed straight onto their devices (sharded by `rules` on `mesh`).
  """
  local, cleanup = _local_dir(hf_dir)
  try:
    cfg = load_config(local, **{"param_dtype": dtype, "dtype": dtype, **runtime})
    abstract = nnx.eval_shape(lambda: Qwen25VL(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    targets = {tuple(path): var for path, var in nnx.to_flat_state(state)}
    shardings = None
    if mesh is not None:
      shardings = {tuple(p): s for p, s in nnx.to_flat_state(param_shardings(state, mesh, rules))}
    expected = name_map(cfg)
    files = _safetensors_files(local)
    located, problems = {}, []
    for path in files:
      with safe_open(path, framework="numpy") as f:
        for key in f.keys():
          name = _canonical(key)
          if name not in expected:
            problems.append(f"unexpected tensor {key} in {os.path.basename(path)}")
            continue
          ours, kind = expected[name]
          shape = tuple(f.get_slice(key).get_shape())
          want = targets[ours].shape
          if _our_shape(shape, kind) != tuple(want):
            problems.append(f"{key}: shape {shape} does not fit {'.'.join(map(str, ours))} {tuple(want)}")
          located[name] = (path, key)
    problems += [f"missing tensor {k}" for k in expected if k not in located]
    if problems:
      raise CheckpointError(f"{hf_dir} does not match the Qwen2.5-VL config in its config.json: "
                            + "; ".join(problems[:20]) + (" ..." if len(problems) > 20 else ""))
    by_file: dict[str, list[str]] = {}
    for name, (path, _) in located.items():
      by_file.setdefault(path, []).append(name)
    for path, names in by_file.items():
      with safe_open(path, framework="numpy") as f:
        for name in names:
          ours, kind = expected[name]
          value = np.ascontiguousarray(to_ours(f.get_tensor(located[name][1]), kind)).astype(jnp.dtype(cfg.param_dtype))
          value = jax.device_put(value, shardings[ours]) if shardings else jnp.asarray(value)
          targets[ours].set_value(value)
    return nnx.merge(graphdef, state)
  finally:
    if cleanup:
      shutil.rmtree(cleanup, ignore_errors=True)


def _host_array(x: jax.Array) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(jax.device_get(x))


def _shards(items: Iterator[tuple[str, np.ndarray]], max_bytes: int):
  shard, size = {}, 0
  for key, arr in items:
    if shard and size + arr.nbytes > max_bytes:
      yield shard
      shard, size = {}, 0
    shard[key] = arr
    size += arr.nbytes
  if shard:
    yield shard


def save_pretrained(model: Qwen25VL, out_dir: str, max_shard_bytes: int = 5 * 1024**3) -> None:
  """Write an HF folder (config.json, generation_config.json, safetensors shards + index) that
  `Qwen2_5_VLForConditionalGeneration.from_pretrained` loads. Multi-host: every process must call
  this (arrays are gathered); only process 0 writes."""
  cfg = model.config
  flat = {tuple(p): v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  items = ((hf, np.ascontiguousarray(from_ours(_host_array(flat[ours][...]), kind, cfg)))
           for hf, (ours, kind) in name_map(cfg).items())
  shards = list(_shards(items, max_shard_bytes))
  if jax.process_index() != 0:
    return
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  weight_map, total = {}, 0
  for i, shard in enumerate(shards):
    name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    with tempfile.TemporaryDirectory() as tmp:
      save_file(shard, os.path.join(tmp, name), metadata={"format": "pt"})
      epath.Path(tmp, name).copy(out / name, overwrite=True)
    for key, arr in shard.items():
      weight_map[key] = name
      total += arr.nbytes
  (out / "model.safetensors.index.json").write_text(json.dumps(
      {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
  (out / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2))
  (out / "generation_config.json").write_text(json.dumps(
      {"bos_token_id": cfg.bos_token_id, "eos_token_id": [cfg.eos_token_id, cfg.bos_token_id],
       "pad_token_id": cfg.bos_token_id}, indent=2))
