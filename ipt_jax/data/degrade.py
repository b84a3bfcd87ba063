"""Degradations that turn a clean image into a task's input.

* `imresize`: MATLAB `imresize(x, scale, 'bicubic')`, the resize every SR paper
  (and IPT) uses to make low-resolution inputs and the bicubic baseline.
* `add_noise`: additive white Gaussian noise, clipped to [0, 255].
* `add_rain`: synthetic rain streaks after Yang et al., "Deep joint rain
  detection and removal from a single image", CVPR 2017.
* `add_streaks`: rain from ready-made one-channel streak images (`StreakLayers`, e.g.
  RainTrainL's rainstreak-*.png), as the official MindSpore pre-training.

The degradations are TensorFlow ops for `tf.data` (they also run eagerly) and
take explicit seeds for stateless random ops, so the same seed gives the same
pixels. `resize_matrix` and `imresize_np` are the NumPy side of the same resize
for code that runs without TensorFlow (benchmark evaluation on accelerator
machines); TensorFlow is imported lazily, on first use of a TensorFlow op.

`python -m ipt_jax.data.degrade docs/rain_example.png` regenerates the README's
rain figure (clean | rainy, default rain settings).
"""
from __future__ import annotations

import dataclasses
import math

from absl import app
from absl import logging
from etils import epy
import numpy as np

from ipt_jax import errors


def keep_tensorflow_on_cpu(*unused_args) -> None:
  """Hides GPUs and TPUs from TensorFlow: tf.data needs only the CPU; JAX owns accelerators."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top,redefined-outer-name
  for kind in ('GPU', 'TPU'):
    try:
      tf.config.set_visible_devices([], kind)
    except RuntimeError:  # TensorFlow already initialised its devices.
      if tf.config.get_visible_devices(kind):
        logging.warning('TensorFlow initialised before ipt_jax.data and can see a %s; '
                        'import ipt_jax.data first to keep it off accelerators.', kind)


with epy.lazy_imports(success_callback=keep_tensorflow_on_cpu):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top


# ---------------------------------------------------------------------------
# MATLAB bicubic imresize.
# ---------------------------------------------------------------------------

def _cubic(x: np.ndarray) -> np.ndarray:
  """Keys' cubic convolution kernel with a = -0.5 (MATLAB's `cubic`)."""
  x = np.abs(x)
  return np.where(x <= 1, 1.5 * x**3 - 2.5 * x**2 + 1,
                  np.where(x <= 2, -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2, 0.))


def output_size(in_size: int, scale: float) -> int:
  """MATLAB's output length for a scale factor: ceil(in_size * scale)."""
  return int(math.ceil(in_size * scale))


def resize_matrix(in_size: int, scale: float) -> np.ndarray:
  """The [output_size(in_size, scale), in_size] float64 matrix that resizes one axis.

  Follows MATLAB's `imresize>contributions`: output pixel x (1-based) samples the
  input at u = x / scale + (1 - 1 / scale) / 2; when shrinking, the kernel is
  widened by 1 / scale (antialiasing); weights are normalised to sum to 1, and
  taps falling outside the image are mirrored (symmetric padding, edge pixel
  repeated).
  """
  if scale <= 0:
    raise ValueError(f'imresize: the scale must be positive, got {scale}.')
  kernel, width = _cubic, 4.
  if scale < 1:  # Antialiasing: stretch the kernel over 1 / scale input pixels.
    kernel, width = (lambda x: scale * _cubic(scale * x)), width / scale
  out_size = output_size(in_size, scale)
  u = np.arange(1, out_size + 1, dtype=np.float64) / scale + 0.5 * (1 - 1 / scale)
  left = np.floor(u - width / 2)
  taps = left[:, None] + np.arange(math.ceil(width) + 2)
  weights = kernel(u[:, None] - taps)
  weights /= weights.sum(axis=1, keepdims=True)
  # 1-based tap t reads input (t - 1) mod 2n of [0, 1, ..., n-1, n-1, ..., 0].
  mirror = np.concatenate([np.arange(in_size), np.arange(in_size)[::-1]])
  columns = mirror[np.mod(taps.astype(np.int64) - 1, 2 * in_size)]
  matrix = np.zeros((out_size, in_size))
  np.add.at(matrix, (np.repeat(np.arange(out_size), taps.shape[1]), columns.ravel()),
            weights.ravel())
  return matrix


