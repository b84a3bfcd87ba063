"""The tf.data input pipeline: clean images in, task-specific training pairs out.

Each global step trains one task, drawn by `task_schedule` from (seed, step)
alone, so every host agrees on it without communicating. A host's batch for that
step holds `host_batch_size` pairs: `hq`, a random 48s x 48s crop of a clean
image (s: the task's scale, 1 for denoising and deraining), randomly flipped and
rotated by a multiple of 90 degrees (uint8); `lq`, its degraded 48 x 48 input
(float32: MATLAB-bicubic downscaling by s or rain streaks, rounded and clipped as the
official uint8 inputs; Gaussian noise clipped but not rounded, as the official code); and
`image_id`, which source image the crop came from (crops of one image are positives of
each other in the contrastive loss). Rain is synthesised (`degrade.add_rain`) or cut from
streak images (`rain_streaks`, `degrade.add_streaks`); a pair source (`pairs:<path>`,
derain only) gives real rainy inputs instead: its rainy and clean images are decoded
side by side as one 6-channel image, so that both get the same crops and symmetries.

How the data flows, per host:

  images   source epochs, each in a seeded order -> image n (a running count)
  crops    image n is decoded once (JPEG: only the bounding box of its crops) and
           cut into `crops_per_image` = k crops of the largest patch any task
           needs (48 * 4 with sr_x4), each flipped / transposed at random; positions
           and symmetries are seeded by (seed, host, n)
           -> example e (a running count; image n gives examples nk ... nk+k-1), with
           image id n * hosts + host (unique over hosts)
  batches  examples sb ... sb+b-1 form step s's batch, shuffled (so that k crops of
           one image are not neighbours): its task's crop is cut from each and
           degraded, with seeds from (seed, host, s)

Every random choice is a stateless function of (seed, host, n) or (seed, host, s)
and epochs have a fixed number of images, so step s's batch is a pure function
of (config, seed, host, s). `start_step=s` finds its place directly: the epoch and
position of image sb // k, skipped to without reading anything (folders) or by
reading but not decoding the epoch's records before it (TFDS), then the first
image's leftover crops are dropped.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

from etils import epy
import ml_collections
import numpy as np

from ipt_jax import errors
from ipt_jax import tasks as tasks_lib
from ipt_jax.data import degrade
from ipt_jax.data import sources

with epy.lazy_imports(success_callback=degrade.keep_tensorflow_on_cpu):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

_FOREVER = np.iinfo(np.int64).max
_INT32_IDS = 2**31  # Image ids wrap here: only equality within a batch matters.
# Independent random streams: image order, crop positions, per-step choices, eval.
_ORDER, _CROPS, _STEP, _EVAL = range(4)


def host_batch_size(global_batch_size: int, process_count: int) -> int:
  """Examples per host and step; the global batch must split evenly over hosts."""
  if global_batch_size < 1 or global_batch_size % process_count:
    raise errors.InputError(f'The global batch size {global_batch_size} must be a positive multiple '
                            f'of the number of hosts ({process_count}); change batch_size.')
  return global_batch_size // process_count


def task_schedule(seed: int, step: int, weights: Sequence[float]) -> int:
  """The index of the task trained at global `step`, with probabilities proportional to `weights`.

  A pure function of (seed, step, weights): every host computes the same schedule,
  and a resumed run continues it.
  """
  cumulative = np.cumsum(weights, dtype=np.float64)
  u = np.random.default_rng([seed, step]).random() * cumulative[-1]
  return min(int(np.searchsorted(cumulative, u, side='right')), len(cumulative) - 1)


class TrainIterator:
  """Iterates over training batches; also reports what the source skipped."""

  def __init__(self, dataset: tf.data.Dataset, source: sources.ImageSource):
    self._batches = dataset.as_numpy_iterator()
    self._source = source

  def __iter__(self) -> TrainIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray | int]:
    batch = next(self._batches)
    batch['task'] = int(batch['task'])
    return batch

  def source_stats(self) -> sources.SourceStats:
    """Images in this host's share of the source, and how many were skipped and why."""
    return self._source.stats()


