"""Tests of the degradations: MATLAB bicubic resize, Gaussian noise, rain streaks (synthetic and
from streak images)."""
import math

import numpy as np
import pytest
from scipy import ndimage
import tensorflow as tf

from ipt_jax.data import degrade

SCALES = (1 / 2, 1 / 3, 1 / 4, 0.37, 1.5, 2, 3, 4)


def _cubic(x: float) -> float:
  x = abs(x)
  if x <= 1:
    return 1.5 * x**3 - 2.5 * x**2 + 1
  if x <= 2:
    return -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2
  return 0.


def _reference_resize_axis(values: np.ndarray, scale: float) -> np.ndarray:
  """MATLAB's bicubic resize of axis 0, written independently: a loop per output sample.

  Output sample i (0-based) is centred at input coordinate (i + 0.5) / scale - 0.5;
  when shrinking the kernel is stretched by 1 / scale; samples outside the image
  are mirrored with the edge repeated (-1 -> 0, n -> n - 1).
  """
  n = len(values)
  stretch = min(scale, 1.)
  reach = 2 / stretch
  out = []
  for i in range(math.ceil(n * scale)):
    centre = (i + 0.5) / scale - 0.5
    total, weight_sum = 0., 0.
    for j in range(math.floor(centre - reach) - 1, math.ceil(centre + reach) + 2):
      weight = stretch * _cubic((centre - j) * stretch)
      source = -j - 1 if j < 0 else (2 * n - 1 - j if j >= n else j)
      total += weight * values[source]
      weight_sum += weight
    out.append(total / weight_sum)
  return np.stack(out)


def _reference_imresize(image: np.ndarray, scale: float) -> np.ndarray:
  rows = _reference_resize_axis(image.astype(np.float64), scale)
  return np.swapaxes(_reference_resize_axis(np.swapaxes(rows, 0, 1), scale), 0, 1)


@pytest.fixture(scope='module')
def random_image() -> np.ndarray:
  return np.random.default_rng(0).integers(0, 256, (23, 17, 3), dtype=np.uint8)


@pytest.mark.parametrize('scale', SCALES)
def test_imresize_matches_independent_implementation(random_image, scale):
  expected = _reference_imresize(random_image, scale)
  np.testing.assert_allclose(degrade.imresize_np(random_image, scale), expected, atol=1e-4)
  np.testing.assert_allclose(degrade.imresize(random_image, scale).numpy(), expected, atol=2e-3)


@pytest.mark.parametrize('scale', SCALES)
def test_imresize_properties(random_image, scale):
  height, width = random_image.shape[:2]
  resized = degrade.imresize(random_image, scale)
  assert resized.dtype == tf.float32
  assert resized.shape == (math.ceil(height * scale), math.ceil(width * scale), 3)
  matrix = degrade.resize_matrix(height, scale)
  np.testing.assert_allclose(matrix.sum(axis=1), 1., atol=1e-12)
  constant = np.full((height, width, 3), 77, np.uint8)
  np.testing.assert_allclose(degrade.imresize(constant, scale).numpy(), 77., atol=1e-3)


def test_imresize_identity_and_batches(random_image):
  np.testing.assert_allclose(degrade.imresize(random_image, 1).numpy(), random_image, atol=1e-5)
  batch = np.stack([random_image, 255 - random_image])
  batched = degrade.imresize(batch, 1 / 3).numpy()
  np.testing.assert_allclose(batched[1], degrade.imresize(255 - random_image, 1 / 3).numpy(),
                             atol=1e-4)
  # Not clipped: cubic overshoot on a hard edge goes outside [0, 255].
  edge = np.zeros((8, 8, 1), np.uint8)
  edge[:, 4:] = 255
  upscaled = degrade.imresize(edge, 2).numpy()
  assert upscaled.min() < 0 and upscaled.max() > 255


def test_imresize_errors():
  with pytest.raises(ValueError, match='scale must be positive'):
    degrade.resize_matrix(10, 0)
  dynamic = tf.function(lambda x: degrade.imresize(x, 0.5),
                        input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])
  with pytest.raises(ValueError, match='static height and width'):
    dynamic.get_concrete_function()


@pytest.mark.parametrize('sigma', [10., 30.])
def test_noise_sigma_on_flat_grey(sigma):
  grey = np.full((256, 256, 3), 128, np.uint8)
  noisy = degrade.add_noise(grey, sigma, [3, 4]).numpy()
  assert noisy.dtype == np.float32
  assert abs(noisy.std() - sigma) < 0.02 * sigma
  assert abs(noisy.mean() - 128) < 0.5
  np.testing.assert_array_equal(noisy, degrade.add_noise(grey, sigma, [3, 4]).numpy())
  assert not np.array_equal(noisy, degrade.add_noise(grey, sigma, [3, 5]).numpy())


def test_noise_is_clipped():
  black = np.zeros((64, 64, 3), np.uint8)
  noisy = degrade.add_noise(black, 50., [0, 1]).numpy()
  assert noisy.min() == 0 and noisy.max() <= 255 and (noisy > 0).mean() > 0.4