def _static_hw(shape, what: str) -> tuple[int, int]:
  if len(shape) not in (3, 4):
    raise ValueError(f'{what}: expected an [H, W, C] or [B, H, W, C] image, got shape {shape}.')
  height, width = shape[-3], shape[-2]
  if height is None or width is None:
    raise ValueError(f'{what} needs a static height and width (got {shape}); crop or '
                     'reshape to a known size first.')
  return height, width


def imresize(image, scale: float) -> tf.Tensor:
  """MATLAB `imresize(image, scale, 'bicubic')` as TensorFlow ops.

  Args:
    image: [H, W, C] or [B, H, W, C], uint8 or float on the [0, 255] scale, with a
      static height and width.
    scale: output size / input size, any positive number; the output is
      ceil(H * scale) x ceil(W * scale).

  Returns:
    float32, neither rounded nor clipped (callers round: `to_uint8`).
  """
  image = tf.convert_to_tensor(image)
  height, width = _static_hw(image.shape, 'imresize')
  x = tf.cast(image, tf.float32)
  # MATLAB resizes dimensions in order of increasing scale, rows first on a tie (as here,
  # with one scale for both): rows, then columns.
  rows = tf.constant(resize_matrix(height, scale), tf.float32)
  cols = tf.constant(resize_matrix(width, scale), tf.float32)
  x = tf.einsum('oh,...hwc->...owc', rows, x)
  return tf.einsum('pw,...owc->...opc', cols, x)


def imresize_np(image: np.ndarray, scale: float) -> np.ndarray:
  """`imresize` in NumPy (float64 arithmetic, float32 result), for TensorFlow-free code."""
  image = np.asarray(image)
  height, width = _static_hw(image.shape, 'imresize_np')
  x = np.einsum('oh,...hwc->...owc', resize_matrix(height, scale), image.astype(np.float64),
                optimize=True)
  x = np.einsum('pw,...owc->...opc', resize_matrix(width, scale), x, optimize=True)
  return x.astype(np.float32)


def baseline(lq: np.ndarray, scale: int) -> np.ndarray:
  """What a restoration model is to beat: MATLAB-bicubic up by `scale` for super-resolution,
  the degraded (noisy, rainy) input itself at scale 1."""
  return lq if scale == 1 else imresize_np(lq, scale)


# ---------------------------------------------------------------------------
# Noise and rain.
# ---------------------------------------------------------------------------

def add_noise(image, sigma: float, seed) -> tf.Tensor:
  """clip(image + sigma * N(0, 1), 0, 255) as float32; `seed` is a stateless seed, shape [2]."""
  x = tf.cast(image, tf.float32)
  noise = tf.random.stateless_normal(tf.shape(x), seed, dtype=tf.float32)
  return tf.clip_by_value(x + sigma * noise, 0., 255.)


@dataclasses.dataclass(frozen=True)
class RainConfig:
  """Ranges the rain generator draws each image's streak parameters from (uniformly).

  The defaults give sparse, thin, near-vertical streaks, resembling Rain100L (light
  rain). Lengths and widths are in pixels of the image the rain is added to.
  """
  density: tuple[float, float] = (0.002, 0.006)  # Fraction of pixels that start a streak.
  length: tuple[float, float] = (15., 40.)  # Streak length.
  width: tuple[float, float] = (1., 1.6)  # Streak width.
  angle: tuple[float, float] = (-25., 25.)  # Degrees from vertical; > 0 leans like '\'.
  intensity: tuple[float, float] = (0.5, 0.9)  # Peak brightness added, as a fraction of 255.

  def __post_init__(self):
    for field in dataclasses.fields(self):
      low, high = getattr(self, field.name)
      if not low <= high:
        raise errors.InputError(f'rain.{field.name}: the range must be (low, high) with low <= high, '
                                f'got {(low, high)}.')
    if self.density[0] < 0 or self.density[1] > 1:
      raise errors.InputError(f'rain.density must lie in [0, 1], got {self.density}.')
    if self.length[0] < 1 or self.width[0] <= 0:
      raise errors.InputError(f'rain.length must be >= 1 and rain.width > 0, got {self.length}, '
                              f'{self.width}.')


