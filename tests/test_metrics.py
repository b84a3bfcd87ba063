"""Tests of quantisation, Y-PSNR and SSIM (the official evaluation protocol)."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
import skimage
from skimage import metrics as skimage_metrics

from ipt_jax import metrics
from ipt_jax import tasks


def _sample(name: str, size: int = 96) -> np.ndarray:
  with Image.open(os.path.join(skimage.data_dir, name)) as image:
    return np.asarray(image.convert('RGB'))[:size, :size + 8]


def test_quantise():
  np.testing.assert_array_equal(metrics.quantise([-4., 0.5, 1.5, 2.49, 255.7]),
                                [0., 0., 2., 2., 255.])
  assert metrics.quantise(np.zeros(3)).dtype == np.float32


def test_rgb_to_y_coefficients():
  np.testing.assert_allclose(metrics.rgb_to_y([[[255., 255., 255.]]]), [[235.]], atol=0.01)
  np.testing.assert_allclose(metrics.rgb_to_y([[[0., 0., 0.]]]), [[16.]])
  np.testing.assert_allclose(metrics.rgb_to_y([[[256., 0., 0.]]]), [[16. + 65.738]])


def test_psnr_known_value_shave_and_batch():
  target = np.zeros((2, 20, 24, 3))
  output = target.copy()
  output[0] += 256 / (65.738 + 129.057 + 25.064)  # Y differs by exactly 1 everywhere.
  output[1, :3] = 255.  # Differs only in the top 3 rows.
  psnr = metrics.psnr_y(output, target)
  assert psnr.shape == (2,)
  np.testing.assert_allclose(psnr[0], 20 * np.log10(255.), rtol=1e-12)
  assert np.isinf(metrics.psnr_y(output[1], target[1], shave=3))
  assert np.isfinite(metrics.psnr_y(output[1], target[1], shave=2))


def test_psnr_errors():
  with pytest.raises(ValueError, match='shapes differ'):
    metrics.psnr_y(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))
  with pytest.raises(ValueError, match='too small for the protocol'):
    metrics.psnr_y(np.zeros((4, 4, 3)), np.zeros((4, 4, 3)), shave=2)
  with pytest.raises(ValueError, match='RGB'):
    metrics.psnr_y(np.zeros((4, 4)), np.zeros((4, 4)))


def test_border_shave():
  assert metrics.border_shave(tasks.get('sr_x3')) == 3
  assert metrics.border_shave(tasks.get('denoise_50')) == 0
  assert metrics.border_shave(tasks.get('derain')) == 0


@pytest.mark.parametrize('name,shave', [('astronaut.png', 0), ('chelsea.png', 4),
                                        ('coffee.png', 2), ('rocket.jpg', 0)])
def test_ssim_matches_skimage(name, shave):
  clean = _sample(name)
  rng = np.random.default_rng(0)
  degraded = metrics.quantise(clean + rng.normal(0, 20, clean.shape))
  ours = metrics.ssim_y(degraded, clean, shave=shave)
  window = (slice(shave, clean.shape[0] - shave), slice(shave, clean.shape[1] - shave))
  reference = skimage_metrics.structural_similarity(
      metrics.rgb_to_y(degraded)[window], metrics.rgb_to_y(clean)[window],
      gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
  assert 0.1 < reference < 0.99
  assert abs(ours - reference) < 1e-4


def test_ssim_identical_and_batched():
  clean = _sample('coffee.png', 48)
  np.testing.assert_allclose(metrics.ssim_y(clean, clean), 1.)
  batch = np.stack([clean, 255 - clean])
  np.testing.assert_allclose(metrics.ssim_y(batch, batch[::-1]),
                             [metrics.ssim_y(clean, 255 - clean)] * 2)


def test_metrics_import_without_tensorflow():
  code = 'import sys, ipt_jax.metrics; assert "tensorflow" not in sys.modules'
  subprocess.run([sys.executable, '-c', code], check=True,
                 cwd=os.path.dirname(os.path.dirname(__file__)))
