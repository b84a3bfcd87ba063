"""The official PyTorch IPT checkpoint layout <-> Flax params, both ways, exactly.

The official state_dict (keys, order, shapes, the fixed mean-shift and position-id buffers)
of any IPT size is derived from the Flax model (`official_shapes`), so one table of entries
converts in both directions. Files: .pt / .pth (read with torch.load(weights_only=True), so
no pickled code runs) and .safetensors, local or gs://; written atomically.
"""
from collections.abc import Callable, Mapping, Sequence
import dataclasses
import json
import math
import os
import pathlib
import pickle
from typing import Any

from absl import logging
from etils import epath
import jax
import numpy as np

from ipt_jax import errors
from ipt_jax import files
from ipt_jax import tasks as tasks_lib
from ipt_jax.models import ipt

SUFFIXES = ('.pt', '.pth', '.safetensors')

FlaxPath = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One official state_dict key and the Flax parameter(s) it holds."""
  key: str
  paths: tuple[FlaxPath, ...]  # Several for packed tensors (in_proj, query_embed).
  kind: str  # 'conv', 'dense', 'copy', 'in_proj', 'query_embed' or 'buffer' (not trained).


def _entries(model: ipt.IPT) -> list[_Entry]:
  """The official key layout of `model`'s parameters, in state_dict order."""
  out = []
  add = lambda key, kind, *paths: out.append(_Entry(key, paths, kind))
  for key in ('sub_mean.weight', 'sub_mean.bias', 'add_mean.weight', 'add_mean.bias'):
    add(key, 'buffer')

  def weight_bias(key, path, kind):
    add(f'{key}.weight', kind, path + ('kernel',))
    add(f'{key}.bias', 'copy', path + ('bias',))

  for i, task in enumerate(model.tasks):
    head = (f'head_{task}',)
    weight_bias(f'head.{i}.0', head + ('conv_in',), 'conv')
    for r in range(2):
      for c in range(2):
        weight_bias(f'head.{i}.{r + 1}.body.{2 * c}', head + (f'res_{r}', f'conv_{c}'), 'conv')

  body = ('body',)
  weight_bias('body.linear_encoding', body + ('linear_encoding',), 'dense')
  weight_bias('body.mlp_head.0', body + ('mlp_head', 'fc1'), 'dense')
  weight_bias('body.mlp_head.3', body + ('mlp_head', 'fc2'), 'dense')
  add('body.query_embed.weight', 'query_embed',
      *[body + (f'query_embed_{t}',) for t in model.tasks])

  def attention(key, path):
    add(f'{key}.in_proj_weight', 'in_proj', *[path + (n, 'kernel') for n in ('query', 'key', 'value')])
    add(f'{key}.out_proj.weight', 'dense', path + ('out', 'kernel'))

  def layer(kind, attentions, norms):
    for l in range(model.num_layers):
      key, path = f'body.{kind}.layers.{l}', body + (f'{kind}_{l}',)
      for torch_name, flax_name in attentions:
        attention(f'{key}.{torch_name}', path + (flax_name,))
      weight_bias(f'{key}.linear1', path + ('mlp', 'fc1'), 'dense')
      weight_bias(f'{key}.linear2', path + ('mlp', 'fc2'), 'dense')
      for n in range(1, norms + 1):
        add(f'{key}.norm{n}.weight', 'copy', path + (f'norm{n}', 'scale'))
        add(f'{key}.norm{n}.bias', 'copy', path + (f'norm{n}', 'bias'))

  layer('encoder', [('self_attn', 'self_attn')], 2)
  layer('decoder', [('self_attn', 'self_attn'), ('multihead_attn', 'cross_attn')], 3)
  add('body.position_encoding.position_ids', 'buffer')
  add('body.position_encoding.pe.weight', 'copy', body + ('pos_embed',))

  for i, task in enumerate(model.tasks):
    tail = (f'tail_{task}',)
    upsamplers = ipt.upsampler_factors(tasks_lib.get(task).scale)
    for u in range(len(upsamplers)):  # PixelShuffle layers sit between the convs.
      weight_bias(f'tail.{i}.0.{2 * u}', tail + (f'upsample_{u}',), 'conv')
    weight_bias(f'tail.{i}.1', tail + ('conv_out',), 'conv')
  return out