def _uniform(shape, seed, value_range: tuple[float, float]) -> tf.Tensor:
  low, high = value_range
  return tf.random.stateless_uniform(shape, seed, minval=low, maxval=high)


def _streak_kernels(length, width, angle_degrees, radius: int) -> tf.Tensor:
  """Motion-blur kernels of streaks, [B, 2 * radius + 1, 2 * radius + 1], peak value 1.

  A segment through the centre, `length` long (fading towards its ends like a
  falling drop's trail) and `width` wide (antialiased), `angle_degrees` from
  vertical (positive: the lower end lies to the right).
  """
  offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
  dy, dx = offsets[None, :, None], offsets[None, None, :]
  theta = (angle_degrees * (math.pi / 180.))[:, None, None]
  along = dy * tf.cos(theta) + dx * tf.sin(theta)
  across = dx * tf.cos(theta) - dy * tf.sin(theta)
  half_length, half_width = length[:, None, None] / 2, width[:, None, None] / 2
  fade = tf.cos(tf.minimum(tf.abs(along) / (half_length + 0.5), 1.) * (math.pi / 2))**2
  return fade * tf.clip_by_value(half_width + 0.5 - tf.abs(across), 0., 1.)


def _rain_streaks(batch, height: int, width: int, seed,
                  config: RainConfig = RainConfig()) -> tf.Tensor:
  """Streak layers in [0, 1], [batch, height, width]: sparse random drops, motion-blurred.

  Each image gets its own density, length, width, angle and intensity from
  `config`; drops are seeded on a field padded by the kernel radius so streaks
  enter across the borders as they would in a larger picture.
  """
  radius = int(math.ceil(max(config.length[1], config.width[1]) / 2)) + 1
  seeds = [tf.random.experimental.stateless_fold_in(seed, i) for i in range(7)]
  density = _uniform([batch, 1, 1], seeds[0], config.density)
  field = [batch, height + 2 * radius, width + 2 * radius]
  drops = tf.cast(tf.random.stateless_uniform(field, seeds[1]) < density, tf.float32)
  drops *= tf.random.stateless_uniform(field, seeds[2], minval=0.25, maxval=1.)
  kernels = _streak_kernels(_uniform([batch], seeds[3], config.length),
                            _uniform([batch], seeds[4], config.width),
                            _uniform([batch], seeds[5], config.angle), radius)
  # One depthwise convolution blurs every image with its own kernel: images are channels.
  streaks = tf.nn.depthwise_conv2d(
      tf.transpose(drops, [1, 2, 0])[None],
      tf.transpose(kernels, [1, 2, 0])[..., None],
      strides=[1, 1, 1, 1], padding='VALID')
  intensity = _uniform([batch, 1, 1], seeds[6], config.intensity)
  return tf.clip_by_value(tf.transpose(streaks[0], [2, 0, 1]), 0., 1.) * intensity


def add_rain(image, seed, config: RainConfig = RainConfig()) -> tf.Tensor:
  """Adds white rain streaks: clip(image + 255 * streaks, 0, 255) as float32.

  Args:
    image: [H, W, C] or [B, H, W, C], uint8 or float on the [0, 255] scale, with a
      static height and width.
    seed: stateless seed, shape [2].
    config: the ranges of the streak parameters.
  """
  x = tf.cast(image, tf.float32)
  height, width = _static_hw(x.shape, 'add_rain')
  batched = x.shape.rank == 4
  if not batched:
    x = x[None]
  streaks = _rain_streaks(tf.shape(x)[0], height, width, seed, config)
  x = tf.clip_by_value(x + 255. * streaks[..., None], 0., 255.)
  return x if batched else x[0]


