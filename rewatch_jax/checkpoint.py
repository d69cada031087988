"""Orbax checkpoints of the model: one layout for conversion, training and serving.

    <dir>/model_config.json        the ModelConfig (architecture + dtypes)
    <dir>/data.json                training checkpoints: the VideoSpec and tokenizer (with their
                                   hashes) the data they trained on was made with
    <dir>/<step>/params/...        nnx.Param state (Orbax, sharded arrays, any device count)
    <dir>/<step>/<other items>     the trainer adds optimizer state, RNG and data-iterator state

`launch/convert.py` writes step 0 with only `params`; the SFT/GRPO trainers write further steps
into the same kind of directory, so every tool reads any of them with `load_model`.
"""

from __future__ import annotations

import dataclasses
import json

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from rewatch_jax.models import ModelConfig, Qwen25VL
from rewatch_jax.models.sharding import DEFAULT_RULES, Rules, param_shardings

CONFIG_FILE = "model_config.json"
DATA_FILE = "data.json"  # what a training run's frames and tokens were made with (Run.identity)


def write_model_config(directory: str, cfg: ModelConfig) -> None:
  path = epath.Path(directory)
  path.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    (path / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2))


def read_model_config(directory: str, **overrides) -> ModelConfig:
  path = epath.Path(directory) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{directory} is not a rewatch-jax checkpoint directory (no {CONFIG_FILE})")
  return ModelConfig.from_dict(json.loads(path.read_text()), **overrides)


def save_model(model: Qwen25VL, directory: str, step: int = 0) -> None:
  """Save only the parameters as `step` (blocking)."""
  write_model_config(directory, model.config)
  with ocp.CheckpointManager(epath.Path(directory).absolute()) as manager:
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)))
    manager.wait_until_finished()


def load_model(directory: str, step: int | None = None, mesh: jax.sharding.Mesh | None = None,
               rules: Rules = DEFAULT_RULES, **config_overrides) -> Qwen25VL:
  """Restore the parameters of `step` (default: latest) into a model, sharded on `mesh` if given.
  `config_overrides` may change runtime options (dtype, param_dtype, remat, attention), not the architecture."""
  cfg = read_model_config(directory, **config_overrides)
  abstract = nnx.eval_shape(lambda: Qwen25VL(cfg, rngs=nnx.Rngs(0)))
  graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
  if mesh is not None:
    shardings = param_shardings(params, mesh, rules)
  else:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: device, params, is_leaf=_is_var)
  target = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
                        params, shardings, is_leaf=_is_var)
  with ocp.CheckpointManager(epath.Path(directory).absolute()) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint steps in {directory}")
    restored = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(nnx.to_pure_dict(target))))
  nnx.replace_by_pure_dict(params, restored["params"])
  return nnx.merge(graphdef, params, rest)


def _is_var(x) -> bool:
  return isinstance(x, nnx.Variable)


def read_identity(directory: str) -> dict | None:
  """The VideoSpec and tokenizer (with hashes) a training checkpoint folder's data was made with,
  or None where it records none (converted checkpoints, or none there yet)."""
  path = epath.Path(directory) / DATA_FILE
  return json.loads(path.read_text()) if path.exists() else None


class TrainCheckpointer:
  """Training checkpoints in the same layout: `params` plus `opt_state`, `train_meta` (the train
  state's other fields: step, RNG, non-finite streaks) and `data_iter` (the Grain iterator state,
  per process), saved together as one step, asynchronously; the last `keep` are kept. Orbax
  finalises a step atomically, so a run killed at any moment resumes from the last complete one.
  `identity`: what the run's frames and tokens are made with, written beside them (DATA_FILE)."""

  def __init__(self, directory: str, model_config: ModelConfig, keep: int = 3, identity: dict | None = None):
    write_model_config(directory, model_config)
    if identity and jax.process_index() == 0:
      (epath.Path(directory) / DATA_FILE).write_text(json.dumps(identity, indent=2))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True)
    self.manager = ocp.CheckpointManager(epath.Path(directory).absolute(), options=options)

  @staticmethod
  def _split(state) -> tuple[dict, object, dict]:
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    params, opt_state = fields.pop("params"), fields.pop("opt_state")
    return nnx.to_pure_dict(params), opt_state, fields

  def save(self, step: int, state, data_iter) -> None:
    params, opt_state, meta = self._split(state)
    self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
        train_meta=ocp.args.StandardSave(meta), data_iter=grain.checkpoint.CheckpointSave(data_iter)))

  def restore_latest(self, state, data_iter) -> tuple[object, bool] | None:
    """Restore the latest step into `state`'s structure and shardings (any device count) and the
    data iterator in place: (state, True); None when there is no checkpoint yet. Grain keeps one
    iterator state per process: when they were saved by another process count (a resized pod),
    the iterator is left as it is and the flag is False (the trainer then reads on from the step)."""
    step = self.manager.latest_step()
    if step is None:
      return None
    abstract = lambda tree: jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
    params, opt_state, meta = self._split(state)
    items = dict(params=ocp.args.StandardRestore(abstract(params)),
                 opt_state=ocp.args.StandardRestore(abstract(opt_state)),
                 train_meta=ocp.args.StandardRestore(abstract(meta)))
    mine = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    same_processes = (epath.Path(self.manager.directory) / str(step) / "data_iter" / mine).exists()
    if same_processes:
      items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    out = self.manager.restore(step, args=ocp.args.Composite(**items))
    new_params = jax.tree.map(lambda x: x, state.params)
    nnx.replace_by_pure_dict(new_params, out["params"])
    return state.replace(params=new_params, opt_state=out["opt_state"], **out["train_meta"]), same_processes

  def wait(self) -> None:
    self.manager.wait_until_finished()
