"""Tests of the benchmark loaders, including the bicubic baseline of Set5 and Set14."""
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from tests.conftest import shared_path
from ipt_jax import metrics
from ipt_jax.data import testsets
from ipt_jax.data import degrade

# Bicubic-baseline Y-PSNR (shave = scale) of the shared sets, LR made from HR
# (../shared/data/README.md).
BICUBIC_PSNR = {
    'Set5': {2: 33.68, 3: 30.41, 4: 28.43},
    'Set14': {2: 30.33, 3: 27.63, 4: 26.09},
}


def _bicubic_psnr(pairs, scale: int) -> float:
  return float(np.mean([
      metrics.psnr_y(metrics.quantise(degrade.imresize_np(pair.lq, scale)), pair.hq, scale)
      for pair in pairs]))


@pytest.mark.slow
@pytest.mark.parametrize('set_name', sorted(BICUBIC_PSNR))
def test_bicubic_baseline_matches_reference(set_name):
  root = shared_path('data', 'benchmark')
  for scale, expected in BICUBIC_PSNR[set_name].items():
    generated = testsets.load(root, set_name, f'sr_x{scale}', generate_lr=True)
    assert abs(_bicubic_psnr(generated, scale) - expected) <= 0.01, (set_name, scale)
    from_files = testsets.load(root, set_name, f'sr_x{scale}')
    assert abs(_bicubic_psnr(from_files, scale) - expected) <= 0.01, (set_name, scale)


def test_sr_pairs_are_modcropped_rgb():
  root = shared_path('data', 'benchmark')
  pairs = testsets.load(root, 'Set14', 'sr_x3')
  assert len(pairs) == 14
  for pair in pairs:
    assert pair.hq.dtype == pair.lq.dtype == np.uint8
    assert pair.hq.shape[2] == pair.lq.shape[2] == 3
    assert pair.hq.shape[0] == 3 * pair.lq.shape[0] and pair.hq.shape[1] == 3 * pair.lq.shape[1]
  gray = next(p for p in pairs if p.name == 'img_003')  # Stored with one channel.
  np.testing.assert_array_equal(gray.hq[..., 0], gray.hq[..., 2])


def test_generated_lr_is_matlab_bicubic_of_hr():
  root = shared_path('data', 'benchmark')
  pair = testsets.load(root, 'Set5', 'sr_x4', generate_lr=True)[0]
  tf_lr = degrade.to_uint8(degrade.imresize(pair.hq, 1 / 4)).numpy()
  assert np.abs(tf_lr.astype(int) - pair.lq).max() <= 1  # float32 vs float64 rounding.
  from_file = testsets.load(root, 'Set5', 'sr_x4')[0]
  assert np.abs(from_file.lq.astype(int) - pair.lq).mean() < 1.


@pytest.mark.slow
def test_denoise_inputs_are_seeded_and_not_rounded():
  root = shared_path('data', 'benchmark')
  pairs = testsets.load(root, 'CBSD68', 'denoise_30')
  assert len(pairs) == 68
  again = testsets.load(root, 'CBSD68', 'denoise_30')
  for pair, repeat in zip(pairs[:3], again[:3]):
    assert pair.lq.dtype == np.float32 and pair.hq.dtype == np.uint8
    np.testing.assert_array_equal(pair.lq, repeat.lq)
    assert (pair.lq != np.round(pair.lq)).mean() > 0.5  # Only clipped values are whole.
    assert pair.lq.min() >= 0 and pair.lq.max() <= 255
    noise = np.random.default_rng(testsets.noise_seed(pair.name)).standard_normal(
        pair.hq.shape)
    np.testing.assert_array_equal(pair.lq, np.clip(pair.hq + 30. * noise, 0, 255)
                                  .astype(np.float32))
    assert abs(noise.std() - 1) < 0.01
  other_seed = testsets.load(root, 'CBSD68', 'denoise_30', seed=1)[0]
  assert not np.array_equal(other_seed.lq, pairs[0].lq)


def _write_png(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)


def test_rain100l_pairs(tmp_path):
  rng = np.random.default_rng(0)
  images = {i: rng.integers(0, 256, (12, 10, 3), dtype=np.uint8) for i in range(3)}
  for i, image in images.items():  # The official layout: rainy/rain-X.png, norain-X.png.
    _write_png(tmp_path / 'Rain100L' / 'rainy' / f'rain-{i:03d}.png', image)
    _write_png(tmp_path / 'Rain100L' / f'norain-{i:03d}.png', 255 - image)
  pairs = testsets.load(tmp_path, 'Rain100L', 'derain')
  assert [p.name for p in pairs] == ['000', '001', '002']
  for pair, image in zip(pairs, images.values()):
    np.testing.assert_array_equal(pair.lq, image)
    np.testing.assert_array_equal(pair.hq, 255 - image)
  (tmp_path / 'Rain100L' / 'norain-001.png').unlink()
  with pytest.raises(ValueError, match='rain-001.png has no clean counterpart'):
    testsets.load(tmp_path, 'Rain100L', 'derain')


def test_missing_sets_have_clear_errors(tmp_path):
  with pytest.raises(ValueError, match='No HR images for benchmark set .Set5.'):
    testsets.load(tmp_path, 'Set5', 'sr_x2')
  with pytest.raises(ValueError, match='No rain-XXX.png files'):
    testsets.load(tmp_path, 'Rain100L', 'derain')


def test_benchmarks_import_without_tensorflow():
  code = ('import sys, numpy as np, ipt_jax.data.testsets as b; '
          'b.degrade.imresize_np(np.zeros((6, 6, 3)), 0.5); '
          'assert "tensorflow" not in sys.modules')
  subprocess.run([sys.executable, '-c', code], check=True,
                 cwd=os.path.dirname(os.path.dirname(__file__)))
