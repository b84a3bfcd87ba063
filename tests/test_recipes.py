"""The small-data recipes run (a handful of steps, no timing asserted) and the README's figures
regenerate from their workdirs."""
import re
import signal

import numpy as np
from PIL import Image
import pytest

from configs import small_data
from ipt_jax import figures
from ipt_jax import train
from ipt_jax import weights
from tests.conftest import REPO


def few_steps(task):
  config = small_data.get_config(task)
  config.data.source = 'samples:train'
  config.data.batch_size = 2
  config.total_steps, config.log_every, config.eval_every, config.checkpoint_every = 4, 2, 2, 4
  config.optimizer.warmup_steps = 1
  config.eval.num_examples = 2
  return config


@pytest.fixture(scope='module')
def sr_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('sr_x2')
  handler = signal.getsignal(signal.SIGTERM)
  train.train_and_evaluate(few_steps('sr_x2'), str(workdir))
  assert signal.getsignal(signal.SIGTERM) is handler  # Installed for the run only.
  return workdir


@pytest.mark.slow
def test_sr_x2_recipe_trains_and_checkpoints(sr_run):
  model, _ = weights.load(sr_run)
  assert model.tasks == ('sr_x2',) and (model.n_feats, model.num_layers) == (32, 1)


def test_the_denoise_30_recipe_is_the_sr_x2_recipe_on_its_task():
  denoise, sr = small_data.get_config('denoise_30'), small_data.get_config('sr_x2')
  assert denoise.data.tasks == ('denoise_30',)
  denoise.data.tasks = sr.data.tasks
  assert denoise == sr


def test_the_training_images_are_a_required_override(tmp_path):
  with pytest.raises(ValueError, match=r'config.data.source is not set: .*folder:<path>'):
    train.train_and_evaluate(small_data.get_config('sr_x2'), str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


@pytest.mark.slow
def test_figures_regenerate_from_a_workdir(sr_run, tmp_path):
  pytest.importorskip('matplotlib')
  curves = figures.validation_curves(sr_run)
  curve = curves['val/psnr_sr_x2']
  assert list(curve['step']) == [2, 4] and curve['minutes'][1] > curve['minutes'][0]
  assert len(curve['value']) == 2
  figures.curves_figure(tmp_path / 'curves.png', [str(sr_run)])
  figures.curves_figure(tmp_path / 'steps.png', [str(sr_run)], x_axis='step')
  hr = tmp_path / 'data' / 'Set5' / 'HR'
  hr.mkdir(parents=True)
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 60, 3), np.uint8)).save(
      hr / 'a.png')
  figures.crops_figure(tmp_path / 'crops.png', str(sr_run), 'sr_x2', tmp_path / 'data', ['Set5'],
                       48)
  for name in ('curves.png', 'steps.png', 'crops.png'):
    with Image.open(tmp_path / name) as image:
      assert image.format == 'PNG' and image.width > 300


def test_every_figure_the_readme_shows_is_a_png_in_docs():
  readme = REPO / 'README.md'
  shown = re.findall(r'!\[[^\]]*\]\((docs/[^)]+)\)', readme.read_text())
  assert {'docs/sr_x2_crops.png', 'docs/denoise_30_crops.png',
          'docs/validation_curves.png'} <= set(shown)
  for path in shown:
    with Image.open(REPO / path) as image:
      assert image.format == 'PNG', path
