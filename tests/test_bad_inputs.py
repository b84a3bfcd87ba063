"""Damaged files and bad settings: each gets one clear line, and nothing is lost, renamed or
half-written. The files are made here: truncated, zero-byte, text, a folder, flipped bits,
non-finite values, another model's workdir, wrong keys, a pickle that would run code."""
import glob
import os
import pathlib
import pickle
import re
import subprocess
import sys

import jax
import ml_collections
import numpy as np
from PIL import Image
import pytest

from configs import quickstart
from ipt_jax import checkpoint
from ipt_jax import errors
from ipt_jax import integrity
from ipt_jax import torch_layout
from ipt_jax import optimizer
from ipt_jax import train
from ipt_jax import weights
from ipt_jax.models import ipt
from tests.conftest import random_params
from tests.conftest import REPO
from tests.conftest import run_command



def last_line(result) -> str:
  lines = result.stderr.strip().splitlines()
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  return lines[-1] if lines else ''


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  """A tiny one-task model, its params and a params directory holding them."""
  model = ipt.create('tiny', tasks=('sr_x2',))
  params = random_params(model)
  directory = tmp_path_factory.mktemp('ckpt') / 'params'
  checkpoint.save_params(directory, model, params)
  return model, params, directory


def copy_of(directory, tmp_path) -> pathlib.Path:
  target = tmp_path / directory.name
  subprocess.run(['cp', '-r', str(directory), str(target)], check=True)
  return target


def largest_data_file(directory) -> pathlib.Path:
  return pathlib.Path(max(glob.glob(f'{directory}/params/**/d/*', recursive=True),
                          key=os.path.getsize))


def flip_bits(path: pathlib.Path, offset=100, count=64):
  data = bytearray(path.read_bytes())
  data[offset:offset + count] = bytes(b ^ 0xFF for b in data[offset:offset + count])
  path.write_bytes(bytes(data))


@pytest.mark.parametrize('damage,message', [
    (flip_bits, r'is changed since it was written \(checksum mismatch\)'),
    (lambda p: p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2]),
     r'is truncated or extended \(\d+ bytes, \d+ written\)'),
    (lambda p: p.unlink(), r'is missing'),
])
@pytest.mark.slow
def test_damaged_params_are_refused_naming_the_file(tiny, tmp_path, damage, message):
  directory = copy_of(tiny[2], tmp_path)
  data_file = largest_data_file(directory)
  damage(data_file)
  with pytest.raises(integrity.DamagedCheckpointError,
                     match=rf'{directory} is damaged: .*{data_file.name} {message}'):
    weights.load(directory)


def test_convert_of_a_damaged_checkpoint_is_one_line_and_writes_nothing(tiny, tmp_path):
  directory = copy_of(tiny[2], tmp_path)
  flip_bits(largest_data_file(directory))
  result = run_command('convert', f'--checkpoint={directory}', f'--output={tmp_path / "out.pt"}')
  assert result.returncode == 1
  assert re.match(rf'error: {directory} is damaged: params/.*\(checksum mismatch\)\.$',
                  last_line(result))
  assert not (tmp_path / 'out.pt').exists()
  assert not list(tmp_path.glob('.out.pt*'))


@pytest.mark.parametrize('module', ['restore', 'evaluate', 'finetune'])
def test_every_command_refuses_a_damaged_checkpoint_in_one_line(tiny, tmp_path, module):
  directory = copy_of(tiny[2], tmp_path)
  largest_data_file(directory).unlink()
  image = tmp_path / 'x.png'
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
  (tmp_path / 'Set5').mkdir()
  args = {
      'restore': [f'--checkpoint={directory}', '--tasks=sr_x2',
                  f'--output_dir={tmp_path / "out"}', str(image)],
      'evaluate': [f'--checkpoint={directory}', '--tasks=sr_x2', f'--data_dir={tmp_path}',
                   '--sets=Set5', f'--output_dir={tmp_path / "out"}'],
      'finetune': ['--config=configs/finetune.py:sr_x2', f'--config.checkpoint={directory}',
                   f'--workdir={tmp_path / "ft"}'],
  }[module]
  result = run_command(module, *args)
  assert result.returncode == 1
  assert re.match(rf'error: {directory} is damaged: params/.* is missing\.$', last_line(result))
  assert not (tmp_path / 'ft').exists()


