"""Benchmark evaluation: the bicubic baseline against the reference numbers, the table and JSON the
command writes, the tiny official model on Set5, denoising and deraining folders, and errors."""
import json
import os
import pathlib

import numpy as np
from PIL import Image
import pytest

from tests.conftest import run_command
from tests.conftest import shared_path
from ipt_jax import errors
from ipt_jax import evaluate
from ipt_jax import inference
from ipt_jax import metrics
from ipt_jax import weights
from ipt_jax.data import testsets

TINY_PT = ('fixtures', 'official_ipt_tiny', 'state_dict.pt')
# shared/data/README.md: the Y-PSNR of bicubic upscaling on Set5 and Set14.
BICUBIC_REFERENCE = {'sr_x2': (33.68, 30.33), 'sr_x3': (30.41, 27.63), 'sr_x4': (28.43, 26.09)}


@pytest.fixture(scope='module')
def data_dir():
  return str(shared_path('data', 'benchmark'))


@pytest.fixture(scope='module')
def tiny_pt():
  pytest.importorskip('torch')
  return str(shared_path(*TINY_PT))


def tiny_options(tiny_pt, tmp_path, **options):
  return evaluate.Options(checkpoint=tiny_pt, num_heads=2, tiling='fast', tile_batch=16,
                          output_dir=str(tmp_path), **options)


@pytest.mark.parametrize('task', sorted(BICUBIC_REFERENCE))
def test_bicubic_baseline_prints_the_reference_numbers(data_dir, tmp_path, task):
  scores, applied = evaluate.evaluate(evaluate.Options(
      tasks=(task,), data_dir=data_dir, sets=('Set5', 'Set14'), model='bicubic',
      output_dir=str(tmp_path)))
  assert applied['lr'] == 'files'
  table = evaluate.markdown_table(scores)
  set5, set14 = BICUBIC_REFERENCE[task]
  assert f'| {task} | Set5 | 5 | {set5:.2f} |' in table, table
  assert f'| {task} | Set14 | 14 | {set14:.2f} |' in table, table


@pytest.mark.parametrize('task', sorted(BICUBIC_REFERENCE))
def test_bicubic_from_lr_generated_from_hr_is_within_a_hundredth(data_dir, tmp_path, task):
  scores, applied = evaluate.evaluate(evaluate.Options(
      tasks=(task,), data_dir=data_dir, sets=('Set5', 'Set14'), model='bicubic', lr='generated',
      output_dir=str(tmp_path)))
  assert applied['lr'] == 'generated'
  for score, reference in zip(scores, BICUBIC_REFERENCE[task]):
    assert abs(score.psnr - reference) <= 0.01, (score.set_name, score.psnr)


def test_cli_prints_the_table_and_writes_json_and_images(data_dir, tmp_path):
  out = tmp_path / 'out'
  result = run_command('evaluate', '--model=bicubic', '--tasks=sr_x3', f'--data_dir={data_dir}',
                       '--sets=Set5', '--save_images', f'--output_dir={out}')
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0] == '| task | set | images | PSNR (dB) | SSIM | images/s |'
  assert lines[2].startswith('| sr_x3 | Set5 | 5 | 30.41 | 0.8690 | ')
  report = json.loads((out / 'results.json').read_text())
  assert report['settings']['model'] == 'bicubic' and report['settings']['lr'] == 'files'
  assert report['settings']['command'].startswith('python -m ipt_jax.evaluate --model=bicubic')
  [set5] = report['results']
  assert (set5['task'], set5['set'], set5['images']) == ('sr_x3', 'Set5', 5)
  assert set5['psnr'] == pytest.approx(np.mean([i['psnr'] for i in set5['per_image']]))
  names = [i['name'] for i in set5['per_image']]
  assert sorted(os.listdir(out)) == ['results.json', 'sr_x3']
  assert sorted(os.listdir(out / 'sr_x3' / 'Set5')) == [f'{n}.png' for n in names]
  for pair in testsets.load(data_dir, 'Set5', 'sr_x3'):
    with Image.open(out / 'sr_x3' / 'Set5' / f'{pair.name}.png') as image:
      assert image.mode == 'RGB' and np.asarray(image).shape == pair.hq.shape


@pytest.mark.slow
def test_tiny_official_model_on_set5_x2(data_dir, tiny_pt, tmp_path):
  scores, applied = evaluate.evaluate(tiny_options(tiny_pt, tmp_path, tasks=('sr_x2',),
                                                   data_dir=data_dir, sets=('Set5',)))
  [set5] = scores
  assert len(set5.images) == 5
  assert np.isfinite([set5.psnr, set5.ssim, set5.images_per_second]).all()
  assert applied['checkpoint_tasks'] == ['sr_x2', 'sr_x3', 'sr_x4', 'derain', 'denoise_30',
                                         'denoise_50']
  assert (applied['tiling'], applied['lr'], applied['devices']) == ('fast', 'files', 1)


def write_images(folder: pathlib.Path, names, seed):
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  for name in names:
    Image.fromarray(rng.integers(0, 256, (50, 60, 3), np.uint8)).save(folder / f'{name}.png')


