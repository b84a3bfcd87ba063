"""Speed benchmarks.

  python -m ipt_jax.benchmark --what=input [--source=folder:/data/imagenet_jpegs]

`--what=input`: training samples per second out of the input pipeline (decode,
crop, augment, degrade, batch), in total and per CPU core. Without `--source` it
reads a temporary folder of ImageNet-sized (500x375) JPEGs made from the
scikit-image samples.

This module imports without TensorFlow (accelerator machines may lack it);
only the input benchmark loads it.
"""
import os
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

_WHAT = flags.DEFINE_enum('what', 'input', ['input'], 'Which benchmark to run.')
_SOURCE = flags.DEFINE_string(
    'source', None, 'Input benchmark: image source (see ipt_jax.data.sources); default: '
    'a temporary folder of 500x375 JPEGs.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 128, 'Input benchmark: batch size.')
_STEPS = flags.DEFINE_integer('steps', 100, 'Input benchmark: timed steps.')
_WARMUP_STEPS = flags.DEFINE_integer('warmup_steps', 20,
                                     'Input benchmark: untimed steps first (autotuning).')
_NUM_IMAGES = flags.DEFINE_integer('num_images', 200,
                                   'Input benchmark: JPEGs in the generated folder.')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed.')

_IMAGENET_SIZE = (375, 500)  # Height, width: the most common ImageNet image size.


def write_jpeg_folder(folder: str, num_images: int, seed: int) -> None:
  """Writes `num_images` 500x375 JPEGs (quality 90): random crops of the skimage samples."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import skimage  # pylint: disable=g-import-not-at-top
  from ipt_jax.data import sources  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  height, width = _IMAGENET_SIZE
  images = []
  for name in sources.SAMPLE_SPLITS['train']:
    with Image.open(os.path.join(skimage.data_dir, name)) as image:
      image = sources.pil_to_rgb(image)
    # Upscale the small samples so that a 500x375 window fits.
    zoom = max(height / image.shape[0], width / image.shape[1], 1.)
    images.append(Image.fromarray(image).resize(
        (int(np.ceil(image.shape[1] * zoom)), int(np.ceil(image.shape[0] * zoom))),
        Image.BICUBIC))
  for i in range(num_images):
    image = images[i % len(images)]
    top = rng.integers(0, image.height - height + 1)
    left = rng.integers(0, image.width - width + 1)
    image.crop((left, top, left + width, top + height)).save(
        os.path.join(folder, f'{i:05d}.jpg'), quality=90)


def input_throughput(source: str, *, batch_size: int, steps: int, warmup_steps: int,
                     seed: int) -> tuple[float, float]:
  """Training samples per second of wall time and per second of CPU time (all threads).

  The second is what one core delivers however busy the machine is with other work.
  """
  from ipt_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  config = pipeline.default_config()
  config.source = source
  config.batch_size = batch_size
  batches = pipeline.make_train_iterator(config, seed=seed)
  for _ in range(warmup_steps):
    next(batches)
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(steps):
    next(batches)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  return steps * batch_size / wall, steps * batch_size / cpu


def benchmark_input() -> None:
  cores = len(os.sched_getaffinity(0))
  with tempfile.TemporaryDirectory() as folder:
    source = _SOURCE.value
    if source is None:
      write_jpeg_folder(folder, _NUM_IMAGES.value, _SEED.value)
      source = f'folder:{folder}'
    rate, cpu_rate = input_throughput(source, batch_size=_BATCH_SIZE.value,
                                      steps=_STEPS.value, warmup_steps=_WARMUP_STEPS.value,
                                      seed=_SEED.value)
  logging.info('Input pipeline: %.0f samples/s, %.0f samples per CPU-second', rate, cpu_rate)
  print(f'input pipeline ({source}, batch {_BATCH_SIZE.value}): {rate:.0f} samples/s in total, '
        f'{rate / cores:.0f} samples/s per core ({cores} cores); {cpu_rate:.0f} samples per '
        'CPU-second')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  {'input': benchmark_input}[_WHAT.value]()


if __name__ == '__main__':
  app.run(main)
