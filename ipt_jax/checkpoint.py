"""Orbax checkpoints: params directories and loading a model from any checkpoint path.

Every checkpoint directory holds the model config beside the params, so a path alone is
enough to rebuild the model:
  <dir>/params   Flax params (orbax)
  <dir>/model    the IPT fields as JSON (`ipt.to_config`)
A training run's `<workdir>/checkpoints/<step>` directories have this layout too.
"""
from collections.abc import Sequence
import os
import pathlib

from absl import logging
from etils import epath
import jax
import orbax.checkpoint as ocp

from ipt_jax.models import ipt

PARAMS, MODEL = 'params', 'model'
TORCH_SUFFIXES = ('.pt', '.pth', '.safetensors')


def save_params(directory, model: ipt.IPT, params):
  """Writes params and the model config to a new `directory` (atomically: orbax renames)."""
  directory = epath.Path(directory)
  if directory.exists():
    raise FileExistsError(f'{directory} already exists; choose a new output directory.')
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    checkpointer.save(directory, ocp.args.Composite(**{
        PARAMS: ocp.args.StandardSave(params),
        MODEL: ocp.args.JsonSave(ipt.to_config(model))}))


def abstract_params(model: ipt.IPT, sharding: jax.sharding.Sharding | None = None):
  """Shapes, dtypes and shardings of `model`'s params, a restore target."""
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
  shapes = jax.eval_shape(model.init_params, jax.random.key(0))
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def is_params_dir(path) -> bool:
  path = epath.Path(path)
  return (path / PARAMS).is_dir() and (path / MODEL).is_dir()


def step_dirs(root) -> list[epath.Path]:
  """Finished checkpoint step directories under `root`, newest first."""
  root = epath.Path(root)
  steps = [p for p in root.iterdir() if p.name.isdigit() and is_params_dir(p)]
  return sorted(steps, key=lambda p: int(p.name), reverse=True)


def read_model(directory, **overrides) -> ipt.IPT:
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    config = checkpointer.restore(epath.Path(directory),
                                  ocp.args.Composite(**{MODEL: ocp.args.JsonRestore()}))[MODEL]
  return ipt.from_config(config, **overrides)


def restore_params(directory, model: ipt.IPT, sharding: jax.sharding.Sharding | None = None):
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    restored = checkpointer.restore(epath.Path(directory), ocp.args.Composite(**{
        PARAMS: ocp.args.StandardRestore(abstract_params(model, sharding))}))
  return restored[PARAMS]


def load_params(path, *, tasks: Sequence[str] | None = None,
                sharding: jax.sharding.Sharding | None = None,
                **model_overrides) -> tuple[ipt.IPT, dict]:
  """(model, params) from any checkpoint path.

  `path` is one of: an official PyTorch .pt / .pth or a .safetensors file (`tasks` and
  `num_heads` as in `convert.from_torch`), a params directory written by
  `python -m ipt_jax.convert`, one training checkpoint step, a training run's
  `checkpoints` directory or its workdir (the newest readable step is used).
  `model_overrides` replace model fields that do not change parameters (e.g. dtype).
  """
  path = epath.Path(path)
  if path.suffix in TORCH_SUFFIXES:
    from ipt_jax import convert  # pylint: disable=g-import-not-at-top  (convert imports this module)
    model, params = convert.from_torch(os.fspath(path), tasks, **model_overrides)
    return model, jax.device_put(params, sharding)
  for candidate in _candidate_dirs(path):
    try:
      model = read_model(candidate, **model_overrides)
      return model, restore_params(candidate, model, sharding)
    except Exception as e:  # A damaged step: fall back to the previous one.
      logging.warning('Could not read checkpoint %s (%s); trying an older one.', candidate, e)
  raise ValueError(f'No readable IPT checkpoint at {path}: expected a .pt/.safetensors file, a '
                   'params directory (from ipt_jax.convert), a checkpoint step, a checkpoints '
                   'directory or a training workdir.')


def _candidate_dirs(path: epath.Path) -> list[epath.Path]:
  if not path.exists():
    raise FileNotFoundError(f'Checkpoint path {path} does not exist.')
  if is_params_dir(path):
    return [path]
  if (path / 'checkpoints').is_dir():
    path = path / 'checkpoints'
  return step_dirs(path) if path.is_dir() else []
