"""Benchmark test sets, read the way the official IPT evaluation reads them.

* Super-resolution, EDSR layout: ``<root>/<Set>/HR/<name>.png`` and optionally
  ``<root>/<Set>/LR_bicubic/X<s>/<name>x<s>.png``. HR is cropped to a multiple of
  the scale from the top-left (MATLAB ``modcrop``); LR comes from the LR_bicubic
  file when there is one, otherwise (or with ``generate_lr``) from MATLAB-bicubic
  downscaling of HR, rounded to uint8 as a stored file would be.
* Denoising: ``<root>/<Set>/HR/*.png`` (e.g. CBSD68); the input is
  ``clip(HR + sigma * N(0, 1), 0, 255)``, not rounded, with noise drawn from a
  seed fixed per image (its name), so numbers are reproducible.
* Deraining, Rain100L pairs: every ``rain-XXX.png`` under ``<root>/<Set>`` with its
  ``norain-XXX.png`` in the same folder or the one above (the official layout is
  ``Rain100L/rainy/rain-XXX.png`` with ``Rain100L/norain-XXX.png``).

Images are 8-bit RGB: grayscale is replicated to three channels and alpha
dropped, as the official loader (``common.set_channel``) does. This module needs
no TensorFlow, so evaluation can run on accelerator machines without it.
"""
import dataclasses
import pathlib
import zlib

import numpy as np
from PIL import Image

from ipt_jax import errors
from ipt_jax import tasks as tasks_lib
from ipt_jax.data import degrade
from ipt_jax.data import sources


@dataclasses.dataclass(frozen=True)
class Pair:
  """One test image: its name, the model input and the ground truth."""
  name: str
  lq: np.ndarray  # [h, w, 3]: uint8 (SR, deraining) or float32 (denoising, not rounded).
  hq: np.ndarray  # [H, W, 3] uint8.


def read_rgb(path: str | pathlib.Path) -> np.ndarray:
  """An image file as 8-bit RGB [H, W, 3] (`sources.pil_to_rgb` conversions)."""
  with Image.open(path) as image:
    return sources.pil_to_rgb(image)


def modcrop(image: np.ndarray, scale: int) -> np.ndarray:
  """Crops height and width to multiples of `scale`, keeping the top-left corner."""
  height, width = image.shape[:2]
  return image[:height - height % scale, :width - width % scale]


def _hr_files(root: str | pathlib.Path, set_name: str) -> list[pathlib.Path]:
  folder = pathlib.Path(root) / set_name / 'HR'
  files = sorted(folder.glob('*.png'))
  if not files:
    raise errors.InputError(f'No HR images for benchmark set {set_name!r}: expected PNG files in '
                            f'{folder} (EDSR layout <root>/<Set>/HR/*.png). Check data_dir and the set '
                            'name.')
  return files


def load_sr(root: str | pathlib.Path, set_name: str, scale: int, *,
            generate_lr: bool = False) -> list[Pair]:
  """Super-resolution pairs (uint8 LR, modcropped uint8 HR) of a set in the EDSR layout."""
  pairs = []
  for path in _hr_files(root, set_name):
    hr = modcrop(read_rgb(path), scale)
    lr_path = (pathlib.Path(root) / set_name / 'LR_bicubic' / f'X{scale}' /
               f'{path.stem}x{scale}.png')
    if lr_path.exists() and not generate_lr:
      lr = read_rgb(lr_path)
      if lr.shape[0] * scale != hr.shape[0] or lr.shape[1] * scale != hr.shape[1]:
        raise errors.InputError(f'{lr_path} is {lr.shape[1]}x{lr.shape[0]}, but its HR image cropped '
                                f'to a multiple of {scale} is {hr.shape[1]}x{hr.shape[0]}; remove the '
                                'file or use generate_lr.')
    else:
      lr = np.round(np.clip(degrade.imresize_np(hr, 1 / scale), 0, 255)).astype(np.uint8)
    pairs.append(Pair(path.stem, lr, hr))
  return pairs


def noise_seed(name: str, seed: int = 0) -> list[int]:
  """The NumPy seed of an image's noise: fixed by its name (and `seed`)."""
  return [seed, zlib.crc32(name.encode('utf-8'))]


def load_denoise(root: str | pathlib.Path, set_name: str, sigma: float, *,
                 seed: int = 0) -> list[Pair]:
  """Denoising pairs (float32 noisy input, uint8 clean image) of `<root>/<Set>/HR/*.png`."""
  pairs = []
  for path in _hr_files(root, set_name):
    clean = read_rgb(path)
    noise = np.random.default_rng(noise_seed(path.stem, seed)).standard_normal(clean.shape)
    noisy = np.clip(clean + sigma * noise, 0, 255).astype(np.float32)
    pairs.append(Pair(path.stem, noisy, clean))
  return pairs


def load_derain(root: str | pathlib.Path, set_name: str = 'Rain100L') -> list[Pair]:
  """Deraining pairs (uint8 rainy, uint8 clean) of the Rain100L-style files under `<root>/<Set>`."""
  folder = pathlib.Path(root) / set_name
  rainy_files = sorted(folder.rglob('rain-*.png'))
  if not rainy_files:
    raise errors.InputError(f'No rain-XXX.png files under {folder}; expected Rain100L pairs '
                            '(rain-XXX.png with norain-XXX.png).')
  pairs = []
  for rainy_path in rainy_files:
    clean_name = 'no' + rainy_path.name
    candidates = [rainy_path.with_name(clean_name), rainy_path.parent.parent / clean_name]
    clean_path = next((c for c in candidates if c.exists()), None)
    if clean_path is None:
      raise errors.InputError(f'{rainy_path} has no clean counterpart: looked for '
                              f'{" and ".join(map(str, candidates))}.')
    rainy, clean = read_rgb(rainy_path), read_rgb(clean_path)
    if rainy.shape != clean.shape:
      raise errors.InputError(f'{rainy_path} and {clean_path} differ in size: {rainy.shape} vs '
                              f'{clean.shape}.')
    pairs.append(Pair(rainy_path.stem[len('rain-'):], rainy, clean))
  return pairs


def load(root: str | pathlib.Path, set_name: str, task: str | tasks_lib.Task, *,
         generate_lr: bool = False, seed: int = 0) -> list[Pair]:
  """The pairs of benchmark set `set_name` for `task` (a name such as 'sr_x4' or a Task)."""
  task = tasks_lib.get(task) if isinstance(task, str) else task
  if task.kind == 'sr':
    return load_sr(root, set_name, task.scale, generate_lr=generate_lr)
  if task.kind == 'denoise':
    return load_denoise(root, set_name, task.sigma, seed=seed)
  return load_derain(root, set_name)
