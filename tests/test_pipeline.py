"""Tests of the training input pipeline: batches, schedule, hosts, determinism, resume."""
import itertools
import os

import numpy as np
from PIL import Image
import pytest
import skimage
import tensorflow_datasets as tfds

from configs import pretrain
from ipt_jax import tasks
from ipt_jax.data import degrade
from ipt_jax.data import pipeline

PATCH = 48  # The input size of the models trained on these batches (model.patch_size).


@pytest.fixture(scope='module')
def jpeg_folder(tmp_path_factory):
  """Six 240x200 JPEGs, large enough for every task (sr_x4 needs 192 px)."""
  folder = tmp_path_factory.mktemp('jpegs')
  with Image.open(os.path.join(skimage.data_dir, 'astronaut.png')) as image:
    astronaut = image.convert('RGB')
  for i in range(6):
    astronaut.crop((40 * i, 30 * i, 40 * i + 240, 30 * i + 200)).save(folder / f'{i}.jpg')
  return folder


@pytest.fixture(scope='module')
def colour_folder(tmp_path_factory):
  """Ten 96x96 PNGs, each one flat colour: a crop tells which image it came from."""
  folder = tmp_path_factory.mktemp('colours')
  for i in range(10):
    Image.fromarray(np.full((96, 96, 3), (20 * i, 200 - 10 * i, 7), np.uint8)).save(
        folder / f'{i:02d}.png')
  return folder


def _config(folder, **overrides):
  config = pretrain.data_config()
  config.source = f'folder:{folder}'
  config.batch_size = 2
  config.crops_per_image = 2
  config.update(overrides)
  return config


def _take(config, steps: int, **kwargs) -> list[dict]:
  return list(itertools.islice(pipeline.make_train_iterator(config, patch_size=PATCH, **kwargs), steps))


@pytest.mark.slow
def test_every_task_has_the_right_pairs(jpeg_folder):
  config = _config(jpeg_folder)
  batches = _take(config, 25, seed=3)
  weights = np.ones(6)
  first = {}
  for step, batch in enumerate(batches):
    assert batch['task'] == pipeline.task_schedule(3, step, weights)
    first.setdefault(batch['task'], batch)
  assert sorted(first) == list(range(6))
  for index, batch in first.items():
    task = tasks.get(config.tasks[index])
    lq, hq = batch['lq'], batch['hq']
    assert lq.dtype == np.float32 and hq.dtype == np.uint8
    assert lq.shape == (2, 48, 48, 3)
    assert hq.shape == (2, 48 * task.scale, 48 * task.scale, 3)
    assert lq.min() >= 0 and lq.max() <= 255
    if task.kind == 'sr':
      expected = degrade.to_uint8(degrade.imresize(hq, 1 / task.scale)).numpy()
      assert np.abs(lq - expected).max() <= 1 and (lq == np.round(lq)).all()
    elif task.kind == 'denoise':
      assert 0.8 * task.sigma < (lq - hq).std() < 1.1 * task.sigma
      # clip(x + sigma * N(0, 1), 0, 255) in float, not rounded: only the clipped are integers.
      inside = (lq > 0) & (lq < 255)
      assert inside.mean() > 0.5 and (lq[inside] != np.round(lq[inside])).all()
    else:
      assert (lq >= hq).all() and (lq > hq).mean() > 0.01 and (lq == np.round(lq)).all()


@pytest.mark.slow
def test_same_seed_same_batches(jpeg_folder):
  config = _config(jpeg_folder)
  first, again, other = (_take(config, 4, seed=s) for s in (1, 1, 2))
  for a, b in zip(first, again):
    assert a['task'] == b['task']
    for key in ('lq', 'hq', 'image_id'):
      np.testing.assert_array_equal(a[key], b[key])
  assert any(a['hq'].shape != c['hq'].shape or not np.array_equal(a['hq'], c['hq'])
             for a, c in zip(first, other))


@pytest.mark.slow
@pytest.mark.parametrize('start_step', [4, 5, 9])
def test_resume_equals_uninterrupted_run(jpeg_folder, start_step):
  # 3 examples per step, 2 crops per image, 6 images per epoch: step 4 starts epoch 1,
  # step 5 starts mid-image in epoch 1, step 9 in epoch 2.
  config = _config(jpeg_folder, batch_size=3)
  uninterrupted = _take(config, 12, seed=5)
  resumed = _take(config, 12 - start_step, seed=5, start_step=start_step)
  for a, b in zip(uninterrupted[start_step:], resumed):
    assert a['task'] == b['task']
    for key in ('lq', 'hq', 'image_id'):
      np.testing.assert_array_equal(a[key], b[key])


def test_hosts_share_the_schedule_and_see_disjoint_images(colour_folder):
  config = _config(colour_folder, batch_size=4, tasks=('sr_x2', 'denoise_30', 'derain'))
  runs = [_take(config, 8, seed=0, process_index=i, process_count=2) for i in range(2)]
  assert [b['task'] for b in runs[0]] == [b['task'] for b in runs[1]]
  colours = []
  for run in runs:
    assert all(b['lq'].shape[0] == 2 for b in run)  # Half the global batch each.
    colours.append({tuple(pixel) for b in run for pixel in b['hq'][:, 0, 0]})
  assert not colours[0] & colours[1]
  assert len(colours[0]) == len(colours[1]) == 5  # Every image of the host's share.