def _buffers(model: ipt.IPT) -> dict[str, np.ndarray]:
  """Non-trained tensors of the official state_dict: the fixed mean shift, position ids."""
  eye = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)
  num_tokens = (model.patch_size // model.patch_dim)**2
  return {
      'sub_mean.weight': eye, 'sub_mean.bias': -model.mean_shift,
      'add_mean.weight': eye, 'add_mean.bias': model.mean_shift,
      'body.position_encoding.position_ids': np.arange(num_tokens, dtype=np.int64)[None],
  }


# Official tensor -> Flax tensors of the given shapes, and back.
_TO_FLAX: dict[str, Callable[[np.ndarray, list[tuple[int, ...]]], list[np.ndarray]]] = {
    'conv': lambda t, shapes: [t.transpose(2, 3, 1, 0)],  # OIHW -> HWIO
    'dense': lambda t, shapes: [t.T],
    'copy': lambda t, shapes: [t],
    'in_proj': lambda t, shapes: [w.T for w in np.split(t, 3)],  # Packed q, k, v rows.
    'query_embed': lambda t, shapes: [row.reshape(s) for row, s in zip(t, shapes)],
}
_TO_TORCH: dict[str, Callable[[list[np.ndarray]], np.ndarray]] = {
    'conv': lambda ts: ts[0].transpose(3, 2, 0, 1),
    'dense': lambda ts: ts[0].T,
    'copy': lambda ts: ts[0],
    'in_proj': lambda ts: np.concatenate([w.T for w in ts]),
    'query_embed': lambda ts: np.stack([t.reshape(-1) for t in ts]),
}
_TORCH_SHAPE: dict[str, Callable[[list[tuple[int, ...]]], tuple[int, ...]]] = {
    'conv': lambda shapes: tuple(shapes[0][i] for i in (3, 2, 0, 1)),
    'dense': lambda shapes: tuple(reversed(shapes[0])),
    'copy': lambda shapes: tuple(shapes[0]),
    'in_proj': lambda shapes: (3 * shapes[0][1], shapes[0][0]),
    'query_embed': lambda shapes: (len(shapes), math.prod(shapes[0])),
}


def _get(tree: Mapping[str, Any], path: FlaxPath):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict[str, Any], path: FlaxPath, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _param_shapes(model: ipt.IPT) -> dict:
  return jax.tree.map(lambda s: tuple(s.shape), jax.eval_shape(model.init_params,
                                                                jax.random.key(0)))


def official_shapes(model: ipt.IPT) -> dict[str, tuple[int, ...]]:
  """Every key of the official state_dict of `model`, with its shape, in state_dict order."""
  shapes = _param_shapes(model)
  buffers = _buffers(model)
  return {e.key: buffers[e.key].shape if e.kind == 'buffer' else
          _TORCH_SHAPE[e.kind]([_get(shapes, p) for p in e.paths]) for e in _entries(model)}


def to_torch(params, model: ipt.IPT, *, as_numpy: bool = False) -> dict[str, Any]:
  """Flax params -> the official state_dict (torch tensors, or numpy with `as_numpy`).

  Keys, order, shapes and dtypes are those of the official model, buffers included, so
  the result loads with `load_state_dict(strict=True)` into the official code.
  """
  params = jax.device_get(params)
  buffers = _buffers(model)
  state = {}
  for e in _entries(model):
    if e.kind == 'buffer':
      state[e.key] = buffers[e.key]
    else:
      arrays = [np.asarray(_get(params, p)) for p in e.paths]
      state[e.key] = np.array(_TO_TORCH[e.kind](arrays), order='C')  # A writable copy.
  if as_numpy:
    return state
  import torch  # pylint: disable=g-import-not-at-top
  return {k: torch.from_numpy(v) for k, v in state.items()}


def _with_metadata(path, tasks, model_overrides: dict) -> tuple[Sequence[str] | None, dict]:
  """Head names and head count from a .safetensors file this project wrote, where not given;
  a warning where the head count is neither given nor recorded (.pt files)."""
  metadata = read_metadata(path)
  if tasks is None and metadata.get('tasks'):
    tasks = tuple(metadata['tasks'].split(','))
  if 'num_heads' not in model_overrides:
    if 'num_heads' in metadata:
      model_overrides = {**model_overrides, 'num_heads': int(metadata['num_heads'])}
    else:
      logging.warning('%s does not record its number of attention heads; assuming the paper\'s '
                      '12 (pass --num_heads if it was trained with another).', path)
  return tasks, model_overrides


def infer_model(state_dict: Mapping[str, Any], tasks: Sequence[str] | None = None,
                **model_overrides) -> ipt.IPT:
  """The IPT whose official state_dict has these shapes (num_heads defaults to 12)."""
  shape = lambda key: tuple(_require(state_dict, key).shape)
  n_feats = shape('head.0.0.weight')[0]
  dim = shape('body.linear_encoding.weight')[0]
  patch_dim = math.isqrt(dim // n_feats)
  num_tokens = shape('body.position_encoding.pe.weight')[0]
  num_layers = len({k.split('.')[3] for k in state_dict if k.startswith('body.encoder.layers.')})
  num_tasks = shape('body.query_embed.weight')[0]
  if tasks is None:
    if num_tasks != len(tasks_lib.PRETRAIN_NAMES):
      raise errors.InputError(
          f'This checkpoint has {num_tasks} task head(s); name them in order with tasks=... '
          f'(e.g. tasks=("sr_x2",) for a model fine-tuned on x2; --tasks=sr_x2 on the command '
          f'line). Only a {len(tasks_lib.PRETRAIN_NAMES)}-task checkpoint defaults to '
          f'{", ".join(tasks_lib.PRETRAIN_NAMES)}.')
    tasks = tasks_lib.PRETRAIN_NAMES
  tasks = tuple(tasks)
  for t in tasks:
    tasks_lib.get(t)
  if len(tasks) != num_tasks:
    raise errors.InputError(f'tasks={tasks} names {len(tasks)} task(s) but the checkpoint has '
                            f'{num_tasks} (rows of body.query_embed.weight).')
  fields = dict(n_feats=n_feats, patch_dim=patch_dim, patch_size=math.isqrt(num_tokens) * patch_dim,
                num_heads=12, num_layers=num_layers,
                mlp_dim=shape('body.encoder.layers.0.linear1.weight')[0], tasks=tasks)
  model = ipt.create(**{**fields, **model_overrides})
  if dim % model.num_heads:
    raise errors.InputError(f'The embedding size {dim} is not divisible by num_heads={model.num_heads}; '
                            'pass the number of attention heads the checkpoint was trained with.')
  return model


def from_torch(state_dict_or_path, tasks: Sequence[str] | None = None,
               **model_overrides) -> tuple[ipt.IPT, dict]:
  """An official state_dict (or a .pt / .safetensors path) -> (model, Flax params).

  Model sizes are read from the shapes; `num_heads` (not visible in shapes) defaults to
  the paper's 12. `tasks` defaults to the six pre-training tasks for a 6-head checkpoint
  and must be given otherwise. Raises ValueError naming any missing, unexpected or
  mis-shaped key.
  """
  state_dict = state_dict_or_path
  if isinstance(state_dict, (str, os.PathLike)):
    path = state_dict
    state_dict = read_state_dict(path)
    tasks, model_overrides = _with_metadata(path, tasks, model_overrides)
  state_dict = {k: _to_numpy(v) for k, v in state_dict.items()}
  model = infer_model(state_dict, tasks, **model_overrides)
  _check_layout(state_dict, model)
  shapes = _param_shapes(model)
  params = {}
  for e in _entries(model):
    if e.kind == 'buffer':
      continue
    arrays = _TO_FLAX[e.kind](state_dict[e.key], [_get(shapes, p) for p in e.paths])
    for path, array in zip(e.paths, arrays):
      _set(params, path, np.ascontiguousarray(array).astype(model.param_dtype, copy=False))
  return model, params


def _check_layout(state_dict: Mapping[str, np.ndarray], model: ipt.IPT):
  expected = official_shapes(model)
  missing = [k for k in expected if k not in state_dict]
  unexpected = [k for k in state_dict if k not in expected]
  wrong = [f'{k}: {tuple(state_dict[k].shape)}, expected {expected[k]}'
           for k in expected if k in state_dict and tuple(state_dict[k].shape) != expected[k]]
  problems = ([f'missing keys: {", ".join(missing)}'] if missing else []) + (
      [f'unexpected keys: {", ".join(unexpected)}'] if unexpected else []) + (
          [f'mis-shaped keys: {"; ".join(wrong)}'] if wrong else [])
  if problems:
    raise errors.InputError(f'Not an official IPT state_dict for tasks {model.tasks} (model '
                            f'{_describe(model)}): ' + ' | '.join(problems))
  for key, value in _buffers(model).items():
    if not np.array_equal(state_dict[key], value):
      raise errors.InputError(f'{key} differs from the official constant {value.ravel().tolist()}: '
                              'this converter only handles the official fixed mean shift.')


def _describe(model: ipt.IPT) -> str:
  return (f'n_feats={model.n_feats}, patch_dim={model.patch_dim}, num_layers={model.num_layers}, '
          f'mlp_dim={model.mlp_dim}')


def _require(state_dict: Mapping[str, Any], key: str):
  if key not in state_dict:
    raise errors.InputError(f'Not an official IPT state_dict: missing key {key!r} '
                            f'(it has {len(state_dict)} keys, e.g. {list(state_dict)[:3]}).')
  return state_dict[key]


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, 'detach'):  # A torch tensor.
    return value.detach().cpu().numpy()
  return np.asarray(value)


def read_state_dict(path) -> dict[str, np.ndarray]:
  """The tensors of a .pt (read with weights_only=True) or .safetensors file (local or
  gs://), as numpy."""
  path = epath.Path(path)
  if not path.is_file():
    raise errors.InputError(f'{path}: no such file.')
  if path.suffix == '.safetensors':
    import safetensors  # pylint: disable=g-import-not-at-top
    from safetensors import numpy as st  # pylint: disable=g-import-not-at-top
    try:
      return dict(st.load(path.read_bytes()))
    except safetensors.SafetensorError as e:
      raise errors.InputError(f'{path} is not a readable .safetensors file ({e}).') from e
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise errors.InputError(f'Reading {path} needs PyTorch: pip install "ipt_jax[torch]" '
                            '(or convert it to .safetensors elsewhere).') from e
  try:
    with path.open('rb') as f:
      state = torch.load(f, map_location='cpu', weights_only=True)
  # What torch.load (its weights-only unpickler, on this call alone) raises for damaged,
  # truncated, foreign or unsafe (pickled code) files.
  except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, IndexError,
          TypeError, AttributeError) as e:
    raise errors.InputError(f'{path} is not a PyTorch checkpoint that torch.load(weights_only=True) '
                            f'can read ({type(e).__name__}: {str(e).split(". ")[0]}).') from e
  if not isinstance(state, Mapping) or not all(hasattr(v, 'shape') for v in state.values()):
    raise errors.InputError(f'{path} does not hold a state_dict (a mapping of names to tensors), '
                            f'but a {type(state).__name__}.')
  return {k: _to_numpy(v) for k, v in state.items()}


