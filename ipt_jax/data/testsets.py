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
  ``Rain100L/rainy/rain-XXX.png`` with ``Rain100L/norain-XXX.png``), found by
  `sources.find_rain_pairs`, which also pairs the training source ``pairs:<path>``.

Images are 8-bit RGB: grayscale is replicated to three channels and alpha
dropped, as the official loader (``common.set_channel``) does. This module needs
no TensorFlow, so evaluation can run on accelerator machines without it.
"""
from collections.abc import Callable
import dataclasses
import functools
import pathlib
import zlib

import numpy as np
from PIL import Image

from ipt_jax import errors
from ipt_jax import metrics
from ipt_jax import tasks as tasks_lib
from ipt_jax.data import degrade
from ipt_jax.data import sources


# The paper's sets for each kind of task.
DEFAULT_SETS = {'sr': ('Set5', 'Set14', 'B100', 'Urban100'),
                'denoise': ('CBSD68', 'Urban100'),
                'derain': ('Rain100L',)}


@dataclasses.dataclass(frozen=True)
class Pair:
  """One test image: its name, the model input and the ground truth."""
  name: str
  lq: np.ndarray  # [h, w, 3]: uint8 (SR, deraining) or float32 (denoising, not rounded).
  hq: np.ndarray  # [H, W, 3] uint8.


def read_rgb(path: str | pathlib.Path) -> np.ndarray:
  """An image file as 8-bit RGB [H, W, 3] (`sources.pil_to_rgb` conversions)."""
  try:
    with Image.open(path) as image:
      return sources.pil_to_rgb(image)
  # What Pillow raises for missing, damaged, foreign or oversized files, and folders.
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise errors.InputError(f'{path}: not a readable image ({" ".join(str(e).split())}).') from e


@dataclasses.dataclass(frozen=True)
class Entry:
  """One test image of a set, read by `read()`: a bad file spoils only its own entry."""
  name: str
  read: Callable[[], Pair]


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


def sr_entries(root: str | pathlib.Path, set_name: str, scale: int, *,
               generate_lr: bool = False) -> list[Entry]:
  """Super-resolution pairs (uint8 LR, modcropped uint8 HR) of a set in the EDSR layout."""
  return [Entry(path.stem, functools.partial(_sr_pair, pathlib.Path(root) / set_name, path,
                                             scale, generate_lr))
          for path in _hr_files(root, set_name)]


def _sr_pair(folder: pathlib.Path, path: pathlib.Path, scale: int, generate_lr: bool) -> Pair:
  hr = modcrop(read_rgb(path), scale)
  lr_path = folder / 'LR_bicubic' / f'X{scale}' / f'{path.stem}x{scale}.png'
  if lr_path.exists() and not generate_lr:
    lr = read_rgb(lr_path)
    if lr.shape[0] * scale != hr.shape[0] or lr.shape[1] * scale != hr.shape[1]:
      raise errors.InputError(
          f'{lr_path} is {lr.shape[1]}x{lr.shape[0]}, but its HR image cropped to a multiple '
          f'of {scale} is {hr.shape[1]}x{hr.shape[0]}; remove the file or use generate_lr.')
  else:
    lr = metrics.quantise(degrade.imresize_np(hr, 1 / scale)).astype(np.uint8)
  return Pair(path.stem, lr, hr)


def noise_seed(name: str, seed: int = 0) -> list[int]:
  """The NumPy seed of an image's noise: fixed by its name (and `seed`)."""
  return [seed, zlib.crc32(name.encode('utf-8'))]


def denoise_entries(root: str | pathlib.Path, set_name: str, sigma: float, *,
                    seed: int = 0) -> list[Entry]:
  """Denoising pairs (float32 noisy input, uint8 clean image) of `<root>/<Set>/HR/*.png`."""
  return [Entry(path.stem, functools.partial(_denoise_pair, path, sigma, seed))
          for path in _hr_files(root, set_name)]


def _denoise_pair(path: pathlib.Path, sigma: float, seed: int) -> Pair:
  clean = read_rgb(path)
  noise = np.random.default_rng(noise_seed(path.stem, seed)).standard_normal(clean.shape)
  return Pair(path.stem, np.clip(clean + sigma * noise, 0, 255).astype(np.float32), clean)


def derain_entries(root: str | pathlib.Path, set_name: str = 'Rain100L') -> list[Entry]:
  """Deraining pairs (uint8 rainy, uint8 clean) of the Rain100L-style files under `<root>/<Set>`."""
  return [Entry(rainy.stem[len('rain-'):], functools.partial(_derain_pair, rainy, clean))
          for rainy, clean in sources.find_rain_pairs(pathlib.Path(root) / set_name)]


def _derain_pair(rainy_path: pathlib.Path, clean_path: pathlib.Path) -> Pair:
  rainy, clean = read_rgb(rainy_path), read_rgb(clean_path)
  if rainy.shape != clean.shape:
    raise errors.InputError(f'{rainy_path} and {clean_path} differ in size: {rainy.shape} vs '
                            f'{clean.shape}.')
  return Pair(rainy_path.stem[len('rain-'):], rainy, clean)


def entries(root: str | pathlib.Path, set_name: str, task: str | tasks_lib.Task, *,
            generate_lr: bool = False, seed: int = 0) -> list[Entry]:
  """The images of benchmark set `set_name` for `task` (a name such as 'sr_x4' or a Task)."""
  task = tasks_lib.get(task) if isinstance(task, str) else task
  if task.kind == 'sr':
    return sr_entries(root, set_name, task.scale, generate_lr=generate_lr)
  if task.kind == 'denoise':
    return denoise_entries(root, set_name, task.sigma, seed=seed)
  return derain_entries(root, set_name)


def load(root: str | pathlib.Path, set_name: str, task: str | tasks_lib.Task, *,
         generate_lr: bool = False, seed: int = 0) -> list[Pair]:
  """Every pair of the set, read now (`entries` reads them one by one)."""
  return [entry.read() for entry in entries(root, set_name, task, generate_lr=generate_lr,
                                            seed=seed)]
