"""Image quality metrics with the official IPT evaluation protocol.

Outputs are quantised (clamped to [0, 255], rounded) before measuring. PSNR and
SSIM are computed on the luma channel Y of YCbCr (ITU-R BT.601, the coefficients
of the official release) on the [0, 255] scale, after shaving `shave` pixels off
every border: the scale for super-resolution, none for denoising and deraining.

Everything runs in NumPy float64 (no TensorFlow, no accelerator). Inputs are RGB
images [..., H, W, 3] (NumPy or JAX arrays); leading dimensions are a batch and
the metrics return one value per image.
"""
import numpy as np

from ipt_jax import errors
from ipt_jax import tasks

# Y = (65.738 R + 129.057 G + 25.064 B) / 256 + 16 for RGB on the [0, 255] scale.
_Y_COEFFS = np.array([65.738, 129.057, 25.064]) / 256
_Y_OFFSET = 16.

# SSIM constants of Wang et al. 2004 (and skimage / MATLAB ssim).
_SSIM_SIGMA = 1.5
_SSIM_RADIUS = 5  # An 11 x 11 Gaussian window.
_SSIM_K1, _SSIM_K2 = 0.01, 0.03
_DATA_RANGE = 255.


def quantise(image) -> np.ndarray:
  """Clamps to [0, 255] and rounds (half to even, as torch.round), as float32."""
  return np.round(np.clip(np.asarray(image, np.float32), 0., 255.))


def border_shave(task: tasks.Task) -> int:
  """Pixels shaved off every border before measuring: the scale for SR, none otherwise."""
  return task.scale if task.kind == 'sr' else 0


def rgb_to_y(image) -> np.ndarray:
  """Luma Y in [16, 235] of RGB [..., H, W, 3] on the [0, 255] scale, as float64."""
  image = np.asarray(image, np.float64)
  if image.ndim < 3 or image.shape[-1] != 3:
    raise ValueError(f'Expected RGB images [..., H, W, 3], got shape {image.shape}.')
  return image @ _Y_COEFFS + _Y_OFFSET


def _shaved_y(output, target, shave: int) -> tuple[np.ndarray, np.ndarray]:
  output, target = np.asarray(output), np.asarray(target)
  if output.shape != target.shape:
    raise ValueError(f'Output and target shapes differ: {output.shape} vs {target.shape}.')
  y_out, y_ref = rgb_to_y(output), rgb_to_y(target)
  height, width = y_out.shape[-2:]
  if min(height, width) <= 2 * shave:
    raise errors.InputError(f'an image of {width}x{height} is too small for the protocol, which '
                            f'shaves {shave} pixels off each border.')
  window = (Ellipsis, slice(shave, height - shave), slice(shave, width - shave))
  return y_out[window], y_ref[window]


def psnr_y(output, target, shave: int = 0) -> np.ndarray:
  """PSNR in dB of Y between RGB images on the [0, 255] scale, one value per image.

  Pass quantised outputs (`quantise`) to follow the official protocol. Identical
  images give inf.
  """
  y_out, y_ref = _shaved_y(output, target, shave)
  mse = np.mean((y_out - y_ref)**2, axis=(-2, -1))
  with np.errstate(divide='ignore'):
    return 10 * np.log10(_DATA_RANGE**2 / mse)


def _gaussian_window() -> np.ndarray:
  taps = np.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1)
  window = np.exp(-taps**2 / (2 * _SSIM_SIGMA**2))
  return window / window.sum()


def _filter_valid(image: np.ndarray, window: np.ndarray) -> np.ndarray:
  """Separable 'valid' filtering of the last two axes (no padding, as MATLAB ssim.m)."""
  size = len(window)
  height, width = image.shape[-2:]
  rows = sum(w * image[..., i:height - size + 1 + i, :] for i, w in enumerate(window))
  return sum(w * rows[..., i:width - size + 1 + i] for i, w in enumerate(window))


def ssim_y(output, target, shave: int = 0) -> np.ndarray:
  """Mean SSIM of Y (Gaussian window sigma 1.5, 11 x 11, K1 0.01, K2 0.03, range 255).

  The SSIM map is evaluated where the whole window fits inside the shaved image,
  as MATLAB's ssim.m and `skimage.metrics.structural_similarity(...,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False)` do.
  """
  x, y = _shaved_y(output, target, shave)
  if min(x.shape[-2:]) < 2 * _SSIM_RADIUS + 1:
    raise errors.InputError(f'SSIM needs images of at least {2 * _SSIM_RADIUS + 1} pixels after '
                            f'shaving, got {x.shape[-2:]}.')
  window = _gaussian_window()
  mu_x, mu_y = _filter_valid(x, window), _filter_valid(y, window)
  var_x = _filter_valid(x * x, window) - mu_x**2
  var_y = _filter_valid(y * y, window) - mu_y**2
  cov = _filter_valid(x * y, window) - mu_x * mu_y
  c1, c2 = (_SSIM_K1 * _DATA_RANGE)**2, (_SSIM_K2 * _DATA_RANGE)**2
  ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2) /
              ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)))
  return ssim_map.mean(axis=(-2, -1))