def test_crops_of_one_image_share_an_image_id_unique_over_hosts(colour_folder):
  # 4 crops per image, 8 per host and step: a batch holds 2 images' crops, shuffled.
  config = _config(colour_folder, batch_size=16, crops_per_image=4,
                   tasks=('sr_x2', 'denoise_30', 'derain'))
  runs = [_take(config, 6, seed=0, process_index=i, process_count=2) for i in range(2)]
  colour_of_id = {}
  for run in runs:
    for batch in run:
      ids = batch['image_id']
      assert ids.dtype == np.int32 and ids.shape == (8,)
      assert sorted(np.unique(ids, return_counts=True)[1]) == [4, 4]
      for image_id, pixel in zip(ids, batch['hq'][:, 0, 0]):
        # Each image is one flat colour: one id, one colour.
        assert colour_of_id.setdefault(int(image_id), tuple(pixel)) == tuple(pixel)
  assert len(colour_of_id) == 24  # 6 steps x 2 images x 2 hosts: new ids for each epoch too.
  assert len(set(colour_of_id.values())) == 10  # Every image of both hosts' shares.
  assert {i % 2 for i in colour_of_id} == {0, 1}  # Image n of host h: id 2n + h.
  # Shuffled within the batch: crops of one image are not always neighbours.
  assert any((b['image_id'][:4] != b['image_id'][0]).any() for run in runs for b in run)


def test_task_schedule():
  weights = (1., 0., 3.)
  draws = np.array([pipeline.task_schedule(7, step, weights) for step in range(4000)])
  counts = np.bincount(draws, minlength=3)
  assert counts[1] == 0 and 2.6 < counts[2] / counts[0] < 3.4
  assert [pipeline.task_schedule(7, s, weights) for s in range(50)] == list(draws[:50])
  assert [pipeline.task_schedule(8, s, weights) for s in range(50)] != list(draws[:50])
  assert {pipeline.task_schedule(7, s, (1.,)) for s in range(20)} == {0}


def test_batch_size_must_divide_over_hosts(jpeg_folder):
  assert pipeline.host_batch_size(256, 8) == 32
  message = 'must be a positive multiple of the number of hosts'
  with pytest.raises(ValueError, match=message):
    pipeline.host_batch_size(10, 4)
  with pytest.raises(ValueError, match=message):
    pipeline.make_train_iterator(_config(jpeg_folder, batch_size=5), patch_size=PATCH,
                                 seed=0, process_count=2)


@pytest.mark.parametrize('overrides,message', [
    ({'tasks': ('sr_x2', 'deblur')}, "Unknown task 'deblur'"),
    ({'tasks': ()}, 'lists no tasks'),
    ({'task_weights': (1., 2.)}, 'one non-negative weight per task'),
    ({'rain': {'density': (0.1, 0.2), 'speed': (1., 2.)}}, r"Unknown rain settings \['speed'\]"),
    ({'source': 'imagenet'}, 'Unknown image source'),
])
def test_bad_config_errors(jpeg_folder, overrides, message):
  config = _config(jpeg_folder)
  for key, value in overrides.items():
    config[key] = value
  with pytest.raises(ValueError, match=message):
    pipeline.make_train_iterator(config, patch_size=PATCH, seed=0)


def test_eval_batches_are_fixed():
  config = pretrain.data_config()
  config.val_source = 'samples:validation'  # Held-out samples (chelsea, rocket).
  batches = pipeline.make_eval_batches(config, patch_size=PATCH, num_examples=3, seed=0)
  again = pipeline.make_eval_batches(config, patch_size=PATCH, num_examples=3, seed=0)
  assert list(batches) == list(config.tasks)
  for name, pair in batches.items():
    scale = tasks.get(name).scale
    assert pair['lq'].shape == (3, 48, 48, 3) and pair['lq'].dtype == np.float32
    assert pair['hq'].shape == (3, 48 * scale, 48 * scale, 3)
    np.testing.assert_array_equal(pair['lq'], again[name]['lq'])
    np.testing.assert_array_equal(pair['hq'], again[name]['hq'])


@pytest.mark.slow
def test_tfds_imagenet_pipeline_mocked():
  config = pretrain.data_config()
  config.update(source='tfds:imagenet2012', val_source='tfds:imagenet2012:validation',
                data_dir='/unused', tasks=('sr_x2', 'denoise_30'),
                batch_size=4, crops_per_image=2, shuffle_buffer=8)
  # Random JPEGs of 1-50 px; 6 per epoch, so 8 steps of 4 examples span 3 epochs.
  with tfds.testing.mock_data(num_examples=6):
    iterator = pipeline.make_train_iterator(config, patch_size=8, seed=0)
    batches = list(itertools.islice(iterator, 8))
    resumed = list(itertools.islice(pipeline.make_train_iterator(config, patch_size=8, seed=0,
                                                                 start_step=5),
                                    3))
    eval_batches = pipeline.make_eval_batches(config, patch_size=8, num_examples=2)
  for batch in batches:
    scale = (2, 1)[batch['task']]
    assert batch['lq'].shape == (4, 8, 8, 3)
    assert batch['hq'].shape == (4, 8 * scale, 8 * scale, 3)
  for a, b in zip(batches[5:], resumed):
    for key in ('lq', 'hq', 'image_id'):
      np.testing.assert_array_equal(a[key], b[key])
  assert iterator.source_stats().too_small > 0
  assert eval_batches['sr_x2']['hq'].shape == (2, 16, 16, 3)
