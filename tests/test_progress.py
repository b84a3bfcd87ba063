"""What the long-running commands say in a log (output to a pipe, not a terminal): training's
line at every log_every step and its summary, evaluate's line per set, restore's line per image;
no native start-up or PNG noise unless -v asks for it; logger settings undone after use."""
import functools
import io
import logging
import os
import pathlib
import subprocess
import sys

from absl import logging as absl_logging
from absl.testing import flagsaver
import numpy as np
from PIL import Image
import pytest
import skimage

from ipt_jax import checkpoint
from ipt_jax import evaluate
from ipt_jax import progress
from ipt_jax import quiet
from ipt_jax import tasks as tasks_lib
from ipt_jax.data import testsets
from ipt_jax.data import degrade
from ipt_jax.data import sources
from ipt_jax.models import ipt
from tests.conftest import random_params
from tests.conftest import REPO
from tests.conftest import TRAINED_STEPS as STEPS
from tests.conftest import user_env

# Native and library lines a default run must not show.
NOISE = ('oneDNN', 'absl::InitializeLog', 'iCCP', 'cpu_feature_guard', 'checkpoint_manager.py',
         "Unable to initialize backend 'tpu'")


def run(args, env=None, **kwargs) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                        env=env or user_env(), timeout=600, **kwargs)


@pytest.mark.slow
def test_training_logs_each_log_every_step_and_ends_with_a_summary(trained_run):
  log, workdir = trained_run.stderr, trained_run.workdir
  for step in range(1, STEPS + 1):
    [line] = [l for l in log.splitlines()
              if f'] step {step}/{STEPS} ({100 * step / STEPS:.0f}%): loss ' in l]
    assert ', lr ' in line and ' images/s, ' in line and line.endswith(' left'), line
  assert 'Y-PSNR of the baseline (bicubic for SR, the input itself otherwise): sr_x2 ' in log
  assert f'] step {STEPS}/{STEPS} validation Y-PSNR dB, model / baseline: sr_x2 ' in log
  for noise in NOISE:
    assert noise not in log, noise
  assert not quiet.TENSORFLOW_START_UP.search(log)  # Shown with -v 1 only (below).
  summary = trained_run.stdout
  assert summary.startswith(f'Training done: steps 0 to {STEPS} of {STEPS} in '), summary
  assert f'Validation Y-PSNR at step {STEPS} in dB' in summary
  assert f'Checkpoints: {workdir}/checkpoints (newest: step {STEPS})' in summary
  assert f'tensorboard --logdir={workdir}' in summary
  assert (f'python -m ipt_jax.evaluate --checkpoint={workdir} --tasks=sr_x2,denoise_30 '
          '--data_dir=') in summary
  assert f'python -m ipt_jax.restore --checkpoint={workdir} --tasks=sr_x2 ' in summary
  assert (f'python -m ipt_jax.convert --checkpoint={workdir} '
          f'--output={workdir.name}.safetensors') in summary


def write_images(folder: pathlib.Path, names, size=(40, 50)):
  folder.mkdir(parents=True, exist_ok=True)
  for seed, name in enumerate(names):
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), np.uint8)
    Image.fromarray(pixels).save(folder / f'{name}.png')


@pytest.mark.slow
def test_evaluate_logs_a_line_per_set(tmp_path):
  write_images(tmp_path / 'data' / 'Mini' / 'HR', ['a', 'b'])
  result = run(['-m', 'ipt_jax.evaluate', '--model=bicubic', '--tasks=sr_x2,sr_x3',
                f'--data_dir={tmp_path / "data"}', '--sets=Mini',
                f'--output_dir={tmp_path / "out"}'])
  assert result.returncode == 0, result.stderr[-3000:]
  for task in ('sr_x2', 'sr_x3'):
    [line] = [l for l in result.stderr.splitlines() if f'] {task} Mini: 2/2 images, PSNR ' in l]
    assert line.endswith(' s') and 'so far' not in line, line
  assert result.stdout.startswith('| task | set | images | PSNR (dB) |')


