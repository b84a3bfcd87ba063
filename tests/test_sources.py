"""Tests of the image sources: folders, the bundled samples and TFDS (mocked)."""
import io

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from configs import pretrain
from ipt_jax.data import pipeline
from ipt_jax.data import sources

SIZE = 48  # Test images are one training crop (patch_size 48, denoising) in size.


def _encode(image, fmt: str, **kwargs) -> bytes:
  buffer = io.BytesIO()
  image = image if isinstance(image, Image.Image) else Image.fromarray(image)
  image.save(buffer, format=fmt, **kwargs)
  return buffer.getvalue()


@pytest.fixture(scope='module')
def mixed_folder(tmp_path_factory):
  """A folder of awkward files and the RGB image each usable one should decode to."""
  folder = tmp_path_factory.mktemp('mixed')
  rng = np.random.default_rng(0)
  pixels = lambda *shape: rng.integers(0, 256, shape, dtype=np.uint8)
  gray, rgba = pixels(SIZE, SIZE), pixels(SIZE, SIZE, 4)
  bmp, webp, nested = (pixels(SIZE, SIZE, 3) for _ in range(3))
  deep = rng.integers(0, 65536, (SIZE, SIZE), dtype=np.uint16)
  cmyk = Image.fromarray(pixels(SIZE, SIZE, 4), 'CMYK')
  smooth = np.linspace(0, 255, SIZE * SIZE * 3).reshape(SIZE, SIZE, 3).astype(np.uint8)
  (folder / 'sub').mkdir()
  files = {
      'gray.png': _encode(gray, 'PNG'),
      'rgba.png': _encode(rgba, 'PNG'),
      'deep_16bit.png': _encode(deep, 'PNG'),
      'photo.JPG': _encode(smooth, 'JPEG', quality=95),
      'print.jpeg': _encode(cmyk, 'JPEG'),  # CMYK: decoded by Pillow, not TensorFlow.
      'bitmap.bmp': _encode(bmp, 'BMP'),
      'lossless.webp': _encode(webp, 'WEBP', lossless=True),
      'sub/nested.png': _encode(nested, 'PNG'),
      'tiny.png': _encode(pixels(20, 20, 3), 'PNG'),
      'truncated.jpg': _encode(pixels(200, 200, 3), 'JPEG')[:6000],
      'garbage.png': bytes(pixels(500)),
      'notes.txt': b'not an image',
  }
  for name, data in files.items():
    (folder / name).write_bytes(data)
  expected = {
      'gray': np.repeat(gray[..., None], 3, axis=-1),
      'rgba': rgba[..., :3],
      'deep_16bit': np.repeat(np.round(deep / 257.).astype(np.uint8)[..., None], 3, axis=-1),
      'photo': smooth,  # JPEG: compared with a tolerance.
      'print': sources.decode_with_pillow(files['print.jpeg']),
      'bitmap': bmp,
      'lossless': webp,
      'nested': nested,
  }
  return folder, expected


def test_folder_conversions_skips_and_counts(mixed_folder):
  folder, expected = mixed_folder
  source = sources.open_source(f'folder:{folder}', min_size=SIZE)
  assert source.stats() == sources.SourceStats(files=11, usable=8, unreadable=2, too_small=1)
  assert source.epoch_size == 8
  config = pretrain.data_config()
  config.val_source = f'folder:{folder}'
  config.tasks = ('denoise_30',)
  config.crops_per_image = 1
  # One crop per image, as large as the image: every usable file decoded whole.
  decoded = pipeline.make_eval_batches(config, patch_size=SIZE, num_examples=8)['denoise_30']['hq']
  for name, image in expected.items():
    errors = [np.abs(d.astype(int) - image).max() for d in decoded]
    tolerance = 8 if name == 'photo' else 0
    assert min(errors) <= tolerance, name


def test_folder_hosts_get_disjoint_shares(mixed_folder):
  folder, _ = mixed_folder
  shares = [sources.open_source(f'folder:{folder}', min_size=SIZE, process_index=i,
                                process_count=2) for i in range(2)]
  assert [s.stats().files for s in shares] == [6, 5]
  contents = [{r['encoded'] for r in s.records(tf.constant([1, 2], tf.int64), 0)
               .as_numpy_iterator()} for s in shares]
  assert not contents[0] & contents[1]
  assert len(contents[0]) + len(contents[1]) == 8