@pytest.mark.slow
def test_denoising_uses_the_same_seeded_noise_every_time(tiny_pt, tmp_path):
  write_images(tmp_path / 'data' / 'Mini' / 'HR', ['a', 'b'], seed=0)
  options = tiny_options(tiny_pt, tmp_path, tasks=('denoise_30',), data_dir=str(tmp_path / 'data'),
                         sets=('Mini',))
  first, _ = evaluate.evaluate(options)
  second, _ = evaluate.evaluate(options)
  assert [i.psnr for i in first[0].images] == [i.psnr for i in second[0].images]
  assert np.isfinite(first[0].psnr)


@pytest.mark.slow
def test_deraining_measures_the_whole_image(tiny_pt, tmp_path):
  write_images(tmp_path / 'data' / 'Rain100L' / 'rainy', ['rain-001'], seed=1)
  write_images(tmp_path / 'data' / 'Rain100L', ['norain-001'], seed=2)
  options = tiny_options(tiny_pt, tmp_path, tasks=('derain',), data_dir=str(tmp_path / 'data'))
  [scores], _ = evaluate.evaluate(options)  # The default set for deraining: Rain100L.
  [pair] = testsets.load(tmp_path / 'data', 'Rain100L', 'derain')
  image_model = inference.image_model(*weights.load(tiny_pt, num_heads=2), 'derain',
                                   mode='fast', tile_batch=16)
  output = metrics.quantise(image_model(pair.lq))
  assert scores.images[0].psnr == pytest.approx(metrics.psnr_y(output, pair.hq, shave=0))


def test_a_task_the_checkpoint_lacks_is_refused_with_its_tasks(data_dir, tiny_pt, tmp_path):
  with pytest.raises(ValueError, match="'sr_x8' is not one of this model's tasks: sr_x2, sr_x3, "
                                       'sr_x4, derain, denoise_30, denoise_50'):
    evaluate.evaluate(tiny_options(tiny_pt, tmp_path, tasks=('sr_x8',), data_dir=data_dir,
                                   sets=('Set5',)))


def test_a_missing_set_folder_names_the_path_and_the_layout(data_dir):
  with pytest.raises(errors.InputError) as error:
    evaluate.evaluate(evaluate.Options(tasks=('sr_x4',), data_dir=data_dir, model='bicubic',
                                       sets=('Set5', 'NoSuchSet')))
  message = str(error.value)
  assert f'{pathlib.Path(data_dir) / "NoSuchSet"}: no such benchmark set folder' in message
  assert '<data_dir>/<Set>/HR/<name>.png' in message and 'LR_bicubic/X<scale>' in message


def test_bicubic_is_only_for_super_resolution(data_dir):
  with pytest.raises(ValueError, match='--model=bicubic is the baseline of super-resolution '
                                       'tasks .* not of denoise_30'):
    evaluate.evaluate(evaluate.Options(tasks=('sr_x2', 'denoise_30'), data_dir=data_dir,
                                       model='bicubic'))


def test_the_input_baseline_is_only_for_denoising_and_deraining(data_dir):
  with pytest.raises(ValueError, match='--model=input is the baseline of denoising and deraining; '
                                       'the input of sr_x2 .* use --model=bicubic'):
    evaluate.evaluate(evaluate.Options(tasks=('sr_x2',), data_dir=data_dir, model='input'))


def test_the_input_baseline_scores_the_noisy_image(data_dir, tmp_path):
  hr = pathlib.Path(data_dir) / 'CBSD68' / 'HR'
  mini = tmp_path / 'data' / 'Mini' / 'HR'
  mini.mkdir(parents=True)
  names = sorted(os.listdir(hr))[:2]
  for name in names:
    (mini / name).write_bytes((hr / name).read_bytes())
  scores, _ = evaluate.evaluate(evaluate.Options(
      tasks=('denoise_30',), data_dir=str(tmp_path / 'data'), sets=('Mini',), model='input',
      output_dir=str(tmp_path / 'eval')))
  (score,) = scores
  for image in score.images:  # The PSNR of clip(clean + 30 N(0, 1)) against the clean image.
    pair = next(p for p in testsets.load(str(tmp_path / 'data'), 'Mini', 'denoise_30')
                if p.name == image.name)
    assert image.psnr == pytest.approx(float(metrics.psnr_y(metrics.quantise(pair.lq), pair.hq,
                                                            0)), abs=1e-6)
  assert 22 < score.psnr < 25  # Y: about 23.7 dB (RGB: 18.6).


def test_a_checkpoint_is_required_for_the_model(data_dir):
  with pytest.raises(ValueError, match='--checkpoint is required'):
    evaluate.evaluate(evaluate.Options(tasks=('sr_x2',), data_dir=data_dir))


@pytest.mark.parametrize('options,expected', [
    (dict(model='bicubic', tasks=('sr_x2', 'sr_x3')), 'eval/bicubic_sr_x2+sr_x3'),
    (dict(model='input', tasks=('denoise_30',)), 'eval/input_denoise_30'),
    (dict(checkpoint='models/IPT_sr_x4.pt', tasks=('sr_x4',)), 'eval/IPT_sr_x4_sr_x4'),
    (dict(checkpoint='runs/ft/checkpoints/3000', tasks=('sr_x2',), tiling='fast',
          self_ensemble=True, dtype='bfloat16'), 'eval/ft_3000_sr_x2_fast_x8_bfloat16'),
])
def test_default_output_dir(options, expected):
  assert str(evaluate.Options(data_dir='.', **options).resolved_output_dir) == expected