def test_non_finite_parameters_are_refused_naming_the_array(tiny, tmp_path):
  model, params, _ = tiny
  broken = jax.tree.map(np.array, params)
  broken['body']['encoder_0']['mlp']['fc1']['kernel'][0, 0] = np.inf
  checkpoint.save_params(tmp_path / 'nan', model, broken)
  with pytest.raises(integrity.DamagedCheckpointError,
                     match='parameter body/encoder_0/mlp/fc1/kernel holds NaN or infinite'):
    weights.load(tmp_path / 'nan')


def train_config(**overrides) -> ml_collections.ConfigDict:
  config = quickstart.get_config()
  config.data.tasks = ('sr_x2',)
  config.data.batch_size = 2
  for key, value in overrides.items():
    config[key] = value
  return config


def saved_steps(tmp_path, model, steps=(1, 2)):
  """A checkpoints directory with the given steps of `model`'s state."""
  config = train_config()
  tx = optimizer.make(config, model, lambda _: 1e-3)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ('data', 'fsdp'))
  state = train.create_train_state(model, tx, mesh, config, params=random_params(model))
  manager = checkpoint.TrainCheckpoints(tmp_path / 'checkpoints', model, every=1, keep=5)
  for step in steps:
    manager.save(step, state.replace(step=state.step + step), force=True)
  manager.close()
  return state


@pytest.mark.slow
def test_a_damaged_step_is_set_aside_and_the_previous_one_used(tmp_path, monkeypatch):
  warnings = []
  monkeypatch.setattr(checkpoint.logging, 'warning',
                      lambda *args: warnings.append(args[0] % args[1:]))
  model = ipt.create('tiny', tasks=('sr_x2',))
  state = saved_steps(tmp_path, model)
  flip_bits(largest_data_file(tmp_path / 'checkpoints' / '2'))
  manager = checkpoint.TrainCheckpoints(tmp_path / 'checkpoints', model, every=1, keep=5)
  abstract = jax.eval_shape(lambda s: s, state)
  shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]),
                           abstract)
  restored = manager.load_latest(abstract, shardings)
  manager.close()
  assert int(restored.step) == 1
  assert (tmp_path / 'checkpoints' / 'damaged_2').is_dir()
  # One line about the step (orbax logs through the same absl logger: its lines are not ours).
  [warning] = [w for w in warnings if 'damaged' in w]
  assert 'checksum mismatch' in warning
  assert 'Set aside as damaged_2; using the step before it.' in warning


@pytest.mark.slow
def test_another_models_workdir_is_an_error_and_nothing_is_renamed(tmp_path):
  saved_steps(tmp_path, ipt.create('tiny', tasks=('sr_x2',)))
  before = sorted(p.name for p in (tmp_path / 'checkpoints').iterdir())
  other = ipt.create('small', tasks=('sr_x2',))
  manager = checkpoint.TrainCheckpoints(tmp_path / 'checkpoints', other, every=1, keep=5)
  abstract = jax.eval_shape(lambda: None)
  with pytest.raises(errors.InputError, match=r'/2 was saved by another model config \(n_feats: '
                     r'saved 8, now 32; .*\); run with the config it was trained with to resume, '
                     'or give a new --workdir'):
    manager.load_latest(abstract, None)
  manager.close()
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == before