def make_train_iterator(config: ml_collections.ConfigDict, *, patch_size: int, seed: int,
                        start_step: int = 0, process_index: int = 0,
                        process_count: int = 1) -> TrainIterator:
  """Training batches of this host from `start_step` on, forever, for a model that takes
  `patch_size` x `patch_size` inputs (`model.patch_size`).

  Yields {'lq': float32 [b, p, p, 3], 'hq': uint8 [b, p*s, p*s, 3],
  'image_id': int32 [b], 'task': int}, with b = host_batch_size(config.batch_size,
  process_count), p = patch_size, s the scale of the step's task (1 for denoising and
  deraining) and 'task' its index in config.tasks. Examples with the same image_id
  are crops of one source image (ids differ across hosts). Starting at `start_step`
  yields exactly what an uninterrupted run yields from that step on.
  """
  if not 0 <= seed < 2**63 or start_step < 0:
    raise ValueError(f'seed must be in [0, 2**63) and start_step >= 0, got {seed}, '
                     f'{start_step}.')
  task_list, weights = _tasks_and_weights(config)
  _check_pairs(config.source, task_list)
  rain = _rain(config, patch_size)
  batch = host_batch_size(config.batch_size, process_count)
  crop, count = _largest_crop(task_list, patch_size), config.crops_per_image
  source = sources.open_source(
      config.source, min_size=crop, data_dir=config.data_dir, image_key=config.image_key,
      shuffle_buffer=config.shuffle_buffer, process_index=process_index,
      process_count=process_count)
  first_image, first_crop = divmod(start_step * batch, count)
  crops = _crops(source, seed=seed, host=process_index, hosts=process_count,
                 first_image=first_image, crop=crop, count=count, augment=config.augment)
  crops = crops.skip(first_crop).batch(batch, drop_remainder=True)
  steps = tf.data.Dataset.range(start_step, _FOREVER)
  make_batch = functools.partial(
      _make_batch, task_list=task_list, weights=weights, seed=seed, host=process_index,
      patch=patch_size, rain=rain)
  ds = tf.data.Dataset.zip(steps, crops).map(sources.without_autograph(make_batch),
                                             num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(_options())
  return TrainIterator(ds, source)


def start_tensorflow():
  """Starts TensorFlow (CPU only) and runs now an op that makes it print a notice on its first
  use in a process (oneDNN on uint8 transposes, which the augmentation runs): so that the
  notices come at start-up, where `quiet.tensorflow_start_up` can filter them."""
  tf.transpose(tf.zeros([1, 1, 1, 1], tf.uint8), [0, 2, 1, 3])


def make_eval_batches(config: ml_collections.ConfigDict, *, patch_size: int, num_examples: int,
                      seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
  """Fixed held-out pairs for each task, from `config.val_source`, for a model that takes
  `patch_size` x `patch_size` inputs.

  Returns {task name: {'lq': float32 [n, p, p, 3], 'hq': uint8 [n, p*s, p*s, 3]}}
  with n = num_examples: crops of the validation images (cycled as needed),
  without augmentation, degraded with fixed seeds. A function of (config, seed):
  every call and every host gets the same arrays.
  """
  if num_examples < 1:
    raise errors.InputError(f'num_examples must be positive, got {num_examples}.')
  task_list, _ = _tasks_and_weights(config)
  _check_pairs(config.val_source, task_list)
  rain = _rain(config, patch_size)
  crop, count = _largest_crop(task_list, patch_size), config.crops_per_image
  # No shuffle buffer: the first validation records (TFDS shuffled them when preparing).
  source = sources.open_source(config.val_source, min_size=crop, data_dir=config.data_dir,
                               image_key=config.image_key, shuffle_buffer=1)
  crops = _crops(source, seed=seed, host=0, hosts=1, first_image=0, crop=crop, count=count,
                 augment=False)
  crops = next(iter(crops.batch(num_examples).with_options(_options())))['crops']
  batches = {}
  for index, task in enumerate(task_list):
    lq, hq = _degrade_for_task(crops, _key(seed, _EVAL, index), task,
                               patch=patch_size, rain=rain)
    batches[task.name] = {'lq': lq.numpy(), 'hq': hq.numpy()}
  return batches


# ---------------------------------------------------------------------------
# Configuration checks.
# ---------------------------------------------------------------------------

def _tasks_and_weights(
    config: ml_collections.ConfigDict) -> tuple[tuple[tasks_lib.Task, ...], np.ndarray]:
  if not config.tasks:
    raise errors.InputError('The data config lists no tasks; set tasks, e.g. '
                            f'{tasks_lib.PRETRAIN_NAMES}.')
  task_list = tuple(tasks_lib.get(name) for name in config.tasks)
  weights = np.asarray(config.task_weights or [1.] * len(task_list), np.float64)
  if weights.shape != (len(task_list),) or (weights < 0).any() or weights.sum() <= 0:
    raise errors.InputError(f'task_weights {tuple(config.task_weights)} must be empty or have one '
                            f'non-negative weight per task of {tuple(config.tasks)}, not all zero.')
  for name, value in (('crops_per_image', config.crops_per_image),
                      ('shuffle_buffer', config.shuffle_buffer)):
    if value < 1:
      raise errors.InputError(f'{name} must be positive, got {value}.')
  return task_list, weights


def _largest_crop(task_list, patch_size: int) -> int:
  """The side of the largest clean crop any task needs; smaller images are skipped."""
  if patch_size < 1:
    raise errors.InputError(f'patch_size must be positive, got {patch_size}.')
  return patch_size * max(task.scale for task in task_list)


def _rain(config: ml_collections.ConfigDict,
          patch_size: int) -> degrade.RainConfig | degrade.StreakLayers:
  """How derain inputs get their rain: the streak images of `rain_streaks` when set,
  otherwise streaks synthesised with the ranges of `rain`."""
  fields = {f.name for f in dataclasses.fields(degrade.RainConfig)}
  unknown = set(config.rain) - fields
  if unknown:
    raise errors.InputError(f'Unknown rain settings {sorted(unknown)}; valid: {sorted(fields)}.')
  procedural = degrade.RainConfig(**{k: tuple(v) for k, v in config.rain.items() if v is not None})
  if config.get('rain_streaks') is None:
    return procedural
  return sources.load_streak_layers(config.rain_streaks, min_size=patch_size)


def _check_pairs(spec: str, task_list) -> None:
  """A pair source holds rainy inputs: nothing to train but deraining on."""
  others = [task.name for task in task_list if task.kind != 'derain']
  if sources.gives_pairs(spec) and others:
    raise errors.InputError(f'Source {spec!r} gives rainy / clean pairs, which only the derain task '
                            f'can use, but the tasks include {others}; set tasks=(\'derain\',) '
                            '(configs/finetune.py:derain) or use a folder:/tfds: source.')


# ---------------------------------------------------------------------------
# The dataset.
# ---------------------------------------------------------------------------

def _key(seed: int, *data) -> tf.Tensor:
  """A stateless seed (shape [2]) for the random stream named by (seed, *data)."""
  key = tf.constant([seed, 0], tf.int64)
  for value in data:
    key = tf.random.experimental.stateless_fold_in(key, tf.cast(value, tf.int64))
  return key


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.autotune.enabled = True
  return options


def _crops(source: sources.ImageSource, *, seed: int, host: int, hosts: int, first_image: int,
           crop: int, count: int, augment: bool) -> tf.data.Dataset:
  """{'crops': [crop, crop, 3] uint8 ([.., 6], rainy | clean, from a pair source),
  'image_id': int32}, `count` per image, from image `first_image` of the stream; image n of
  host h has id n * hosts + h."""
  epoch, position = divmod(first_image, source.epoch_size)

  def epoch_records(epoch, start):
    return source.records(_key(seed, _ORDER, host, epoch), start)

  images = epoch_records(epoch, position).concatenate(
      tf.data.Dataset.range(epoch + 1, _FOREVER).flat_map(
          sources.without_autograph(lambda e: epoch_records(e, 0))))
  images = tf.data.Dataset.zip(tf.data.Dataset.range(first_image, _FOREVER), images)
  decode = functools.partial(_decode_crops, seed=seed, host=host, crop=crop, count=count,
                             augment=augment)

  @sources.without_autograph
  def decode_with_id(index, record):
    image_id = tf.cast((index * hosts + host) % _INT32_IDS, tf.int32)
    return {'crops': decode(index, record), 'image_id': tf.fill([count], image_id)}

  return images.map(decode_with_id, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def _decode_crops(index, record, *, seed: int, host: int, crop: int, count: int,
                  augment: bool) -> tf.Tensor:
  """`count` random crops [count, crop, crop, 3] of one image, decoding only their bounding box.

  With `augment`, each crop is also flipped and/or transposed at random (one of
  the 8 symmetries of the square: flips and rotations by multiples of 90 degrees).
  """
  key = _key(seed, _CROPS, host, index)
  subkey = lambda i: tf.random.experimental.stateless_fold_in(key, i)
  tops = tf.random.stateless_uniform([count], subkey(0), minval=0,
                                     maxval=record['height'] - crop + 1, dtype=tf.int32)
  lefts = tf.random.stateless_uniform([count], subkey(1), minval=0,
                                      maxval=record['width'] - crop + 1, dtype=tf.int32)
  top, left = tf.reduce_min(tops), tf.reduce_min(lefts)
  box = (top, left, tf.reduce_max(tops) + crop - top, tf.reduce_max(lefts) + crop - left)
  region = _decode_region(record['encoded'], record['format'], *box)
  if 'clean' in record:  # A rainy | clean pair: one image to crop and flip, both alike.
    region = tf.concat([region, _decode_region(record['clean'], record['clean_format'], *box)],
                       axis=-1)
  steps = tf.range(crop)[None]
  if augment:  # Flips are free: read the rows or columns backwards.
    flips = tf.random.stateless_uniform([3, count, 1], subkey(2), minval=0, maxval=2,
                                        dtype=tf.int32) > 0
    rows = tops[:, None] - top + tf.where(flips[0], crop - 1 - steps, steps)
    cols = lefts[:, None] - left + tf.where(flips[1], crop - 1 - steps, steps)
  else:
    rows, cols = tops[:, None] - top + steps, lefts[:, None] - left + steps
  crops = tf.gather(tf.gather(region, rows), cols, axis=2, batch_dims=1)
  if augment:
    crops = tf.where(flips[2][..., None, None], tf.transpose(crops, [0, 2, 1, 3]), crops)
  return tf.ensure_shape(crops, [count, crop, crop, region.shape[-1]])


def _decode_region(encoded, fmt, top, left, height, width) -> tf.Tensor:
  """Decodes the [height, width] window at (top, left) of an image to uint8 RGB."""

  def jpeg():
    return tf.image.decode_and_crop_jpeg(encoded, tf.stack([top, left, height, width]),
                                         channels=3)

  def png():  # As 16 bits, so that 16-bit PNGs are rounded (not truncated) to 8 bits.
    quiet = tf.numpy_function(sources.without_iccp, [encoded], tf.string, stateful=False)
    image = tf.io.decode_png(tf.ensure_shape(quiet, []), channels=3, dtype=tf.uint16)
    image = image[top:top + height, left:left + width]
    return tf.cast(tf.round(tf.cast(image, tf.float32) / 257.), tf.uint8)

  def pillow():
    image = tf.numpy_function(sources.decode_with_pillow, [encoded], tf.uint8, stateful=False)
    return tf.ensure_shape(image, [None, None, 3])[top:top + height, left:left + width]

  return tf.switch_case(fmt, {sources.JPEG: jpeg, sources.PNG: png, sources.PILLOW: pillow})


def _make_batch(step, examples, *, task_list, weights, seed: int, host: int, patch: int,
                rain: degrade.RainConfig | degrade.StreakLayers) -> dict[str, tf.Tensor]:
  """Step `step`'s batch: its task's pairs cut from the [b, L, L, 3 or 6] crops, shuffled."""
  schedule = lambda s: np.int32(task_schedule(seed, int(s), weights))
  task_index = tf.ensure_shape(
      tf.numpy_function(schedule, [step], tf.int32, stateful=False), [])
  key = _key(seed, _STEP, host, step)
  # A group of consecutive examples (a device's share, a contrastive loss) should not be
  # runs of crops of one image.
  order = tf.argsort(tf.random.stateless_uniform(
      tf.shape(examples['image_id']), tf.random.experimental.stateless_fold_in(key, 2)))
  crops = tf.gather(examples['crops'], order)
  branches = [functools.partial(_degrade_for_task, crops, key, task, patch=patch, rain=rain)
              for task in task_list]
  lq, hq = tf.switch_case(task_index, branches)
  return {'lq': lq, 'hq': hq, 'image_id': tf.gather(examples['image_id'], order),
          'task': task_index}


def _degrade_for_task(crops, key, task: tasks_lib.Task, *, patch: int,
                      rain: degrade.RainConfig | degrade.StreakLayers
                      ) -> tuple[tf.Tensor, tf.Tensor]:
  """(lq float32, hq uint8) for `task` from clean crops [b, L, L, 3] (L >= the task's crop),
  or from a pair source's rainy | clean crops [b, L, L, 6] (deraining only).

  Noisy inputs stay unrounded floats (as the official code and the evaluation); resized and
  rainy ones are rounded, as the official uint8 images.
  """
  hq = _random_subcrops(crops, patch * task.scale,
                        tf.random.experimental.stateless_fold_in(key, 0))
  if hq.shape[-1] == 6:  # A pair source's rainy | clean window: the rain is real.
    rainy, hq = hq[..., :3], hq[..., 3:]
    return tf.cast(rainy, tf.float32), hq
  degrade_key = tf.random.experimental.stateless_fold_in(key, 1)
  rounded = lambda x: tf.cast(degrade.to_uint8(x), tf.float32)
  if task.kind == 'sr':
    lq = rounded(degrade.imresize(hq, 1 / task.scale))
  elif task.kind == 'denoise':
    lq = degrade.add_noise(hq, task.sigma, degrade_key)
  elif isinstance(rain, degrade.StreakLayers):
    lq = rounded(degrade.add_streaks(hq, rain, degrade_key))
  else:
    lq = rounded(degrade.add_rain(hq, degrade_key, rain))
  return lq, hq


def _random_subcrops(images, size: int, key) -> tf.Tensor:
  """A random [size, size] window of each image in [b, L, L, 3]."""
  batch, side = images.shape[0], images.shape[1]
  if side == size:
    return images
  corners = tf.random.stateless_uniform([2, batch], key, minval=0, maxval=side - size + 1,
                                        dtype=tf.int32)
  rows = corners[0][:, None] + tf.range(size)
  cols = corners[1][:, None] + tf.range(size)
  images = tf.gather(images, rows, axis=1, batch_dims=1)
  return tf.gather(images, cols, axis=2, batch_dims=1)
