"""Restores a user's images with an IPT checkpoint: any size in, PNG out.

  python -m ipt_jax.restore --checkpoint=IPT_sr_x2.pt --checkpoint_tasks=sr_x2 --tasks=sr_x2 \
      --output_dir=restored photo.jpg scan.png logo.webp
  python -m ipt_jax.restore --checkpoint=runs/pretrain --tasks=sr_x2,denoise_30 \
      --tiling=fast --output_dir=restored photo.jpg

Each IMAGE is written, for each task, to `<output_dir>/<stem><suffix>.png` (`--suffix`, one
task only, defaults to `_<task>`), with a line saying its output, sizes and seconds; each task
ends with a count of the images written and failed.
An existing file there is replaced, except that an input of the same run is never overwritten:
such an image, or one whose output name an earlier input already takes (`a.jpg` and `a.png`),
is reported and skipped. What each kind of image becomes:
  * JPEG, PNG, BMP, WebP (anything Pillow decodes); the EXIF orientation is applied.
  * RGB, palette, CMYK -> RGB. Grayscale -> grayscale: the gray is replicated to RGB for the
    model and the output turned back to one channel (ITU-R 601 luma, as Pillow's 'L').
  * Transparency (RGBA, LA, a palette or a colour marked transparent): only the colour goes
    through the model; the alpha channel is kept, resized with Pillow's bicubic filter for SR.
  * 16-bit grayscale PNG: the model sees value / 257 (the 8-bit scale IPT works on, fractions
    kept); written as a 16-bit PNG (output * 257). Pillow decodes 16-bit colour or
    gray + alpha PNGs to 8 bits per channel, so they come out as 8-bit RGB / RGBA.
  * Any size: images under the 48 px patch are reflect-padded by `inference`; large ones are
    tiled batch by batch (memory: the output plus one tile batch).
A missing, unreadable or non-image file is reported by name on one line and the others are
still restored; the exit status is then 1. Outputs are written to a temporary name and renamed,
so no half-written PNG is left behind. `--tiling=fast` (blended tiles) runs several times fewer
tiles than the default 'official' (the official forward_chop), with slightly different output.
"""
from collections.abc import Sequence
import dataclasses
import os
import pathlib
import sys
import time

from absl import flags
from absl import logging
import jax
import numpy as np
from PIL import Image
from PIL import ImageOps
import tqdm

from ipt_jax import cli
from ipt_jax import errors
from ipt_jax import files
from ipt_jax import inference
from ipt_jax import metrics
from ipt_jax import parallel
from ipt_jax import weights

CHECKPOINT = cli.checkpoint_flags()
TASKS = cli.tasks_flag()
INFERENCE = cli.inference_flags()
OUTPUT_DIR = cli.output_dir_flag()
SUFFIX = flags.DEFINE_string('suffix', None, 'Appended to each output name (default: _<task>).')

_SIXTEEN_BIT_GRAY = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I')
_GRAY = ('1', 'L', 'LA', 'La', 'F')
# Converted to RGB for the model, so an ICC profile of theirs would not describe the output.
_OTHER_COLOUR_SPACES = ('CMYK', 'YCbCr', 'LAB', 'HSV')
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as Pillow's RGB -> 'L'.
# Failures that concern one file: reported, and the other files still restored.
# (OSError: the output could not be written.)
_FILE_ERRORS = (errors.InputError, OSError, MemoryError, Image.DecompressionBombError)


def _check_range(image: Image.Image):
  """Refuses pixel values that have no known place on IPT's 8-bit scale."""
  if image.mode == 'F':
    raise errors.InputError('a floating-point image: its value range is unknown; save it with '
                            '8 or 16 bits per channel')
  if image.mode == 'I':
    low, high = image.getextrema()
    if low < 0 or high > 65535:
      raise errors.InputError(f'a 32-bit image with values {low}..{high}, outside the 16-bit '
                              'range it is read on; save it with 8 or 16 bits per channel')


@dataclasses.dataclass(frozen=True)
class Picture:
  """A decoded image: what the model restores, and what is put back around its output."""
  rgb: np.ndarray  # [H, W, 3] float32 in [0, 255]; grayscale replicated.
  alpha: np.ndarray | None  # [H, W] uint8, or None when the image has no transparency.
  gray: bool  # Written back with one channel.
  bits: int  # 8 or 16 bits per channel written back.
  icc_profile: bytes | None


def read_picture(path) -> Picture:
  """The image at `path`, or an InputError saying why it cannot be read."""
  try:
    with Image.open(path) as image:
      if getattr(image, 'n_frames', 1) > 1:
        logging.warning('%s has %d frames (animated or multi-page): restoring the first.', path,
                        image.n_frames)
      image = ImageOps.exif_transpose(image)  # Decodes it all, so damage shows here.
  except FileNotFoundError as e:
    raise errors.InputError('no such file') from e
  except IsADirectoryError as e:
    raise errors.InputError('a directory, not an image') from e
  except Image.UnidentifiedImageError as e:
    raise errors.InputError('not an image Pillow can read (JPEG, PNG, BMP and WebP are supported)') from e
  except (OSError, SyntaxError) as e:  # Pillow reports damaged data with either.
    raise errors.InputError(f'damaged or unreadable image data ({" ".join(str(e).split())})') from e
  return _split_channels(image)


