"""Official PyTorch checkpoints <-> Flax params: numerics against the official model, exact
round trips, the official key layout, and errors for bad checkpoints."""
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import random_params
from tests.conftest import run_command
from tests.conftest import shared_path
from ipt_jax import checkpoint
from ipt_jax import convert
from ipt_jax import errors
from ipt_jax import tasks
from ipt_jax import torch_layout
from ipt_jax import weights
from ipt_jax.models import ipt

torch = pytest.importorskip('torch')

TINY = ('fixtures', 'official_ipt_tiny')


@pytest.fixture(scope='module')
def official_sd():
  return torch.load(shared_path(*TINY, 'state_dict.pt'), weights_only=True)


@pytest.fixture(scope='module')
def official_io():
  return np.load(shared_path(*TINY, 'io.npz'))


def _run_official_inputs(model, params, io, dtype):
  x = jnp.asarray(io['input'].transpose(0, 2, 3, 1), dtype)
  for t in range(6):
    out = np.asarray(model.apply({'params': params}, x, task=t)).transpose(0, 3, 1, 2)
    yield t, np.abs(out - io[f'output_task{t}'])


@pytest.mark.slow
def test_float32_matches_the_official_model(official_sd, official_io):
  model, params = torch_layout.from_torch(official_sd, num_heads=2)
  for t, err in _run_official_inputs(model, params, official_io, jnp.float32):
    assert err.max() < 1e-2 and err.mean() < 2e-4, (t, err.max(), err.mean())


@pytest.mark.slow
def test_float64_matches_the_official_model_exactly(official_sd, official_io):
  with jax.enable_x64(True):
    model, params = torch_layout.from_torch(official_sd, num_heads=2, dtype=jnp.float64,
                                       param_dtype=jnp.float64)
    for t, err in _run_official_inputs(model, params, official_io, jnp.float64):
      # The checkpoint's float32-rounded mean shift is used, so only float64 rounding is left.
      assert err.max() < 1e-8, (t, err.max())


def test_six_heads_are_read_in_the_official_task_order(official_sd):
  model, _ = torch_layout.from_torch(official_sd, num_heads=2)
  assert model.tasks == ('sr_x2', 'sr_x3', 'sr_x4', 'derain', 'denoise_30', 'denoise_50')


@pytest.mark.slow
def test_params_saved_in_the_old_task_order_load_by_name(tmp_path):
  # Checkpoints this project wrote before the order was corrected list denoising first; their
  # parameters are named by task, so every task still gets its own head.
  old_order = ('sr_x2', 'sr_x3', 'sr_x4', 'denoise_30', 'denoise_50', 'derain')
  model = ipt.create('tiny', tasks=old_order)
  params = random_params(model)
  checkpoint.save_params(tmp_path / 'old', model, params)
  loaded_model, loaded = weights.load(tmp_path / 'old')
  for name in old_order:
    for prefix in ('head_', 'tail_'):
      jax.tree.map(np.testing.assert_array_equal, loaded[prefix + name], params[prefix + name])
    np.testing.assert_array_equal(loaded['body'][f'query_embed_{name}'],
                                  params['body'][f'query_embed_{name}'])
  # And the model runs a task by its name: derain moved from last to fourth.
  x = jax.random.uniform(jax.random.key(1), (1, 48, 48, 3), maxval=255.)
  run = jax.jit(lambda m, p, task: m.apply({'params': p}, x, task=task), static_argnums=(0, 2))
  np.testing.assert_array_equal(
      run(loaded_model, loaded, tasks.index('derain', loaded_model.tasks)),
      run(model, params, old_order.index('derain')))


def test_round_trip_is_exact(official_sd):
  model, params = torch_layout.from_torch(official_sd, num_heads=2)
  back = torch_layout.to_torch(params, model)
  assert list(back) == list(official_sd)
  for key, value in official_sd.items():
    assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
    assert torch.equal(back[key], value), key


@pytest.mark.parametrize('fixture,tasks', [('keys_paper_6task.json', None),
                                           ('keys_paper_1task_sr_x2.json', ('sr_x2',))])