@dataclasses.dataclass(frozen=True, eq=False)
class StreakLayers:
  """One-channel rain streak images of any sizes, stored end to end (each row-major) in one
  array, so that a batch's crops are one gather (`sources.load_streak_layers` reads them)."""
  pixels: np.ndarray  # uint8 [sum of height * width].
  offsets: np.ndarray  # int64 [n]: where each layer starts in `pixels`.
  heights: np.ndarray  # int64 [n].
  widths: np.ndarray  # int64 [n].

  @classmethod
  def stack(cls, layers: list[np.ndarray]) -> StreakLayers:
    """From 2-D uint8 arrays."""
    sizes = np.array([layer.size for layer in layers], np.int64)
    return cls(pixels=np.concatenate([layer.ravel() for layer in layers]),
               offsets=np.cumsum(sizes) - sizes,
               heights=np.array([layer.shape[0] for layer in layers], np.int64),
               widths=np.array([layer.shape[1] for layer in layers], np.int64))


def add_streaks(images, layers: StreakLayers, seed) -> tf.Tensor:
  """clip(image + streak, 0, 255) as float32, the streak a random window of a random layer.

  Args:
    images: [B, H, W, C], uint8 or float on the [0, 255] scale, with a static height and
      width no larger than any layer's.
    layers: the streak images; each image draws one (the same streak on every channel).
    seed: stateless seed, shape [2].
  """
  x = tf.cast(images, tf.float32)
  height, width = _static_hw(x.shape, 'add_streaks')
  if height > layers.heights.min() or width > layers.widths.min():
    raise ValueError(f'add_streaks: {height}x{width} images need streak layers at least that '
                     f'large, got {layers.heights.min()}x{layers.widths.min()}.')
  batch = tf.shape(x, out_type=tf.int64)[:1]
  draw = lambda i: tf.random.stateless_uniform(  # Full-range integers, reduced below.
      batch, tf.random.experimental.stateless_fold_in(seed, i), minval=None, maxval=None,
      dtype=tf.int64)
  layer = draw(0) % len(layers.offsets)
  heights, widths = tf.gather(layers.heights, layer), tf.gather(layers.widths, layer)
  top, left = draw(1) % (heights - height + 1), draw(2) % (widths - width + 1)
  rows = (top[:, None] + tf.range(height, dtype=tf.int64))[:, :, None]
  cols = (left[:, None] + tf.range(width, dtype=tf.int64))[:, None, :]
  index = tf.gather(layers.offsets, layer)[:, None, None] + rows * widths[:, None, None] + cols
  streaks = tf.cast(tf.gather(layers.pixels, index), tf.float32)
  return tf.clip_by_value(x + streaks[..., None], 0., 255.)


def to_uint8(image) -> tf.Tensor:
  """Round and clip to uint8, as images are stored."""
  return tf.cast(tf.round(tf.clip_by_value(image, 0., 255.)), tf.uint8)


def rain_example(image: np.ndarray, seed=(0, 3), config: RainConfig = RainConfig()) -> np.ndarray:
  """`image` (uint8 RGB) and a rainy version of it side by side, 4 white pixels apart."""
  rainy = to_uint8(add_rain(image, list(seed), config)).numpy()
  gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
  return np.concatenate([image, gap, rainy], axis=1)


def main(argv):
  """Writes the README's rain figure: python -m ipt_jax.data.degrade docs/rain_example.png."""
  if len(argv) != 2:
    raise app.UsageError('Usage: python -m ipt_jax.data.degrade OUTPUT.png')
  import skimage  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(f'{skimage.data_dir}/rocket.jpg') as rocket:
    clean = np.asarray(rocket.convert('RGB'))[50:290, 200:520]
  Image.fromarray(rain_example(clean)).save(argv[1], optimize=True)


if __name__ == '__main__':
  app.run(main)