def test_evaluate_logs_a_line_now_and_then_during_a_long_set(tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(progress, 'LOG_EVERY_SECONDS', 0.)  # Every image is 'a while'.
  write_images(tmp_path / 'Mini' / 'HR', ['a', 'b', 'c'])
  task = tasks_lib.get('sr_x2')
  entries = testsets.entries(tmp_path, 'Mini', task)
  with caplog.at_level(logging.INFO):
    score = evaluate.evaluate_set(functools.partial(degrade.baseline, scale=task.scale), entries, task, 'Mini')
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith('sr_x2 Mini: ')]
  assert [l.split(', ')[0] for l in lines] == ['sr_x2 Mini: 1/3 images', 'sr_x2 Mini: 2/3 images',
                                                'sr_x2 Mini: 3/3 images']
  assert ' dB so far, ' in lines[1] and lines[2].startswith(
      f'sr_x2 Mini: 3/3 images, PSNR {score.psnr:.2f} dB, ')


@pytest.mark.slow
def test_restore_logs_a_line_per_image_and_a_count(tmp_path):
  model = ipt.create('tiny', tasks=('sr_x2',))
  checkpoint.save_params(tmp_path / 'params', model, random_params(model))
  write_images(tmp_path, ['a', 'b'], size=(20, 30))
  result = run(['-m', 'ipt_jax.restore', f'--checkpoint={tmp_path / "params"}', '--tasks=sr_x2',
                '--tiling=fast', '--cpu_devices=2', f'--output_dir={tmp_path / "out"}',
                str(tmp_path / 'a.png'),
                str(tmp_path / 'b.png'), str(tmp_path / 'missing.png')])
  assert result.returncode == 1, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  for name in ('a', 'b'):
    [line] = [l for l in lines if l.startswith(f'{tmp_path / name}.png -> ')]
    assert line.startswith(f'{tmp_path / name}.png -> {tmp_path / "out" / name}_sr_x2.png: '
                           '30x20 -> 60x40, ') and line.endswith(' s'), line
  assert lines[-1] == f'Wrote 2 of 3 images into {tmp_path / "out"}; 1 failed (see above).'
  assert 'each batch of tiles runs on 2 device(s).' in result.stderr  # --cpu_devices=2
  assert f'error: {tmp_path / "missing.png"}: no such file' in result.stderr


def icc_png(path: pathlib.Path):
  """A PNG carrying the ICC profile of scikit-image's astronaut.png, which libpng reports as
  'known incorrect sRGB profile'."""
  with Image.open(pathlib.Path(skimage.data_dir) / 'astronaut.png') as astronaut:
    profile = astronaut.info['icc_profile']
  pixels = np.random.default_rng(0).integers(0, 256, (100, 120, 3), np.uint8)
  Image.fromarray(pixels).save(path, icc_profile=profile)


# Decodes the PNG with TensorFlow directly (libpng warns), then reads it through the pipeline.
READ_ICC_PNG = """
import sys
import tensorflow as tf
from configs import quickstart
from ipt_jax.data import pipeline
folder = sys.argv[1]
tf.io.decode_png(tf.io.read_file(folder + '/icc.png'))
print('pipeline', file=sys.stderr, flush=True)
config = quickstart.get_config().data
config.val_source, config.tasks = 'folder:' + folder, ('sr_x2',)
batches = pipeline.make_eval_batches(config, patch_size=48, num_examples=2)
assert batches['sr_x2']['hq'].shape == (2, 96, 96, 3)
"""


@pytest.mark.slow
def test_reading_a_png_with_a_bad_icc_profile_prints_no_libpng_warning(tmp_path):
  icc_png(tmp_path / 'icc.png')
  result = run(['-c', READ_ICC_PNG, str(tmp_path)], env=user_env(TF_CPP_MIN_LOG_LEVEL='0'))
  assert result.returncode == 0, result.stderr[-3000:]
  direct, piped = result.stderr.split('pipeline\n')
  assert 'PNG warning: iCCP: known incorrect sRGB profile' in direct  # The file does warn...
  assert 'iCCP' not in piped  # ... but not when the pipeline reads it.


def test_without_iccp_keeps_the_pixels_and_other_chunks(tmp_path):
  icc_png(tmp_path / 'icc.png')
  encoded = (tmp_path / 'icc.png').read_bytes()
  stripped = sources.without_iccp(encoded)
  assert b'iCCP' in encoded and b'iCCP' not in stripped
  with Image.open(io.BytesIO(stripped)) as image, Image.open(tmp_path / 'icc.png') as original:
    np.testing.assert_array_equal(np.asarray(image), np.asarray(original))
  plain = io.BytesIO()
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(plain, 'PNG')
  assert sources.without_iccp(plain.getvalue()) == plain.getvalue()


