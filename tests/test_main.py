"""Pre-training end to end: python -m ipt_jax.main on the bundled samples, checkpoints,
TensorBoard events, exact resume after a pre-emption, export, and two processes."""
import logging
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import tensorflow as tf

from ipt_jax import checkpoint
from ipt_jax import convert
from ipt_jax import progress
from ipt_jax import train
from ipt_jax import weights

from tests.conftest import REPO
from tests.conftest import run_command
from tests.conftest import TRAINED_ARGS
from tests.conftest import TRAINED_STEPS as STEPS
from tests.conftest import TRAINED_TASKS
from tests.conftest import trained_config


def start(workdir, *overrides, env=None):
  """`python -m ipt_jax.main` as the session's trained run was started (but for `overrides`,
  --name=value each), on `workdir`."""
  args = dict(arg.split('=', 1) for arg in (*TRAINED_ARGS, f'--workdir={workdir}', *overrides))
  command = [sys.executable, '-m', 'ipt_jax.main', *(f'{k}={v}' for k, v in args.items())]
  return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env={**os.environ, **(env or {})})


def finish(process, timeout=300):
  output, _ = process.communicate(timeout=timeout)
  assert process.returncode == 0, output[-4000:]
  return output


def scalars(workdir, tag) -> dict[int, float]:
  """The last value written for `tag` at each step, over all event files of `workdir`."""
  values = {}
  for path in sorted(pathlib.Path(workdir).glob('events.out.tfevents.*')):
    for record in tf.data.TFRecordDataset(str(path)):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        if value.tag == tag:
          values[event.step] = float(tf.make_ndarray(value.tensor))
  return values


def steps_saved(workdir):
  root = pathlib.Path(workdir) / 'checkpoints'
  return sorted(int(p.name) for p in checkpoint.step_dirs(root)) if root.exists() else []


@pytest.mark.slow
def test_writes_checkpoints_events_and_validation(trained_run):
  workdir = trained_run.workdir
  assert steps_saved(workdir) == [STEPS // 2, STEPS]
  losses = scalars(workdir, 'loss')
  assert sorted(losses) == list(range(1, STEPS + 1))
  assert all(np.isfinite(v) for v in losses.values())
  for tag in ('l1', 'contrastive', 'learning_rate', 'grad_norm', 'images_per_sec', 'step_time',
              'skipped_steps', *(f'loss_{task}' for task in TRAINED_TASKS)):
    assert scalars(workdir, tag), tag
  for task in TRAINED_TASKS:
    psnr = scalars(workdir, f'val/psnr_{task}')
    assert psnr[STEPS] > psnr[STEPS // 2], (task, psnr)  # Validation PSNR rises.
  model, _ = weights.load(workdir)
  assert model.tasks == TRAINED_TASKS


@pytest.mark.slow
def test_pre_empted_then_resumed_is_exact(trained_run, tmp_path, monkeypatch, caplog):
  # Where a run killed after its step-4 save stands: that save and nothing else. (Kills at
  # random moments, saves in flight included, are the fault stage's: test_kills.py.)
  shutil.copytree(trained_run.workdir / 'checkpoints' / str(STEPS // 2),
                  tmp_path / 'checkpoints' / str(STEPS // 2))
  # It resumes from step 4; a SIGTERM (pre-emption) after step 5 saves the step it is at.
  log = progress.log

  def pre_empt_after_step_5(line):
    log(line)
    if line.startswith(f'step {STEPS // 2 + 1}/'):
      os.kill(os.getpid(), signal.SIGTERM)
  monkeypatch.setattr(progress, 'log', pre_empt_after_step_5)
  with caplog.at_level(logging.INFO):
    state = train.train_and_evaluate(trained_config(), str(tmp_path))
  saved = steps_saved(tmp_path)[-1]
  assert saved == int(state.step) and STEPS // 2 < saved < STEPS
  assert f'Loaded checkpoint step {STEPS // 2} ' in caplog.text
  assert f'Pre-empted: saved step {saved}.' in caplog.text
  # Resumed from there, the run is bitwise the uninterrupted one: every loss, every weight.
  monkeypatch.setattr(progress, 'log', log)
  assert int(train.train_and_evaluate(trained_config(), str(tmp_path)).step) == STEPS
  uninterrupted = scalars(trained_run.workdir, 'loss')
  assert scalars(tmp_path, 'loss') == {s: v for s, v in uninterrupted.items() if s > STEPS // 2}
  _, params = weights.load(trained_run.workdir)
  _, resumed = weights.load(tmp_path)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed), jax.device_get(params))


@pytest.mark.slow
def test_export_the_latest_step_to_pytorch_and_back(trained_run, tmp_path):
  pytest.importorskip('torch')
  convert.convert(trained_run.workdir / 'checkpoints', tmp_path / 'model.pt')
  convert.convert(tmp_path / 'model.pt', tmp_path / 'back', checkpoint_tasks=TRAINED_TASKS,
                  num_heads=2)
  _, params = weights.load(trained_run.workdir)
  _, back = weights.load(tmp_path / 'back')
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(back), jax.device_get(params))


@pytest.mark.slow
def test_two_processes_train_and_checkpoint(tmp_path):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  processes = [start(tmp_path, '--config.total_steps=2', '--config.checkpoint_every=2',
                     "--config.data.tasks=('sr_x2',)",
                     env={'JAX_COORDINATOR_ADDRESS': f'127.0.0.1:{port}',
                          'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': str(i)})
               for i in range(2)]
  outputs = [finish(p) for p in processes]
  assert 'process 0 of 2' in outputs[0] and 'process 1 of 2' in outputs[1]
  assert 'on 2 devices' in outputs[0]
  assert steps_saved(tmp_path) == [2]
  assert sorted(scalars(tmp_path, 'loss')) == [1, 2]


@pytest.mark.parametrize('args,exit_code,message', [
    (['--config=configs/quickstart.py', '--config.data.batch_size=3', '--config.mesh.fsdp=2'], 1,
     'error: mesh.fsdp=2 must be a positive divisor of the 1 devices.'),
    (['--config=configs/mini_finetune.py:sr_x2', '--config.checkpoint=runs/pretrained'], 2,
     'error: ipt_jax.main trains from random weights and would ignore config.checkpoint; start '
     'from it with python -m ipt_jax.finetune.'),
])
def test_bad_config_is_one_line(tmp_path, args, exit_code, message):
  result = run_command('main', f'--workdir={tmp_path / "w"}', *args)
  assert result.returncode == exit_code
  assert result.stderr.strip().splitlines()[-1] == message
  assert not (tmp_path / 'w').exists()


@pytest.mark.slow
def test_cpu_devices_split_the_cpu_before_jax_starts():
  program = textwrap.dedent('''
      import jax
      from ipt_jax import parallel
      parallel.initialize('off', cpu_devices=2)
      print(jax.device_count())
      parallel.initialize('off', cpu_devices=3)  # JAX has started: a warning, nothing else.
      print(jax.device_count())
  ''')
  result = subprocess.run([sys.executable, '-c', program], cwd=REPO, capture_output=True,
                          text=True)
  assert result.stdout.split() == ['2', '2'], result.stderr[-2000:]
  assert 'cpu_devices=3 is not applied' in result.stderr