def test_paper_layout_matches_the_released_checkpoints(fixture, tasks):
  keys = json.loads(shared_path('fixtures', fixture).read_text())
  model = ipt.create('paper', **({'tasks': tasks} if tasks else {}))
  shapes = torch_layout.official_shapes(model)
  assert list(shapes) == list(keys)
  assert {k: list(v) for k, v in shapes.items()} == keys


@pytest.fixture(scope='module')
def one_task():
  """A tiny single-task (fine-tuned layout) model and its state_dict; no ../shared needed."""
  model = ipt.create('tiny', tasks=('sr_x4',))
  params = random_params(model, seed=3)
  return model, params, torch_layout.to_torch(params, model)


def test_infers_sizes_and_needs_task_names_for_other_head_counts(one_task):
  model, params, sd = one_task
  with pytest.raises(ValueError, match=r'1 task head\(s\); name them in order with tasks='):
    torch_layout.from_torch(sd, num_heads=2)
  with pytest.raises(ValueError, match=r"names 2 task\(s\) but the checkpoint has 1"):
    torch_layout.from_torch(sd, tasks=('sr_x4', 'sr_x2'), num_heads=2)
  got_model, got = torch_layout.from_torch(sd, tasks=('sr_x4',), num_heads=2)
  assert got_model == model
  jax.tree.map(np.testing.assert_array_equal, got, jax.device_get(params))


def test_tail_not_matching_the_named_task_is_reported(one_task):
  _, _, sd = one_task
  with pytest.raises(ValueError, match=r'unexpected keys: tail\.0\.0\.2\.weight.*mis-shaped keys: '
                                       r'tail\.0\.0\.0\.weight: \(32, 8, 3, 3\), expected \(72'):
    torch_layout.from_torch(sd, tasks=('sr_x3',), num_heads=2)


@pytest.mark.parametrize('edit,message', [
    (lambda sd: sd.pop('body.decoder.layers.1.norm3.bias'),
     r'missing keys: body\.decoder\.layers\.1\.norm3\.bias'),
    (lambda sd: sd.update({'body.extra.weight': torch.zeros(3)}),
     r'unexpected keys: body\.extra\.weight'),
    (lambda sd: sd.update({'tail.0.1.weight': torch.zeros(3, 8, 5, 5)}),
     r'mis-shaped keys: tail\.0\.1\.weight: \(3, 8, 5, 5\), expected \(3, 8, 3, 3\)'),
    (lambda sd: sd.pop('head.0.0.weight'), r"missing key 'head\.0\.0\.weight'"),
    (lambda sd: sd.update({'sub_mean.bias': torch.zeros(3)}),
     r'sub_mean\.bias differs from the official constant'),
])
def test_bad_state_dicts_name_the_key(one_task, edit, message):
  _, _, sd = one_task
  sd = dict(sd)
  edit(sd)
  with pytest.raises(ValueError, match=message):
    torch_layout.from_torch(sd, tasks=('sr_x4',), num_heads=2)


def test_num_heads_must_divide_the_embedding(one_task):
  _, _, sd = one_task
  with pytest.raises(ValueError, match='72 is not divisible by num_heads=5'):
    torch_layout.from_torch(sd, tasks=('sr_x4',), num_heads=5)


def test_files_that_are_not_checkpoints(tmp_path):
  garbage = tmp_path / 'garbage.pt'
  garbage.write_bytes(b'not a checkpoint')
  with pytest.raises(ValueError, match='garbage.pt is not a PyTorch checkpoint'):
    torch_layout.read_state_dict(garbage)
  bad_st = tmp_path / 'garbage.safetensors'
  bad_st.write_bytes(b'\x00' * 16)
  with pytest.raises(ValueError, match='garbage.safetensors is not a readable .safetensors'):
    torch_layout.read_state_dict(bad_st)
  a_list = tmp_path / 'list.pt'
  torch.save([torch.zeros(2)], a_list)
  with pytest.raises(ValueError, match='does not hold a state_dict'):
    torch_layout.read_state_dict(a_list)
  with pytest.raises(errors.InputError, match='missing.pt: no such file'):
    torch_layout.read_state_dict(tmp_path / 'missing.pt')
  with pytest.raises(ValueError, match="Unknown output format 'out.bin'"):
    torch_layout.write_state_dict({}, tmp_path / 'out.bin')