def _split_channels(image: Image.Image) -> Picture:
  _check_range(image)
  has_alpha = 'A' in image.getbands() or 'transparency' in image.info
  icc = None if image.mode in _OTHER_COLOUR_SPACES else image.info.get('icc_profile')
  if image.mode in _SIXTEEN_BIT_GRAY:
    gray = np.clip(np.asarray(image, np.float32) / 257, 0, 255)
    return Picture(np.repeat(gray[..., None], 3, axis=-1), None, True, 16, icc)
  if image.mode in _GRAY:
    gray_alpha = np.asarray(image.convert('LA'))
    rgb = np.repeat(gray_alpha[..., :1], 3, axis=-1).astype(np.float32)
    return Picture(rgb, gray_alpha[..., 1] if has_alpha else None, True, 8, icc)
  rgba = np.asarray(image.convert('RGBA'))
  return Picture(rgba[..., :3].astype(np.float32), rgba[..., 3] if has_alpha else None, False, 8,
                 icc)


def restore_picture(picture: Picture, image_model: inference.ImageModel) -> Image.Image:
  """The restored image, quantised to the picture's bit depth, channels and alpha."""
  output = image_model(picture.rgb)
  np.clip(output, 0, 255, out=output)  # In place: the output may be large.
  if picture.gray:
    output = output @ _LUMA
  if picture.bits == 16:
    pixels = np.round(output * (65535 / 255)).astype(np.uint16)
  else:
    pixels = metrics.quantise(output).astype(np.uint8)
  image = Image.fromarray(pixels)
  if picture.alpha is not None:
    alpha = Image.fromarray(picture.alpha)
    if image_model.scale != 1:
      alpha = alpha.resize(image.size, Image.Resampling.BICUBIC)
    image.putalpha(alpha)
  if picture.icc_profile:
    image.info['icc_profile'] = picture.icc_profile
  return image


def output_path(image_path, output_dir, suffix: str) -> pathlib.Path:
  return pathlib.Path(output_dir) / f'{pathlib.Path(image_path).stem}{suffix}.png'


def restore_files(image_paths: Sequence[str], image_model: inference.ImageModel, output_dir,
                  suffix: str) -> list[str]:
  """Restores each image into `output_dir`; returns the paths that failed (each reported).

  Says for each image its output, sizes and seconds (the first also compiles the model, a later
  one any tile call size that it is the first to need), and at the end how many were written.
  """
  output_dir = files.prepare_output_dir(output_dir)
  inputs = {os.path.realpath(p) for p in image_paths}
  taken = set()
  failed = []
  for path in tqdm.tqdm(image_paths, unit='image', disable=None):
    target = output_path(path, output_dir, suffix)
    start = time.perf_counter()
    try:
      resolved = os.path.realpath(target)
      if resolved in inputs:
        raise errors.InputError(f'its output {target} would overwrite an input; choose another '
                                '--output_dir or --suffix')
      if resolved in taken:
        raise errors.InputError(f'its output {target} is the output of an earlier image with the '
                                'same name; restore them into separate folders')
      picture = read_picture(path)
      restored = restore_picture(picture, image_model)
      files.write_png(target, restored)
      taken.add(resolved)  # Only a written output: a failed image leaves its name free.
    except _FILE_ERRORS as e:
      failed.append(path)
      tqdm.tqdm.write(f'error: {path}: {" ".join(str(e).split())}', file=sys.stderr)
    else:
      height, width = picture.rgb.shape[:2]
      tqdm.tqdm.write(f'{path} -> {target}: {width}x{height} -> {restored.width}x'
                      f'{restored.height}, {time.perf_counter() - start:.2f} s')
  tqdm.tqdm.write(f'Wrote {len(image_paths) - len(failed)} of {len(image_paths)} images into '
                  f'{output_dir}' + (f'; {len(failed)} failed (see above).' if failed else '.'))
  return failed


def main(argv):
  parallel.initialize('off', INFERENCE.cpu_devices.value)  # Before JAX starts.
  unique = {}  # Each image once, in the order given.
  for path in argv[1:]:
    unique.setdefault(os.path.realpath(path), path)
  image_paths = list(unique.values())
  if not image_paths:
    raise errors.FlagError('no images given: python -m ipt_jax.restore --checkpoint=... '
                           '--tasks=... --output_dir=DIR IMAGE...')
  if SUFFIX.value is not None and len(TASKS.value) > 1:
    raise errors.FlagError(f'--suffix names the outputs of one task; with --tasks='
                           f'{",".join(TASKS.value)} each output is named <stem>_<task>.png.')
  files.prepare_output_dir(OUTPUT_DIR.value)  # Before the weights are loaded.
  model, params = weights.load(CHECKPOINT.checkpoint.value, **CHECKPOINT.load_args(),
                               dtype=INFERENCE.dtype.value)
  logging.info('Loaded %s; each batch of tiles runs on %d device(s).',
               CHECKPOINT.checkpoint.value, jax.local_device_count())
  failed = set()
  for task in TASKS.value:
    image_model = inference.image_model(model, params, task, **INFERENCE.image_model_args())
    suffix = f'_{task}' if SUFFIX.value is None else SUFFIX.value
    failed.update(restore_files(image_paths, image_model, OUTPUT_DIR.value, suffix))
  if failed:
    raise errors.InputError(f'{len(failed)} of {len(image_paths)} images could not be restored '
                            f'(see above): {", ".join(sorted(failed))}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['checkpoint', 'tasks', 'output_dir'])
  cli.run(main)
