"""A disk that fills up: a training save that cannot fit is refused in one line naming the
newest intact step, nothing partial is left, and once space is freed the same command
resumes; convert and evaluate say it in one line and write nothing half-way. Uses a 9 MB tmpfs (root only;
skipped elsewhere)."""
import os
import subprocess

import numpy as np
from PIL import Image
import pytest

from ipt_jax import checkpoint
from ipt_jax.models import ipt
from tests.conftest import random_params
from tests.conftest import run_command
from tests.conftest import TRAINED_ARGS


def resize(disk, size):
  subprocess.run(['mount', '-o', f'remount,size={size}', str(disk)], check=True)


@pytest.fixture
def small_disk(tmp_path):
  disk = tmp_path / 'disk'
  disk.mkdir()
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=9m', 'tmpfs', str(disk)],
                           capture_output=True, text=True)
  if mounted.returncode:
    pytest.skip(f'cannot mount a tmpfs here (root only): {mounted.stderr.strip()}')
  yield disk
  subprocess.run(['umount', str(disk)], check=True)


@pytest.mark.slow
def test_a_full_disk_stops_training_in_one_line_and_a_rerun_resumes(small_disk, trained_run):
  # The session's trained run again (after it: its compiled programs are reused). A training
  # checkpoint of its model takes 4.9 MB: 9 MB hold the first (step 4), not the second (8).
  del trained_run
  workdir = small_disk / 'run'
  result = run_command('main', *TRAINED_ARGS, f'--workdir={workdir}')
  assert result.returncode == 1
  assert result.stderr.startswith(
      f'error: {workdir}/checkpoints: not enough disk space: the checkpoint of step 8 needs '
      'about 4.9 MB and the disk has ')
  assert result.stderr.endswith('; the newest intact step is 4. Free some space (or lower '
                                '--config.keep_checkpoints) and run the same command again '
                                'to resume.\n')
  assert len(result.stderr.splitlines()) == 1
  assert os.listdir(workdir / 'checkpoints') == ['4']  # Nothing partial.
  assert 'claim.json' not in os.listdir(workdir)

  resize(small_disk, '30m')
  result = run_command('main', *TRAINED_ARGS, f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith('Training done: steps 4 to 8 of 8 in ')
  assert sorted(int(p.name) for p in checkpoint.step_dirs(workdir / 'checkpoints')) == [4, 8]


@pytest.mark.parametrize('output', ['model.pt', 'params'])
def test_convert_to_a_full_disk_is_one_line_and_writes_nothing(small_disk, tmp_path, output):
  model = ipt.create('tiny', tasks=('sr_x2',))
  checkpoint.save_params(tmp_path / 'tiny', model, random_params(model))
  (small_disk / 'filler').write_bytes(bytes(8_500_000))
  result = run_command('convert', f'--checkpoint={tmp_path / "tiny"}',
                       f'--output={small_disk / output}')
  assert result.returncode == 1
  assert result.stderr.startswith(f'error: {small_disk / output}: the converted checkpoint needs '
                                  'about 1.5 MB and the disk has ')
  assert result.stderr.endswith(' MB free; nothing was written. Free some space or choose '
                                'another output.\n')
  assert os.listdir(small_disk) == ['filler']


def test_evaluate_images_onto_a_full_disk_are_one_line_each_and_not_half_written(small_disk,
                                                                                 tmp_path):
  hr = tmp_path / 'data' / 'Mini' / 'HR'
  hr.mkdir(parents=True)
  noise = np.random.default_rng(0).integers(0, 256, (240, 240, 3), np.uint8)
  Image.fromarray(noise).save(hr / 'a.png')  # Its output PNG: about 170 kB.
  (small_disk / 'filler').write_bytes(bytes(9 * 2**20 - 40_000))  # Room for results.json.
  result = run_command('evaluate', '--model=bicubic', '--tasks=sr_x2',
                       f'--data_dir={tmp_path / "data"}', '--sets=Mini', '--save_images',
                       f'--output_dir={small_disk / "out"}')
  assert result.returncode == 1
  assert result.stderr.splitlines()[0] == (
      f'error: Mini a: {small_disk}/out/sr_x2/Mini/a.png: the disk is full, so it was not '
      'written; free some space or choose another output folder.')
  assert os.listdir(small_disk / 'out' / 'sr_x2' / 'Mini') == []