def _assert_same_params(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


@pytest.mark.slow
def test_file_and_directory_round_trips_are_lossless(one_task, tmp_path):
  model, params, sd = one_task
  pt = tmp_path / 'model.pt'
  torch_layout.write_state_dict(sd, pt)
  convert.convert(pt, tmp_path / 'dir', checkpoint_tasks=('sr_x4',), num_heads=2)
  loaded_model, loaded = weights.load(tmp_path / 'dir')
  assert loaded_model == model
  _assert_same_params(loaded, params)

  convert.convert(tmp_path / 'dir', tmp_path / 'back.pt')
  back = torch.load(tmp_path / 'back.pt', weights_only=True)
  assert list(back) == list(sd) and all(torch.equal(back[k], sd[k]) for k in sd)

  convert.convert(tmp_path / 'dir', tmp_path / 'model.safetensors')
  convert.convert(tmp_path / 'model.safetensors', tmp_path / 'dir2', checkpoint_tasks=('sr_x4',),
                  num_heads=2)
  _, again = weights.load(tmp_path / 'dir2')
  _assert_same_params(again, params)

  with pytest.raises(errors.InputError, match='dir2 already exists'):
    convert.convert(pt, tmp_path / 'dir2', checkpoint_tasks=('sr_x4',), num_heads=2)


@pytest.mark.slow
def test_relative_and_home_paths_work(one_task, tmp_path, monkeypatch):
  """Orbax wants absolute paths: a user's relative or ~ path is resolved first."""
  model, params, sd = one_task
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  torch_layout.write_state_dict(sd, 'model.pt')
  convert.convert('model.pt', 'relative', checkpoint_tasks=('sr_x4',), num_heads=2)
  convert.convert('relative', '~/at_home')
  for path in ('relative', '~/at_home', str(tmp_path / 'home' / 'at_home')):
    loaded_model, loaded = weights.load(path)
    assert loaded_model == model
    _assert_same_params(loaded, params)


def test_failed_conversion_writes_nothing(one_task, tmp_path):
  _, _, sd = one_task
  sd = {k: v for k, v in sd.items() if not k.startswith('tail.')}
  torch_layout.write_state_dict(sd, tmp_path / 'broken.pt')
  with pytest.raises(ValueError, match='missing keys'):
    convert.convert(tmp_path / 'broken.pt', tmp_path / 'out', checkpoint_tasks=('sr_x4',), num_heads=2)
  assert sorted(os.listdir(tmp_path)) == ['broken.pt']


@pytest.mark.slow
def test_cli_round_trip_and_one_line_errors(official_sd, tmp_path):
  pt = shared_path(*TINY, 'state_dict.pt')
  run = functools.partial(run_command, 'convert')
  ok = run(f'--checkpoint={pt}', f'--output={tmp_path / "dir"}', '--num_heads=2')
  assert ok.returncode == 0, ok.stderr
  assert 'Wrote' in ok.stdout
  ok = run(f'--checkpoint={tmp_path / "dir"}', f'--output={tmp_path / "back.pt"}')
  assert ok.returncode == 0, ok.stderr
  back = torch.load(tmp_path / 'back.pt', weights_only=True)
  assert list(back) == list(official_sd)
  assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in official_sd.items())

  failed = run(f'--checkpoint={tmp_path / "nothing.pt"}', f'--output={tmp_path / "x"}')
  assert failed.returncode == 1
  assert failed.stderr.strip().splitlines()[-1] == (
      f'error: {tmp_path / "nothing.pt"}: no such file.')
  assert not (tmp_path / 'x').exists()