# TensorFlow's start-up, as train_and_evaluate starts it, inside a command.
START_TENSORFLOW = """
from ipt_jax import cli, quiet
def main(argv):
  with quiet.tensorflow_start_up():
    from ipt_jax.data import pipeline
    pipeline.start_tensorflow()
cli.run(main)
"""


@pytest.mark.slow
def test_tensorflow_start_up_lines_with_verbosity():
  # Without -v they are not shown: the trained run's log has none (test above).
  result = run(['-c', START_TENSORFLOW, '-v', '1'])
  assert result.returncode == 0, result.stderr[-3000:]
  if not quiet.TENSORFLOW_START_UP.search(result.stderr):
    # Which lines TensorFlow writes at start-up depends on the CPU (oneDNN, AVX-512).
    raw = run(['-c', 'from ipt_jax.data import pipeline; pipeline.start_tensorflow()'],
              env=user_env(**{quiet.TF_LOG_LEVEL: quiet.JAX_TF_LOG_LEVEL}))
    assert not quiet.TENSORFLOW_START_UP.search(raw.stderr), result.stderr
    pytest.skip('TensorFlow writes no start-up lines at this log level on this CPU.')


def absl_record(path: str, level: int) -> logging.LogRecord:
  return logging.LogRecord('absl', level, path, 1, 'message', None, None)


def test_quiet_configuration_is_undone_after_use(monkeypatch):
  monkeypatch.delenv(quiet.TF_LOG_LEVEL, raising=False)
  jax_logger, handler = logging.getLogger('jax'), absl_logging.get_absl_handler()
  level, filters = jax_logger.level, list(handler.filters)
  orbax = f'{os.sep}site-packages{os.sep}orbax{os.sep}checkpoint{os.sep}manager.py'
  clu = f'{os.sep}site-packages{os.sep}clu{os.sep}metric_writers{os.sep}logging_writer.py'
  with quiet.configured(verbose=False):
    assert os.environ[quiet.TF_LOG_LEVEL] == quiet.QUIET_TF_LOG_LEVEL
    assert jax_logger.level == logging.WARNING
    assert not handler.filter(absl_record(orbax, logging.INFO))
    assert handler.filter(absl_record(orbax, logging.WARNING))
    assert handler.filter(absl_record(clu, logging.INFO))  # clu's metric lines.
  assert quiet.TF_LOG_LEVEL not in os.environ
  assert jax_logger.level == level and handler.filters == filters
  with quiet.configured(verbose=True):
    assert quiet.TF_LOG_LEVEL not in os.environ and handler.filters == filters


def test_loggers_named_in_logger_levels_are_left_alone():
  jax_logger = logging.getLogger('jax')
  level = jax_logger.level
  try:
    with flagsaver.flagsaver(logger_levels={'jax': 'DEBUG'}):
      with quiet.configured(verbose=False):
        assert jax_logger.level == logging.DEBUG
  finally:
    jax_logger.setLevel(level)


@pytest.mark.parametrize('seconds,expected', [(4.4, '4s'), (59.6, '1m00s'), (725, '12m05s'),
                                              (3 * 3600 + 7 * 60, '3h07m'),
                                              (2 * 86400 + 4 * 3600, '2d04h')])
def test_duration(seconds, expected):
  assert progress.duration(seconds) == expected


def test_training_line():
  line = progress.training_line(100, 4000, loss=12.345, task_losses={'sr_x2': 10.1, 'derain': 14.6},
                                learning_rate=5e-5, images_per_second=52.34, seconds_left=3720,
                                skipped=2)
  assert line == ('step 100/4000 (2%): loss 12.35 (sr_x2 10.1, derain 14.6), lr 5e-05, '
                  '52.3 images/s, 1h02m left, 2 non-finite steps skipped')


def test_next_commands_quote_the_workdir():
  commands = progress.next_commands('/runs/my run', ('denoise_30',))
  assert commands[0].startswith("python -m ipt_jax.evaluate --checkpoint='/runs/my run' "
                                '--tasks=denoise_30 --data_dir=')
  assert commands[2] == ("python -m ipt_jax.convert --checkpoint='/runs/my run' "
                         "--output='my run.safetensors'")
  assert len(commands) == 3  # Fine-tuning is suggested after pre-training only.
