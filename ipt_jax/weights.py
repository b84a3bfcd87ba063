"""IPT weights from any checkpoint path: what evaluation, restoring, conversion and
fine-tuning load.

A path is an official PyTorch .pt / .pth / .safetensors file, a params directory
(`ipt_jax.convert`), a training checkpoint step, a run's `checkpoints` directory or its
workdir (the newest step). Orbax checkpoints carry their model config; a PyTorch file's
sizes are read from its shapes, but its head names (`checkpoint_tasks`) and attention-head
count (`num_heads`) cannot be, and default to the six pre-training tasks and 12 heads.
"""
from collections.abc import Sequence
import os

from etils import epath
import jax

from ipt_jax import checkpoint
from ipt_jax import errors
from ipt_jax import integrity
from ipt_jax import torch_layout
from ipt_jax.models import ipt


def load(path, *, checkpoint_tasks: Sequence[str] | None = None, num_heads: int | None = None,
         sharding: jax.sharding.Sharding | None = None, **model_overrides) -> tuple[ipt.IPT, dict]:
  """(model, params) of the checkpoint at `path`.

  `model_overrides` replace model fields that do not change the parameters (e.g. dtype).
  """
  if num_heads is not None:
    model_overrides['num_heads'] = num_heads
  if epath.Path(path).suffix in torch_layout.SUFFIXES:
    model, params = torch_layout.from_torch(os.fspath(path), checkpoint_tasks, **model_overrides)
    integrity.check_finite(params, path)
    return model, jax.device_put(params, sharding)
  directory = checkpoint.find_params_dir(path)
  model = checkpoint.read_model(directory)
  _check_saved(directory, model, 'num_heads', num_heads)
  if checkpoint_tasks is not None:
    _check_saved(directory, model, 'tasks', tuple(checkpoint_tasks))
  model = ipt.create(**{**ipt.to_config(model), **model_overrides})
  params = checkpoint.load_params(directory, model, sharding)
  integrity.check_finite(params, directory)
  return model, params


def _check_saved(directory, model: ipt.IPT, field: str, given):
  """A field given for a PyTorch file must agree with what an orbax checkpoint saved."""
  saved = getattr(model, field)
  if given is not None and given != saved:
    raise errors.InputError(
        f'{directory}: the checkpoint was saved with {field}={saved}, not {given}; drop the '
        f'{field} setting (orbax checkpoints carry their model config).')