def test_folder_epoch_order_is_seeded_and_resumable(mixed_folder):
  folder, _ = mixed_folder
  source = sources.open_source(f'folder:{folder}', min_size=SIZE)
  order = lambda seed, start: [r['encoded'] for r in source.records(
      tf.constant(seed, tf.int64), start).as_numpy_iterator()]
  assert order([1, 2], 0) == order([1, 2], 0)
  assert order([1, 2], 0) != order([1, 3], 0)
  assert order([1, 2], 3) == order([1, 2], 0)[3:]


def test_samples_source_holds_out_validation_images():
  train = sources.open_source('samples', min_size=192)
  validation = sources.open_source('samples:validation', min_size=192)
  assert train.stats().usable == 7 and validation.stats().usable == 2
  assert not set(sources.SAMPLE_SPLITS['train']) & set(sources.SAMPLE_SPLITS['validation'])


@pytest.mark.parametrize('spec', ['imagenet', 'tfds:', 'folder:', 'samples:test', 'http://x'])
def test_unknown_source_string(spec):
  with pytest.raises(ValueError, match=r"Unknown image source .*Valid sources: 'tfds:<name>"):
    sources.open_source(spec, min_size=48)


def test_missing_empty_and_unusable_folders(tmp_path, mixed_folder):
  with pytest.raises(ValueError, match='does not exist or is not a folder; check the path'):
    sources.open_source(f'folder:{tmp_path / "nope"}', min_size=48)
  (tmp_path / 'readme.txt').write_text('no images here')
  with pytest.raises(ValueError, match=r'has no .jpg/.jpeg/.png/.bmp/.webp files'):
    sources.open_source(f'folder:{tmp_path}', min_size=48)
  folder, _ = mixed_folder
  with pytest.raises(ValueError, match='no usable image on host 0: of 11 files, 2 are unreadable '
                     'and 9 are smaller than 192 px'):
    sources.open_source(f'folder:{folder}', min_size=192)


def test_png_and_jpeg_headers():
  array = np.zeros((30, 41, 3), np.uint8)
  for fmt, code in (('PNG', sources.PNG), ('JPEG', sources.JPEG)):
    found = sources.encoded_format_and_shape(tf.constant(_encode(array, fmt)))
    assert [int(v) for v in found] == [code, 30, 41]


def test_tfds_imagenet_mocked():
  with tfds.testing.mock_data(num_examples=12):
    source = sources.open_source('tfds:imagenet2012', min_size=16, data_dir='/unused')
    assert source.epoch_size == 12
    records = list(source.records(tf.constant([3, 4], tf.int64), 0).as_numpy_iterator())
  assert len(records) == 12  # Skipped small images are replaced: fixed epoch length.
  for record in records:
    assert record['format'] == sources.JPEG
    shape = tf.image.extract_jpeg_shape(record['encoded']).numpy()
    assert (record['height'], record['width']) == tuple(shape[:2])
    assert min(shape[:2]) >= 16
  assert source.stats().too_small > 0  # Mock images are 1-50 px.


def test_tfds_without_large_enough_images():
  with tfds.testing.mock_data(num_examples=4):  # Mock images are at most 50 px.
    with pytest.raises(ValueError, match="No image of 'tfds:imagenet2012:train' on host 0 is "
                       'at least 100 px'):
      sources.open_source('tfds:imagenet2012', min_size=100)


def test_tfds_wrong_image_key():
  with tfds.testing.mock_data(num_examples=2):
    with pytest.raises(ValueError, match=r"no image feature 'hr'; set the data config image_key "
                       r"to one of \['image'\]"):
      sources.open_source('tfds:imagenet2012', min_size=16, image_key='hr')


def test_tfds_not_prepared(tmp_path):
  with pytest.raises(ValueError, match=r'(?s)imagenet2012.* is not prepared in .*manual '
                     r'download.*tfds build imagenet2012 --manual_dir='):
    sources.open_source('tfds:imagenet2012', min_size=48, data_dir=str(tmp_path))
  with pytest.raises(ValueError, match=r"(?s)'mnist' is not prepared.*tfds build mnist"):
    sources.open_source('tfds:mnist:test', min_size=48, data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="Unknown TFDS dataset 'no_such_dataset'"):
    sources.open_source('tfds:no_such_dataset', min_size=48, data_dir=str(tmp_path))