def read_metadata(path) -> dict[str, str]:
  """The string metadata of a .safetensors file (its header's __metadata__); {} for .pt."""
  path = epath.Path(path)
  if path.suffix != '.safetensors':
    return {}
  with path.open('rb') as f:
    size = int.from_bytes(f.read(8), 'little')
    try:
      return json.loads(f.read(size)).get('__metadata__') or {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise errors.InputError(f'{path} is not a readable .safetensors file ({e}).') from e


def metadata(model: ipt.IPT) -> dict[str, str]:
  """What the shapes of an official state_dict do not tell: written into .safetensors files."""
  return {'format': 'ipt_jax', 'tasks': ','.join(model.tasks), 'num_heads': str(model.num_heads)}


def write_state_dict(state_dict: Mapping[str, Any], path,
                     file_metadata: dict[str, str] | None = None):
  """Writes a .pt or .safetensors file (with `file_metadata`) atomically (temporary name,
  then rename). A .pt holds the state_dict alone, as the official loader expects."""
  path = pathlib.Path(path)
  if path.suffix not in SUFFIXES:
    raise errors.InputError(f'Unknown output format {path.name!r}: use a .pt, .pth or .safetensors name, '
                            'or a directory name for a Flax params checkpoint.')
  path.parent.mkdir(parents=True, exist_ok=True)
  if path.suffix == '.safetensors':
    from safetensors import numpy as st  # pylint: disable=g-import-not-at-top
    arrays = {k: np.ascontiguousarray(_to_numpy(v)) for k, v in state_dict.items()}
    files.write_atomically(path, lambda tmp: st.save_file(arrays, tmp, metadata=file_metadata))
  else:
    import torch  # pylint: disable=g-import-not-at-top
    tensors = {k: v if hasattr(v, 'detach') else torch.tensor(np.asarray(v))
               for k, v in state_dict.items()}
    files.write_atomically(path, lambda tmp: torch.save(tensors, tmp))