def _streaks(angle: float, density: float, seed=(0, 7)) -> np.ndarray:
  """The rain added to a black image (the streak layer), [B, H, W]."""
  config = degrade.RainConfig(density=(density, density), length=(30., 30.), width=(1., 1.),
                              angle=(angle, angle), intensity=(1., 1.))
  black = np.zeros((4, 160, 160, 3), np.uint8)
  rainy = degrade.add_rain(black, list(seed), config).numpy()
  np.testing.assert_array_equal(rainy[..., 0], rainy[..., 2])  # White streaks.
  return rainy[..., 0]


def _streak_angle(streaks: np.ndarray) -> float:
  """Median direction of the separate streaks, degrees from vertical (> 0: like '\\').

  Each streak's direction is the principal axis of its brightness-weighted pixel
  coordinates.
  """
  angles = []
  for image in streaks:
    labels, _ = ndimage.label(image > 5)
    for label, window in enumerate(ndimage.find_objects(labels), start=1):
      weights = np.where(labels[window] == label, image[window], 0.).astype(np.float64)
      if (weights > 0).sum() < 10:
        continue
      rows, cols = np.mgrid[window]
      rows = rows - (weights * rows).sum() / weights.sum()
      cols = cols - (weights * cols).sum() / weights.sum()
      angles.append(0.5 * math.degrees(math.atan2(2 * (weights * rows * cols).sum(),
                                                   (weights * (rows**2 - cols**2)).sum())))
  assert len(angles) > 50
  return float(np.median(angles))


@pytest.mark.parametrize('angle', [-30., -10., 0., 15., 30.])
def test_rain_streaks_follow_the_angle(angle):
  assert abs(_streak_angle(_streaks(angle, 0.002)) - angle) < 1.


def test_rain_density_controls_coverage():
  coverage = [(_streaks(0., density) > 10).mean() for density in (0.001, 0.002, 0.008)]
  assert 0 < coverage[0] < coverage[1] < coverage[2] < 0.9
  assert 1.5 < coverage[1] / coverage[0] < 2.5  # Sparse streaks rarely overlap.


def test_rain_defaults_deterministic_and_shapes():
  image = np.random.default_rng(1).integers(0, 200, (48, 48, 3), dtype=np.uint8)
  rainy = degrade.add_rain(image, [5, 6])
  assert rainy.shape == (48, 48, 3) and rainy.dtype == tf.float32
  rainy = rainy.numpy()
  np.testing.assert_array_equal(rainy, degrade.add_rain(image, [5, 6]).numpy())
  assert (rainy >= image).all() and rainy.max() <= 255
  assert 0.01 < (rainy > image + 10).mean() < 0.5


def test_rain_config_is_validated():
  with pytest.raises(ValueError, match='low <= high'):
    degrade.RainConfig(angle=(10., -10.))
  with pytest.raises(ValueError, match='density'):
    degrade.RainConfig(density=(0.5, 2.))


def test_streak_layers_are_added_cropped_and_clipped():
  # Layer 0 is a distinct ramp, layer 1 all 255: every window tells where it came from.
  ramp = np.arange(6 * 7, dtype=np.uint8).reshape(6, 7)
  layers = degrade.StreakLayers.stack([ramp, np.full((5, 9), 255, np.uint8)])
  assert layers.offsets.tolist() == [0, 42] and layers.pixels.shape == (42 + 45,)
  images = np.full((16, 4, 4, 3), 100, np.uint8)
  rainy = degrade.add_streaks(images, layers, [3, 4])
  assert rainy.shape == (16, 4, 4, 3) and rainy.dtype == tf.float32
  rainy = rainy.numpy()
  np.testing.assert_array_equal(rainy, degrade.add_streaks(images, layers, [3, 4]).numpy())
  assert not np.array_equal(rainy, degrade.add_streaks(images, layers, [3, 5]).numpy())
  windows = {(t, l): ramp[t:t + 4, l:l + 4] for t in range(3) for l in range(4)}
  seen = set()
  for example in rainy:
    streak = example[..., 0] - 100
    assert (example == example[..., :1]).all()  # One streak on all channels.
    if (example == 255).all():  # The 255 layer, clipped.
      seen.add('clipped')
      continue
    [where] = [w for w, window in windows.items() if np.array_equal(streak, window)]
    seen.add(where)
  assert 'clipped' in seen and len(seen) > 4
  with pytest.raises(ValueError, match='need streak layers at least that large'):
    degrade.add_streaks(np.zeros((1, 6, 6, 3)), layers, [0, 0])


def test_to_uint8_rounds_and_clips():
  values = tf.constant([-3., 0.4, 0.5, 1.5, 254.6, 300.])
  np.testing.assert_array_equal(degrade.to_uint8(values).numpy(), [0, 0, 0, 2, 255, 255])


def test_rain_example_figure():
  clean = np.full((20, 30, 3), 90, np.uint8)
  figure = degrade.rain_example(clean)
  assert figure.shape == (20, 64, 3) and figure.dtype == np.uint8
  np.testing.assert_array_equal(figure[:, :30], clean)
  assert (figure[:, 34:] >= clean).all()