@pytest.mark.slow
def test_main_refuses_another_models_workdir_with_one_line(tmp_path):
  saved_steps(tmp_path, ipt.create('tiny', tasks=('sr_x2',)))
  result = run_command('main', '--config=configs/quickstart.py', f'--workdir={tmp_path}',
                       "--config.data.tasks=('sr_x2',)", '--config.model.preset=small')
  assert result.returncode == 1
  assert 'was saved by another model config (n_feats: saved 8, now 32' in last_line(result)
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['1', '2']


@pytest.mark.parametrize('field,value,message', [
    ('total_steps', 0, 'config.total_steps is 0; it must be a positive number'),
    ('total_steps', -5, 'config.total_steps is -5; it must be a positive number'),
    ('log_every', 0, 'config.log_every is 0; it must be a positive number'),
    ('checkpoint_every', 0, 'config.checkpoint_every is 0'),
    ('eval_every', -1, 'config.eval_every is -1'),
])
def test_bad_settings_fail_before_the_workdir_is_made(tmp_path, field, value, message):
  with pytest.raises(errors.InputError, match=message):
    train.train_and_evaluate(train_config(**{field: value}), str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


def test_a_model_whose_tasks_differ_from_the_datas_is_refused(tmp_path):
  # Fine-tuning and other callers pass their own model; batches index data.tasks.
  config = train_config()
  config.data.tasks = ('denoise_30', 'sr_x2')
  model = ipt.create('tiny', tasks=('sr_x2', 'denoise_30'))
  with pytest.raises(errors.InputError, match=r"data.tasks is \('denoise_30', 'sr_x2'\) but the "
                     r"model's tasks are \('sr_x2', 'denoise_30'\); list the same tasks"):
    train.train_and_evaluate(config, str(tmp_path / 'w'), model=model)
  assert not (tmp_path / 'w').exists()


@pytest.mark.slow
def test_nan_learning_rate_and_bad_sources_fail_before_the_workdir_is_made(tmp_path):
  config = train_config()
  config.optimizer.lr = float('nan')
  with pytest.raises(errors.InputError, match='config.optimizer.lr is nan'):
    train.train_and_evaluate(config, str(tmp_path / 'w'))
  (tmp_path / 'empty').mkdir()
  for field, source, message in (
      ('val_source', f'folder:{tmp_path / "nowhere"}', 'does not exist or is not a folder'),
      ('source', f'folder:{tmp_path / "empty"}', 'has no .* files'),
      ('source', 'tfds:no_such_dataset', "Unknown TFDS dataset 'no_such_dataset'")):
    config = train_config()
    config.data[field] = source
    with pytest.raises(errors.InputError, match=message):
      train.train_and_evaluate(config, str(tmp_path / 'w'))
    assert not (tmp_path / 'w').exists()


def _config_overrides(text: str) -> list[tuple[str, str]]:
  """(config file, override) for every --config.X=Y in `text` with a concrete value."""
  found = []
  for command in re.split(r'\n(?!\s)', text.replace('\\\n', ' ')):
    config = re.search(r'--config=(configs/[\w.]+(?::\w+)?)', command)
    for override in re.findall(r'(--config\.[a-z_.]+=\S+)', command):
      if not re.search(r'\.\.\.|<|DIR\b', override):
        found.append((config[1] if config else 'configs/pretrain.py',
                      override.rstrip('`,;)"\'')))
  return found


@pytest.mark.slow
def test_every_documented_override_parses():
  texts = [(REPO / name).read_text() for name in ('README.md', 'launch/README.md',
                                                  'launch/tpu.sh', 'launch/gpu_slurm.sbatch')]
  overrides = [o for text in texts for o in _config_overrides(text)]
  assert any('data.data_dir=gs://' in o for _, o in overrides), overrides
  program = ('import sys; from absl import flags; from ml_collections import config_flags\n'
             'config_flags.DEFINE_config_file("config", lock_config=True)\n'
             'flags.FLAGS(sys.argv)\n')
  for config, override in overrides:
    result = subprocess.run([sys.executable, '-c', program, f'--config={config}', override],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, (config, override, result.stderr[-1500:])


@pytest.mark.slow
def test_head_count_and_names_survive_safetensors(tmp_path):
  model = ipt.create('tiny', tasks=('sr_x4',), num_heads=4)
  params = random_params(model)
  torch_layout.write_state_dict(torch_layout.to_torch(params, model, as_numpy=True),
                                tmp_path / 'm.safetensors', torch_layout.metadata(model))
  loaded, _ = weights.load(tmp_path / 'm.safetensors')  # Neither given.
  assert loaded.num_heads == 4 and loaded.tasks == ('sr_x4',)


@pytest.mark.parametrize('make,message', [
    (lambda p: p.write_bytes(b''), 'is not a PyTorch checkpoint'),
    (lambda p: p.write_text('hello'), 'is not a PyTorch checkpoint'),
    (lambda p: p.mkdir(), 'no such file'),
    (lambda p: p.write_bytes(pickle.dumps(os.system)), 'is not a PyTorch checkpoint'),
])
def test_convert_refuses_files_that_are_not_checkpoints(tmp_path, make, message):
  pytest.importorskip('torch')
  bad = tmp_path / 'model.pt'
  make(bad)
  result = run_command('convert', f'--checkpoint={bad}', f'--output={tmp_path / "out"}')
  assert result.returncode == 1 and message in last_line(result), result.stderr[-2000:]
  assert not (tmp_path / 'out').exists()


def test_an_output_folder_that_cannot_be_made_is_one_line(tiny, tmp_path):
  (tmp_path / 'file').write_text('not a folder')
  image = tmp_path / 'x.png'
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
  for module, flag in (('restore', '--output_dir'), ('evaluate', '--output_dir')):
    args = ([f'--checkpoint={tiny[2]}', '--tasks=sr_x2', str(image)] if module == 'restore' else
            ['--model=bicubic', '--tasks=sr_x2', f'--data_dir={tmp_path}', '--sets=.'])
    result = run_command(module, *args, f'{flag}={tmp_path / "file" / "out"}')
    assert result.returncode == 1, result.stderr[-2000:]
    assert last_line(result) == (f'error: {tmp_path / "file" / "out"}: cannot create the output '
                                 'folder (Not a directory); choose another.')


def test_evaluate_skips_bad_images_by_name_and_keeps_the_rest(tmp_path):
  hr = tmp_path / 'data' / 'Set5' / 'HR'
  hr.mkdir(parents=True)
  for name in ('a', 'b'):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8)).save(
        hr / f'{name}.png')
  Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(hr / 'cut.png')
  (hr / 'cut.png').write_bytes((hr / 'cut.png').read_bytes()[:60])
  (hr / 'empty.png').write_bytes(b'')
  (hr / 'text.png').write_text('hello')
  (hr / 'folder.png').mkdir()
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(hr / 'tiny.png')
  result = run_command('evaluate', '--model=bicubic', '--tasks=sr_x2',
                       f'--data_dir={tmp_path / "data"}', '--sets=Set5',
                       f'--output_dir={tmp_path / "out"}')
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  for name in ('cut', 'empty', 'text', 'folder'):
    assert any(l.startswith(f'error: Set5 {name}: {hr / name}.png: not a readable image')
               for l in lines), (name, result.stderr[-3000:])
  assert any(l.startswith('error: Set5 tiny: an image of 4x4 is too small') for l in lines)
  assert lines[-1].startswith('error: 5 image(s) could not be evaluated (see above)')
  assert '| sr_x2 | Set5 | 2 |' in result.stdout and '| 5 |' in result.stdout
  report = __import__('json').loads((tmp_path / 'out' / 'results.json').read_text())
  [set5] = report['results']
  assert set5['images'] == 2
  assert sorted(s['name'] for s in set5['skipped']) == ['cut', 'empty', 'folder', 'text', 'tiny']
