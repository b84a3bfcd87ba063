"""Tests of real rain: streak layers from files (rain_streaks) and rainy / clean pairs (pairs:)."""
import itertools

import numpy as np
from PIL import Image
import pytest

from configs import pretrain
from ipt_jax.data import pipeline
from ipt_jax.data import sources

PATCH = 48
CLEAN_COLOUR = (20, 60, 100)  # Flat clean images: lq - hq is then the streak, unclipped.
RAIN_OFFSET = 7  # A pair's rainy image is its clean image plus this.


def _streak_layer(rng, height: int, width: int) -> np.ndarray:
  """Sparse random near-vertical lines of brightness up to 120 (never clipped on CLEAN_COLOUR)."""
  layer = np.zeros((height, width), np.uint8)
  for _ in range(height * width // 200):
    row, col = rng.integers(0, height), rng.integers(0, width)
    layer[row:row + rng.integers(5, 20), col] = rng.integers(40, 121)
  return layer


@pytest.fixture(scope='module')
def streak_folder(tmp_path_factory):
  """Three streak layers of different sizes (one saved as RGB), beside a pair to ignore."""
  folder = tmp_path_factory.mktemp('streaks')
  rng = np.random.default_rng(0)
  layers = [_streak_layer(rng, *size) for size in ((60, 70), (48, 90), (80, 52))]
  for i, layer in enumerate(layers):
    image = Image.fromarray(layer)
    (image.convert('RGB') if i == 1 else image).save(folder / f'rainstreak-{i}.png')
  # RainTrainL keeps its pairs beside the streaks: only the rainstreak-* files are layers.
  Image.fromarray(np.full((60, 60, 3), 255, np.uint8)).save(folder / 'rain-0.png')
  Image.fromarray(np.zeros((60, 60, 3), np.uint8)).save(folder / 'norain-0.png')
  return folder, layers


@pytest.fixture(scope='module')
def colour_folder(tmp_path_factory):
  """Four flat 64x64 clean images of CLEAN_COLOUR."""
  folder = tmp_path_factory.mktemp('flat')
  for i in range(4):
    Image.fromarray(np.full((64, 64, 3), CLEAN_COLOUR, np.uint8)).save(folder / f'{i}.png')
  return folder


@pytest.fixture(scope='module')
def pairs_folder(tmp_path_factory):
  """Five RainTrainL-style pairs of textured images (rain = clean + RAIN_OFFSET), one broken."""
  folder = tmp_path_factory.mktemp('pairs')
  rng = np.random.default_rng(1)
  cleans = {}
  for i, size in enumerate(((56, 64), (64, 56), (50, 60), (60, 50))):
    cleans[i] = rng.integers(0, 200, (*size, 3), dtype=np.uint8)
    Image.fromarray(cleans[i]).save(folder / f'norain-{i}.png')
    Image.fromarray(cleans[i] + RAIN_OFFSET).save(folder / f'rain-{i}.png')
  # Sizes differ: skipped and counted as unreadable.
  Image.fromarray(np.zeros((60, 60, 3), np.uint8)).save(folder / 'norain-9.png')
  Image.fromarray(np.zeros((60, 61, 3), np.uint8)).save(folder / 'rain-9.png')
  return folder, cleans


def _config(source, **overrides):
  config = pretrain.data_config()
  config.update(source=source, tasks=('derain',), batch_size=4, crops_per_image=2)
  config.update(overrides)
  return config


def _take(config, steps: int, **kwargs) -> list[dict]:
  return list(itertools.islice(pipeline.make_train_iterator(config, patch_size=PATCH, **kwargs), steps))


def _windows(image: np.ndarray, size: int) -> np.ndarray:
  """Every [size, size] window of a [H, W, ...] image: [positions, size, size, ...]."""
  windows = np.lib.stride_tricks.sliding_window_view(image, (size, size), axis=(0, 1))
  windows = np.moveaxis(windows, (-2, -1), (2, 3))
  return windows.reshape(-1, *windows.shape[2:])


def _symmetries(image: np.ndarray) -> list[np.ndarray]:
  """The 8 flips and rotations by multiples of 90 degrees of [H, W, C]."""
  rotations = [np.rot90(image, k) for k in range(4)]
  return rotations + [r[:, ::-1] for r in rotations]


def test_streak_layers_are_loaded_as_one_channel(streak_folder):
  folder, layers = streak_folder
  loaded = sources.load_streak_layers(folder, min_size=PATCH)
  assert loaded.heights.tolist() == [60, 48, 80] and loaded.widths.tolist() == [70, 90, 52]
  for i, layer in enumerate(layers):
    start, size = loaded.offsets[i], layer.size
    np.testing.assert_array_equal(loaded.pixels[start:start + size].reshape(layer.shape), layer)


def test_derain_adds_a_window_of_a_streak_layer(streak_folder, colour_folder):
  folder, layers = streak_folder
  config = _config(f'folder:{colour_folder}', rain_streaks=str(folder))
  windows = np.concatenate([_windows(layer, PATCH) for layer in layers])
  chosen = set()
  for batch in _take(config, 4, seed=0):
    assert batch['lq'].dtype == np.float32 and (batch['lq'] == np.round(batch['lq'])).all()
    assert (batch['hq'] == CLEAN_COLOUR).all()
    streaks = batch['lq'] - batch['hq']
    for streak in streaks:
      assert (streak == streak[..., :1]).all()  # The same streak on every channel.
      matches = np.flatnonzero((windows == streak[..., 0]).all(axis=(1, 2)))
      assert matches.size, 'not a window of any streak layer'
      chosen.add(int(matches[0]))
  assert len(chosen) > 8  # Layers and windows vary over the examples.


def test_streaks_are_clipped_and_resume_exactly(streak_folder):
  folder, _ = streak_folder
  config = _config('samples', rain_streaks=str(folder), batch_size=3)
  uninterrupted = _take(config, 6, seed=2)
  resumed = _take(config, 3, seed=2, start_step=3)
  for a, b in zip(uninterrupted[3:], resumed):
    for key in ('lq', 'hq', 'image_id'):
      np.testing.assert_array_equal(a[key], b[key])
  lq, hq = uninterrupted[0]['lq'], uninterrupted[0]['hq']
  assert (lq >= hq).all() and lq.max() <= 255 and (lq > hq).any()
  eval_config = _config('samples', val_source='samples:validation', rain_streaks=str(folder))
  eval_batch = pipeline.make_eval_batches(eval_config, patch_size=PATCH, num_examples=2)['derain']
  assert eval_batch['lq'].shape == (2, PATCH, PATCH, 3)


def test_streak_folder_errors(tmp_path, colour_folder):
  def fails(folder, message):
    config = _config(f'folder:{colour_folder}', rain_streaks=str(folder))
    with pytest.raises(ValueError, match=message):
      pipeline.make_train_iterator(config, patch_size=PATCH, seed=0)

  fails(tmp_path / 'missing', 'Rain streak folder .* does not exist or is not a folder')
  fails(tmp_path, r'Rain streak folder .* has no .jpg/.jpeg/.png/.bmp/.webp files')
  Image.fromarray(np.zeros((60, 60), np.uint8)).save(tmp_path / 'big.png')
  Image.fromarray(np.zeros((40, 60), np.uint8)).save(tmp_path / 'small.png')
  fails(tmp_path, r'small.png is 60x40, smaller than the 48x48 training crop')
  (tmp_path / 'small.png').write_bytes(b'not a png')
  fails(tmp_path, r'Cannot read rain streak image .*small.png')


def test_pairs_give_one_window_and_symmetry_on_both_sides(pairs_folder):
  folder, cleans = pairs_folder
  iterator = pipeline.make_train_iterator(_config(f'pairs:{folder}'), patch_size=PATCH,
                                          seed=0)
  assert iterator.source_stats() == sources.SourceStats(files=5, usable=4, unreadable=1)
  windows = np.concatenate([_windows(s, PATCH) for c in cleans.values() for s in _symmetries(c)])
  for batch in itertools.islice(iterator, 4):
    assert batch['lq'].dtype == np.float32 and batch['hq'].dtype == np.uint8
    assert batch['lq'].shape == batch['hq'].shape == (4, PATCH, PATCH, 3)
    # Same window, same flips: the rainy input is the clean target plus the offset everywhere.
    np.testing.assert_array_equal(batch['lq'] - batch['hq'], RAIN_OFFSET)
    for hq in batch['hq']:  # The target is a window of a flipped / rotated clean image.
      assert (windows == hq).all(axis=(1, 2, 3)).any()


def test_pairs_resume_exactly_and_evaluate_on_the_rain100l_layout(tmp_path, pairs_folder):
  folder, cleans = pairs_folder
  config = _config(f'pairs:{folder}', batch_size=3)
  uninterrupted = _take(config, 7, seed=4)
  resumed = _take(config, 2, seed=4, start_step=5)
  for a, b in zip(uninterrupted[5:], resumed):
    for key in ('lq', 'hq', 'image_id'):
      np.testing.assert_array_equal(a[key], b[key])
  # Rain100L: rainy/rain-X.png with norain-X.png one folder up.
  (tmp_path / 'rainy').mkdir()
  for i, clean in cleans.items():
    Image.fromarray(clean).save(tmp_path / f'norain-{i}.png')
    Image.fromarray(clean + RAIN_OFFSET).save(tmp_path / 'rainy' / f'rain-{i}.png')
  config.val_source = f'pairs:{tmp_path}'
  pair = pipeline.make_eval_batches(config, patch_size=PATCH, num_examples=3)['derain']
  np.testing.assert_array_equal(pair['lq'] - pair['hq'], RAIN_OFFSET)


def test_pairs_are_for_deraining_only(pairs_folder, tmp_path):
  folder, _ = pairs_folder
  config = _config(f'pairs:{folder}', tasks=('derain', 'denoise_30'))
  with pytest.raises(ValueError, match=r"only the derain task can use, but the tasks include "
                     r"\['denoise_30'\]"):
    pipeline.make_train_iterator(config, patch_size=PATCH, seed=0)
  with pytest.raises(ValueError, match='only the derain task'):
    pipeline.make_eval_batches(_config('samples', val_source=f'pairs:{folder}',
                                       tasks=('sr_x2',)), patch_size=PATCH,
                               num_examples=1)
  with pytest.raises(ValueError, match='No rain-XXX.png files under'):
    sources.open_source(f'pairs:{tmp_path}', min_size=PATCH)
  with pytest.raises(ValueError, match='Pair folder .* does not exist'):
    sources.open_source(f'pairs:{tmp_path / "missing"}', min_size=PATCH)
