"""Pre-training end to end: python -m ipt_jax.main on the bundled samples, checkpoints,
TensorBoard events, exact resume after SIGKILL, SIGTERM, export, and two processes."""
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
import tensorflow as tf

from ipt_jax import checkpoint
from ipt_jax import convert
from ipt_jax import weights

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 8
# The quickstart config with two tasks, a small batch and every step logged.
OVERRIDES = (f'--config.total_steps={STEPS}', '--config.data.batch_size=4',
             "--config.data.tasks=('sr_x2','denoise_30')", '--config.log_every=1',
             f'--config.eval_every={STEPS // 2}', f'--config.checkpoint_every={STEPS // 2}',
             '--config.eval.num_examples=4')


def start(workdir, *extra, env=None):
  command = [sys.executable, '-m', 'ipt_jax.main', '--config=configs/quickstart.py',
             f'--workdir={workdir}', *OVERRIDES, *extra]
  return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env={**os.environ, 'JAX_PLATFORMS': 'cpu', **(env or {})})


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


def wait_for(condition, process, timeout=300):
  deadline = time.time() + timeout
  while not condition():
    assert process.poll() is None, process.communicate()[0][-4000:]
    assert time.time() < deadline, 'timed out'
    time.sleep(0.05)


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('straight')
  finish(start(workdir))
  return workdir


def test_writes_checkpoints_events_and_validation(straight_run):
  assert STEPS in steps_saved(straight_run) and STEPS // 2 in steps_saved(straight_run)
  losses = scalars(straight_run, 'loss')
  assert sorted(losses) == list(range(1, STEPS + 1))
  assert all(np.isfinite(v) for v in losses.values())
  for tag in ('l1', 'contrastive', 'learning_rate', 'grad_norm', 'images_per_sec', 'step_time',
              'skipped_steps', 'loss_sr_x2', 'loss_denoise_30'):
    assert scalars(straight_run, tag), tag
  for task in ('sr_x2', 'denoise_30'):
    psnr = scalars(straight_run, f'val/psnr_{task}')
    assert psnr[STEPS] > psnr[STEPS // 2], (task, psnr)  # Validation PSNR rises.
  model, _ = weights.load(straight_run)
  assert model.tasks == ('sr_x2', 'denoise_30')


def test_resume_after_sigkill_is_exact(straight_run, tmp_path):
  process = start(tmp_path)
  wait_for(lambda: STEPS // 2 in steps_saved(tmp_path), process)
  process.kill()
  process.wait()
  assert steps_saved(tmp_path)[-1] < STEPS, 'the run finished before it was killed'
  output = finish(start(tmp_path))
  assert f'from step {STEPS // 2} to {STEPS}' in output

  expected, got = scalars(straight_run, 'loss'), scalars(tmp_path, 'loss')
  assert got == expected  # Bitwise, every step.
  _, params = weights.load(straight_run)
  _, resumed = weights.load(tmp_path)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed), jax.device_get(params))


def test_sigterm_saves_the_current_step(tmp_path):
  process = start(tmp_path, '--config.total_steps=1000', '--config.checkpoint_every=1000')
  wait_for(lambda: len(scalars(tmp_path, 'loss')) >= 2, process)
  process.send_signal(signal.SIGTERM)
  output = finish(process)
  saved = steps_saved(tmp_path)
  assert f'Pre-empted: saved step {saved[-1]}' in output
  assert 2 <= saved[-1] < 1000
  model, params = weights.load(tmp_path)
  assert jax.tree.structure(params) == jax.tree.structure(
      jax.eval_shape(model.init_params, jax.random.key(0)))


def test_export_the_latest_step_to_pytorch_and_back(straight_run, tmp_path):
  pytest.importorskip('torch')
  convert.convert(straight_run / 'checkpoints', tmp_path / 'model.pt')
  convert.convert(tmp_path / 'model.pt', tmp_path / 'back', checkpoint_tasks=('sr_x2', 'denoise_30'),
                  num_heads=2)
  _, params = weights.load(straight_run)
  _, back = weights.load(tmp_path / 'back')
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(back), jax.device_get(params))


def test_two_processes_train_and_checkpoint(tmp_path):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  processes = [start(tmp_path, '--config.total_steps=2', '--config.checkpoint_every=2',
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
  result = subprocess.run(
      [sys.executable, '-m', 'ipt_jax.main', f'--workdir={tmp_path / "w"}', *args],
      cwd=ROOT, capture_output=True, text=True, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == exit_code
  assert result.stderr.strip().splitlines()[-1] == message
  assert not (tmp_path / 'w').exists()


def test_cpu_devices_split_the_cpu_before_jax_starts():
  program = textwrap.dedent('''
      import jax
      from ipt_jax import parallel
      parallel.initialize('off', cpu_devices=2)
      print(jax.device_count())
      parallel.initialize('off', cpu_devices=3)  # JAX has started: a warning, nothing else.
      print(jax.device_count())
  ''')
  result = subprocess.run([sys.executable, '-c', program], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert result.stdout.split() == ['2', '2'], result.stderr[-2000:]
  assert 'mesh.cpu_devices=3 is not applied' in result.stderr
