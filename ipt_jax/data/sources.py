"""Where clean training images come from, chosen by a source string.

* ``tfds:<name>[:<split>]``: a TensorFlow Datasets dataset (default split
  ``train``), e.g. ``tfds:imagenet2012`` or ``tfds:div2k/bicubic_x2`` with
  ``image_key='hr'``; ``data_dir`` may be a gs:// path.
* ``folder:<path>``: every .jpg, .jpeg, .png, .bmp and .webp file under
  ``<path>`` (recursive, any case). Grayscale, RGBA, palette and 16-bit images are
  converted to 8-bit RGB; unreadable files are skipped with a warning and counted.
* ``samples[:<split>]``: colour photos bundled with scikit-image (no download).
  ``samples`` / ``samples:train`` has seven of them; ``samples:validation`` holds
  out two whole other images (chelsea, rocket) for evaluating quick-start runs.
* ``pairs:<path>``: real rainy / clean pairs for the derain task, every
  ``rain-XXX.png`` under ``<path>`` with its ``norain-XXX.png`` (`find_rain_pairs`:
  the RainTrainL and Rain100L layouts). A record is the rainy image; it also holds
  the clean one (`clean`, `clean_format`), of the same size.

Every source gives one host a disjoint, even share of its images (the sorted file
list, or `tfds.even_splits`) and reads that share in epochs: `ImageSource.records`
yields an epoch in an order given by a seed, from any position, so that an input
pipeline can resume mid-epoch. Images smaller than `min_size` in either dimension
are skipped: a folder's when it is indexed (each file's header is read and its
data checked once, in parallel, when the source is opened), a TFDS dataset's
while reading (from the encoded header, before decoding).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
import pathlib
import struct
from typing import Callable

from absl import logging
from etils import epy
import numpy as np
from PIL import Image
import skimage

from ipt_jax import errors
from ipt_jax.data import degrade

with epy.lazy_imports(success_callback=degrade.keep_tensorflow_on_cpu):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

FOLDER_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')

# How a record's bytes are decoded: TensorFlow's JPEG decoder (which can decode
# just a crop), TensorFlow's PNG decoder, or Pillow for anything else.
JPEG, PNG, PILLOW = 0, 1, 2

# What Pillow raises for missing, truncated, damaged, foreign or oversized files.
_PILLOW_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)

SAMPLE_SPLITS = {
    'train': ('astronaut.png', 'coffee.png', 'hubble_deep_field.jpg', 'ihc.png',
              'motorcycle_left.png', 'motorcycle_right.png', 'retina.jpg'),
    'validation': ('chelsea.png', 'rocket.jpg'),
}

_SOURCE_HELP = ("Valid sources: 'tfds:<name>[:<split>]' (e.g. 'tfds:imagenet2012'), "
                "'folder:<path>', 'samples[:train|validation]', or 'pairs:<path>' (deraining).")
_IMAGENET_HELP = (
    'ImageNet needs a manual download: get ILSVRC2012_img_train.tar and '
    'ILSVRC2012_img_val.tar from https://image-net.org (after accepting its terms) into one '
    'folder, then prepare the dataset once with\n'
    '  tfds build imagenet2012 --manual_dir=<that folder> --data_dir={data_dir}\n'
    'and pass the same data_dir (a local path or gs://bucket/path) in the data config.')
_TFDS_HELP = ('Prepare it once with\n  tfds build {name} --data_dir={data_dir}\n'
              '(see its catalog page for datasets that need a manual download), and pass the '
              'same data_dir in the data config.')


@dataclasses.dataclass(frozen=True)
class SourceStats:
  """What a host found in its share of a source.

  For folders all counts are final when the source is opened. For TFDS datasets
  `too_small` grows while reading (each time a small image is read) and
  `unreadable` stays 0 (TFDS validated the images when the dataset was built).
  """
  files: int  # Images (files or records) in this host's share.
  usable: int  # Folders: images that pass the checks. TFDS: records per epoch.
  unreadable: int = 0
  too_small: int = 0


@dataclasses.dataclass(frozen=True)
class ImageSource:
  """One host's share of a source, read in epochs of `epoch_size` images.

  `records(order_seed, start)` is one epoch from position `start`: a dataset of
  dicts with `encoded` (the file's bytes), `format` (JPEG, PNG or PILLOW),
  `height` and `width` (int32); a pair source's `encoded` is the rainy image and
  `clean`, `clean_format` the clean one. The order is a function of `order_seed` (a
  stateless seed, shape [2]) only. An epoch lists `epoch_size` images: every
  usable image once for folders; for TFDS datasets the usable images once and
  then, in place of the skipped small ones, the epoch's first usable images
  again, so that every epoch has the same length.
  """
  epoch_size: int
  records: Callable[[tf.Tensor, int | tf.Tensor], tf.data.Dataset]
  stats: Callable[[], SourceStats]


def without_autograph(fn):
  """`fn` for tf.data as written, not converted by autograph: the pipeline's functions have no
  Python control flow on tensors, and converting them costs about a second per pipeline."""
  return tf.autograph.experimental.do_not_convert(fn)


def open_source(spec: str, *, min_size: int, data_dir: str | None = None,
                image_key: str = 'image', shuffle_buffer: int = 1000,
                process_index: int = 0, process_count: int = 1) -> ImageSource:
  """Opens `spec` (see the module docstring) for host `process_index` of `process_count`.

  Args:
    spec: the source string.
    min_size: images with a smaller height or width are skipped.
    data_dir: TFDS data directory (None: TFDS's default, ~/tensorflow_datasets).
    image_key: the TFDS image feature to read.
    shuffle_buffer: TFDS records shuffled per epoch in a buffer of this size (a
      folder's epoch is a full permutation).
    process_index: this host.
    process_count: the number of hosts.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index must be in [0, {process_count}), got {process_index}.')
  kind, _, rest = str(spec).partition(':')
  if kind == 'tfds' and rest:
    name, _, split = rest.partition(':')
    return _tfds_source(name, split or 'train', data_dir=data_dir, image_key=image_key,
                        min_size=min_size, shuffle_buffer=shuffle_buffer,
                        process_index=process_index, process_count=process_count)
  if kind == 'folder' and rest:
    files = image_files(rest, f'Image folder (source {spec!r})')
    return _files_source(spec, [(f,) for f in files], min_size, process_index, process_count)
  if kind == 'pairs' and rest:
    pairs = find_rain_pairs(_existing_folder(rest, f'Pair folder (source {spec!r})'))
    return _files_source(spec, pairs, min_size, process_index, process_count)
  if kind == 'samples' and rest in ('', *SAMPLE_SPLITS):
    sample_dir = pathlib.Path(skimage.data_dir)
    files = [sample_dir / name for name in SAMPLE_SPLITS[rest or 'train']]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
      raise errors.InputError(f'scikit-image sample images are missing: {missing}; reinstall '
                              'scikit-image (pip install --force-reinstall scikit-image).')
    return _files_source(spec, [(f,) for f in files], min_size, process_index, process_count)
  raise errors.InputError(f'Unknown image source {spec!r}. {_SOURCE_HELP}')


def gives_pairs(spec: str) -> bool:
  """Whether source `spec` gives rainy / clean pairs (only the derain task can use them)."""
  return str(spec).partition(':')[0] == 'pairs'


# ---------------------------------------------------------------------------
# Image folders (and the bundled samples), rain pairs, rain streak layers.
# ---------------------------------------------------------------------------

def _existing_folder(path: str | pathlib.Path, what: str) -> pathlib.Path:
  root = pathlib.Path(path).expanduser()
  if not root.is_dir():
    raise errors.InputError(f'{what} {str(root)!r} does not exist or is not a folder; check the '
                            'path.')
  return root


def image_files(path: str | pathlib.Path, what: str) -> list[pathlib.Path]:
  """The sorted image files (FOLDER_EXTENSIONS, any case) under folder `path`, recursively."""
  root = _existing_folder(path, what)
  files = sorted(p for p in root.rglob('*')
                 if p.suffix.lower() in FOLDER_EXTENSIONS and p.is_file())
  if not files:
    raise errors.InputError(f'{what} {str(root)!r} has no {"/".join(FOLDER_EXTENSIONS)} files '
                            '(searched recursively); point it at a folder of images.')
  return files


def find_rain_pairs(folder: str | pathlib.Path) -> list[tuple[pathlib.Path, pathlib.Path]]:
  """(rainy, clean) files: every rain-XXX.png under `folder`, sorted, with its norain-XXX.png
  in the same folder or the one above (RainTrainL: both side by side; Rain100L:
  rainy/rain-XXX.png with norain-XXX.png)."""
  folder = pathlib.Path(folder)
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
    pairs.append((rainy_path, clean_path))
  return pairs


def load_streak_layers(path: str | pathlib.Path, min_size: int) -> degrade.StreakLayers:
  """The rain streak images in folder `path`, as one channel (luminance), for `add_streaks`.

  Only the rainstreak-* files when there are any (RainTrainL keeps them beside its rain-* /
  norain-* pairs), otherwise every image file. A file that cannot be read, or is smaller
  than `min_size` (the training crop), is an error: the set is small and chosen by hand.
  """
  files = image_files(path, 'Rain streak folder (data.rain_streaks)')
  files = [f for f in files if f.name.startswith('rainstreak')] or files
  layers = []
  for file in files:
    try:
      with Image.open(file) as image:
        layer = np.asarray(Image.fromarray(pil_to_rgb(image)).convert('L'))
    except _PILLOW_ERRORS as e:
      raise errors.InputError(f'Cannot read rain streak image {file} ({type(e).__name__}: {e}); '
                              'remove or replace it.') from e
    if min(layer.shape) < min_size:
      raise errors.InputError(f'Rain streak image {file} is {layer.shape[1]}x{layer.shape[0]}, '
                              f'smaller than the {min_size}x{min_size} training crop; remove it.')
    layers.append(layer)
  logging.info('Loaded %d rain streak layers from %s.', len(layers), path)
  return degrade.StreakLayers.stack(layers)


def pil_to_rgb(image: Image.Image) -> np.ndarray:
  """An 8-bit RGB array [H, W, 3] of a Pillow image.

  Grayscale is replicated to three channels, alpha dropped (as the official IPT
  loader does), palettes expanded, and 16-bit values scaled to 8 bits (rounded).
  """
  if image.mode.startswith('I'):  # 16-bit (or 32-bit integer) grayscale.
    gray = np.round(np.asarray(image, np.float64) / 257.)
    return np.repeat(np.clip(gray, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
  return np.asarray(image.convert('RGB'))


def decode_with_pillow(encoded: bytes) -> np.ndarray:
  """Decodes an image file's bytes to 8-bit RGB with Pillow (`pil_to_rgb`)."""
  with Image.open(io.BytesIO(encoded)) as image:
    return pil_to_rgb(image)


def without_iccp(encoded: bytes) -> bytes:
  """A PNG file's bytes without its iCCP chunk (the ICC colour profile), else unchanged.

  libpng warns on stderr about many profiles found in real files ("iCCP: known incorrect
  sRGB profile", hundreds of lines over SR291); TensorFlow's decoder ignores the profile, so
  the pixels are the same without it. The chunk comes before the image data (IDAT).
  """
  position = 8  # After the signature; then chunks of length, type, data, CRC.
  while position + 8 <= len(encoded):
    length, kind = struct.unpack_from('>I4s', encoded, position)
    end = position + 12 + length
    if kind == b'iCCP':
      return encoded[:position] + encoded[end:]
    if kind == b'IDAT':
      break
    position = end
  return encoded


def _inspect(path: pathlib.Path) -> tuple[int, int, int] | str:
  """(height, width, format) of a decodable image, or why it is unreadable.

  Checks the data once so that training never meets a broken file: a JPEG is
  decoded at 1/8 scale (cheap, but reads every coefficient, so truncation shows),
  a PNG's chunk checksums are verified, anything else is decoded in full.
  """
  try:
    with Image.open(path) as image:
      width, height = image.size
      if image.format == 'JPEG':
        tensorflow_decodes = image.mode in ('L', 'RGB')  # Not CMYK.
        image.draft(image.mode, (width // 8, height // 8))
        image.load()
        return height, width, JPEG if tensorflow_decodes else PILLOW
      if image.format == 'PNG':
        image.verify()
        return height, width, PNG
      image.load()
      return height, width, PILLOW
  except _PILLOW_ERRORS as e:
    return f'{type(e).__name__}: {e}'


def _inspect_entry(files: tuple[pathlib.Path, ...]) -> tuple[int, ...] | str:
  """(height, width, format of each file) of an image or a same-size pair, or why unusable."""
  infos = [_inspect(path) for path in files]
  reasons = [f'{path.name}: {info}' for path, info in zip(files, infos) if isinstance(info, str)]
  if reasons:  # A single file's reason needs no name: the warning gives its path.
    return '; '.join(reasons) if len(files) > 1 else infos[0]
  if len({info[:2] for info in infos}) > 1:
    return 'the rainy and clean images differ in size: ' + ' vs '.join(
        f'{w}x{h}' for h, w, _ in infos)
  return (*infos[0][:2], *(info[2] for info in infos))


def _files_source(spec: str, entries: list[tuple[pathlib.Path, ...]], min_size: int,
                  process_index: int, process_count: int) -> ImageSource:
  """A source over a sorted list of images, (file,), or rain pairs, (rainy, clean); hosts take
  even contiguous shares."""
  begin, end = _even_share(len(entries), process_index, process_count)
  entries = entries[begin:end]
  if not entries:
    raise errors.InputError(f'Source {spec!r} has fewer images than hosts ({process_count}); host '
                            f'{process_index} would get none. Use more images or fewer hosts.')
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
    infos = list(pool.map(_inspect_entry, entries))
  usable, unreadable, too_small = [], 0, 0
  for files, info in zip(entries, infos):
    if isinstance(info, str):
      logging.warning('Skipping unreadable image %s (%s).', files[0], info)
      unreadable += 1
    elif min(info[:2]) < min_size:
      too_small += 1
    else:
      usable.append((*map(str, files), *info))
  stats = SourceStats(files=len(entries), usable=len(usable), unreadable=unreadable,
                      too_small=too_small)
  logging.info('Source %s, host %d/%d: %s (images smaller than %d px are skipped).', spec,
               process_index, process_count, stats, min_size)
  if not usable:
    raise errors.InputError(f'Source {spec!r} has no usable image on host {process_index}: of '
                            f'{len(entries)} files, {unreadable} are unreadable and {too_small} are '
                            f'smaller than {min_size} px (the largest training crop).')
  # Columns: the file (and a pair's clean file), height, width, the files' formats.
  columns = [tf.constant(column, tf.string if isinstance(column[0], str) else tf.int32)
             for column in zip(*usable)]
  paired = len(entries[0]) == 2
  names = (['path', 'clean_path', 'height', 'width', 'format', 'clean_format'] if paired else
           ['path', 'height', 'width', 'format'])
  table = dict(zip(names, columns))

  @without_autograph
  def read(index):
    entry = {k: v[index] for k, v in table.items()}
    if paired:
      entry['clean'] = tf.io.read_file(entry.pop('clean_path'))
    return {'encoded': tf.io.read_file(entry.pop('path')), **entry}

  def records(order_seed, start):
    order = tf.random.experimental.stateless_shuffle(tf.range(len(usable)), order_seed)
    # Skip before reading: resuming mid-epoch costs nothing.
    return tf.data.Dataset.from_tensor_slices(order).skip(start).map(read)

  return ImageSource(epoch_size=len(usable), records=records, stats=lambda: stats)


def _even_share(count: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[begin, end) of host `process_index`'s share; the first hosts get one more if uneven."""
  base, extra = divmod(count, process_count)
  begin = process_index * base + min(process_index, extra)
  return begin, begin + base + (process_index < extra)


# ---------------------------------------------------------------------------
# TensorFlow Datasets.
# ---------------------------------------------------------------------------

def encoded_format_and_shape(encoded: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """(format, height, width) read from a JPEG or PNG header, without decoding."""
  def jpeg():
    shape = tf.image.extract_jpeg_shape(encoded)
    return tf.constant(JPEG), shape[0], shape[1]

  def png():  # PNG: the IHDR chunk stores width, then height, as big-endian uint32.
    size = tf.io.decode_raw(tf.strings.substr(encoded, 16, 8), tf.int32, little_endian=False)
    return tf.constant(PNG), size[1], size[0]

  return tf.cond(tf.io.is_jpeg(encoded), jpeg, png)


def _tfds_source(name: str, split: str, *, data_dir: str | None, image_key: str,
                 min_size: int, shuffle_buffer: int, process_index: int,
                 process_count: int) -> ImageSource:
  spec = f'tfds:{name}:{split}'
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise errors.InputError(f'Unknown TFDS dataset {name!r} (source {spec!r}); see '
                            'https://www.tensorflow.org/datasets/catalog for names.') from e
  shown_dir = data_dir or '~/tensorflow_datasets'
  help_text = (_IMAGENET_HELP.format(data_dir=shown_dir) if name.startswith('imagenet2012')
               else _TFDS_HELP.format(name=name, data_dir=shown_dir))
  features = builder.info.features
  if image_key not in features or not isinstance(features[image_key], tfds.features.Image):
    images = [k for k, v in features.items() if isinstance(v, tfds.features.Image)]
    raise errors.InputError(f'TFDS dataset {name!r} has no image feature {image_key!r}; set the data '
                            f'config image_key to one of {images}.')
  host_split = tfds.even_splits(split, process_count)[process_index]
  try:
    base = builder.as_dataset(split=host_split, shuffle_files=False,
                              decoders={image_key: tfds.decode.SkipDecoding()})
  except AssertionError as e:  # TFDS's way of saying the data is not there.
    raise errors.InputError(f'TFDS dataset {name!r} is not prepared in {shown_dir}. '
                            f'{help_text}') from e
  except (KeyError, ValueError) as e:
    raise errors.InputError(f'Cannot read split {split!r} of TFDS dataset {name!r}: {e}') from e
  num_records = int(base.cardinality())
  if num_records <= 0:
    raise errors.InputError(f'Host {process_index} of {process_count} gets no records of {spec!r}; '
                            'use a larger split or fewer hosts.')
  skipped = tf.Variable(0, dtype=tf.int64, trainable=False)

  @without_autograph
  def describe(example):
    encoded = example[image_key]
    fmt, height, width = encoded_format_and_shape(encoded)
    return {'encoded': encoded, 'format': fmt, 'height': height, 'width': width}

  @without_autograph
  def large_enough(record):
    return tf.minimum(record['height'], record['width']) >= min_size

  @without_autograph
  def large_enough_counted(record):
    ok = large_enough(record)
    skipped.assign_add(tf.cast(tf.logical_not(ok), tf.int64))
    return ok

  # Reads up to the first usable record: all of them only when there is none.
  if not list(base.map(describe).filter(large_enough).take(1)):
    raise errors.InputError(f'No image of {spec!r} on host {process_index} is at least {min_size} px '
                            'in height and width (the largest training crop); use a dataset of larger '
                            'images or smaller tasks.')

  def records(order_seed, start):
    shuffle_seed = tf.random.stateless_uniform([], order_seed, minval=None, maxval=None,
                                               dtype=tf.int64)
    ds = base.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
    ds = ds.map(describe).filter(large_enough_counted)
    # Fill the places of skipped images from the epoch's start: a fixed epoch length
    # maps every step to (epoch, position) without knowing how many images are small.
    return ds.repeat().take(num_records).skip(start)

  def stats():
    return SourceStats(files=num_records, usable=num_records, too_small=int(skipped.numpy()))

  return ImageSource(epoch_size=num_records, records=records, stats=stats)
