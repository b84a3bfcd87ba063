"""The restore command: each kind of input image (grayscale, RGBA, 16-bit, tiny, large, formats),
damaged, missing and non-image files reported while the others are restored, atomic writes, and
inputs never overwritten."""
import os
import pathlib
import struct
import zlib

import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from tests.conftest import run_command
from tests.conftest import shared_path
from ipt_jax import errors
from ipt_jax import files
from ipt_jax import inference
from ipt_jax import restore
from ipt_jax import weights

TINY_PT = ('fixtures', 'official_ipt_tiny', 'state_dict.pt')


@pytest.fixture(scope='module')
def tiny():
  pytest.importorskip('torch')
  return weights.load(shared_path(*TINY_PT), num_heads=2)


@pytest.fixture(scope='module')
def sr_x2(tiny):
  return inference.image_model(*tiny, 'sr_x2', mode='fast', tile_batch=4)


class IdentityStub:
  """A stand-in model that returns its input tiles: any correct tiling gives the input back."""
  patch_size = 48
  dtype = jnp.float32

  def scale(self, task):
    del task
    return 1

  def apply(self, variables, x, task):
    del variables, task
    return x


def random_pixels(shape, dtype=np.uint8, seed=0):
  peak = np.iinfo(dtype).max
  return np.random.default_rng(seed).integers(0, peak, shape, endpoint=True).astype(dtype)


def write_png16(path, pixels: np.ndarray):
  """A 16-bit PNG of [H, W, C] uint16 pixels (Pillow cannot write 16-bit colour)."""
  height, width, channels = pixels.shape
  colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
  rows = b''.join(b'\0' + row.astype('>u2').tobytes() for row in pixels)

  def chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

  header = struct.pack('>IIBBBBB', width, height, 16, colour_type, 0, 0, 0)
  pathlib.Path(path).write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) +
                                 chunk(b'IDAT', zlib.compress(rows)) + chunk(b'IEND', b''))


def restore_one(tmp_path, image_model, path, suffix='_out'):
  assert restore.restore_files([str(path)], image_model, tmp_path / 'out', suffix) == []
  with Image.open(tmp_path / 'out' / f'{path.stem}{suffix}.png') as image:
    image.load()
    return image


@pytest.mark.slow
@pytest.mark.parametrize('extension', ['jpg', 'png', 'bmp', 'webp'])
def test_formats_give_rgb_png_at_the_scale(tmp_path, sr_x2, extension):
  path = tmp_path / f'photo.{extension}'
  Image.fromarray(random_pixels((30, 41, 3))).save(path)
  image = restore_one(tmp_path, sr_x2, path)
  assert image.format == 'PNG' and image.mode == 'RGB' and image.size == (82, 60)


def test_output_is_the_quantised_model_output(tmp_path, sr_x2):
  pixels = random_pixels((30, 41, 3))
  Image.fromarray(pixels).save(tmp_path / 'a.png')
  image = restore_one(tmp_path, sr_x2, tmp_path / 'a.png')
  expected = np.round(np.clip(sr_x2(pixels), 0, 255)).astype(np.uint8)
  np.testing.assert_array_equal(np.asarray(image), expected)


def test_grayscale_stays_grayscale(tmp_path, sr_x2):
  gray = random_pixels((20, 25))
  Image.fromarray(gray).save(tmp_path / 'gray.png')
  image = restore_one(tmp_path, sr_x2, tmp_path / 'gray.png')
  assert image.mode == 'L' and image.size == (50, 40)
  rgb_output = np.clip(sr_x2(np.repeat(gray[..., None], 3, axis=-1)), 0, 255)
  expected = np.round(rgb_output @ np.array([0.299, 0.587, 0.114], np.float32))
  np.testing.assert_array_equal(np.asarray(image), expected.astype(np.uint8))


def test_rgba_keeps_its_alpha_resized_and_the_colour_is_restored_alone(tmp_path, sr_x2):
  rgba = random_pixels((20, 30, 4))
  rgba[..., 3] = np.linspace(0, 255, 30, dtype=np.uint8)  # A horizontal fade.
  Image.fromarray(rgba).save(tmp_path / 'logo.png')
  image = restore_one(tmp_path, sr_x2, tmp_path / 'logo.png')
  assert image.mode == 'RGBA' and image.size == (60, 40)
  output = np.asarray(image)
  expected_alpha = Image.fromarray(rgba[..., 3]).resize((60, 40), Image.Resampling.BICUBIC)
  np.testing.assert_array_equal(output[..., 3], np.asarray(expected_alpha))
  expected_rgb = np.round(np.clip(sr_x2(rgba[..., :3]), 0, 255))
  np.testing.assert_array_equal(output[..., :3], expected_rgb.astype(np.uint8))


def test_gray_with_alpha_and_palette_with_transparency(tmp_path, sr_x2):
  Image.fromarray(random_pixels((20, 20, 2)), 'LA').save(tmp_path / 'la.png')
  palette = Image.fromarray(random_pixels((20, 20, 3))).convert('P')
  palette.save(tmp_path / 'p.png', transparency=0)
  assert restore_one(tmp_path, sr_x2, tmp_path / 'la.png').mode == 'LA'
  assert restore_one(tmp_path, sr_x2, tmp_path / 'p.png').mode == 'RGBA'


def test_16_bit_grayscale_is_written_as_16_bit(tmp_path, sr_x2):
  gray = random_pixels((20, 24), np.uint16)
  Image.fromarray(gray).save(tmp_path / 'scan.png')
  image = restore_one(tmp_path, sr_x2, tmp_path / 'scan.png')
  assert image.mode == 'I;16' and image.size == (48, 40)
  rgb_output = np.clip(sr_x2(np.repeat(gray[..., None] / 257, 3, axis=-1)), 0, 255)
  expected = np.round(rgb_output @ np.array([0.299, 0.587, 0.114], np.float32) * 257)
  np.testing.assert_allclose(np.asarray(image), expected, atol=1)  # float32 rounding.
  assert np.any(np.asarray(image) % 257)  # Not 8-bit values scaled up.


@pytest.mark.parametrize('channels,mode', [(3, 'RGB'), (4, 'RGBA'), (2, 'RGBA')])
def test_16_bit_colour_or_gray_alpha_comes_out_as_8_bit(tmp_path, sr_x2, channels, mode):
  write_png16(tmp_path / 'deep.png', random_pixels((20, 24, channels), np.uint16))
  image = restore_one(tmp_path, sr_x2, tmp_path / 'deep.png')
  assert image.mode == mode and image.size == (48, 40)


def test_tiny_image(tmp_path, sr_x2):
  Image.fromarray(random_pixels((10, 10, 3))).save(tmp_path / 'icon.png')
  image = restore_one(tmp_path, sr_x2, tmp_path / 'icon.png')
  assert image.mode == 'RGB' and image.size == (20, 20)


def test_large_image_in_calls_of_tiles(tmp_path):
  # The tiny model runs ~60 tiles/s on a CPU, ~70 s for this image's 4187 'fast' tiles, so a
  # stub model stands in; the tiling, batching and file handling are the same.
  height, width = 2000, 3000
  ramp = np.add.outer(np.arange(height) // 8, np.arange(width) // 12).astype(np.uint8)
  pixels = np.stack([ramp, ramp[::-1], 255 - ramp], axis=-1)
  Image.fromarray(pixels).save(tmp_path / 'large.png', compress_level=1)
  image_model = inference.ImageModel(IdentityStub(), {}, 0, mode='fast', tile_batch=32)
  image = restore_one(tmp_path, image_model, tmp_path / 'large.png')
  assert image.size == (width, height) and image.mode == 'RGB'
  np.testing.assert_array_equal(np.asarray(image), pixels)


def test_bad_files_are_reported_by_name_and_the_others_restored(tmp_path, sr_x2, capsys):
  good = [tmp_path / 'first.png', tmp_path / 'last.jpg']
  for path in good:
    Image.fromarray(random_pixels((16, 16, 3))).save(path)
  truncated, text, missing = tmp_path / 'cut.png', tmp_path / 'notes.png', tmp_path / 'gone.png'
  Image.fromarray(random_pixels((64, 64, 3))).save(truncated)
  truncated.write_bytes(truncated.read_bytes()[:2000])
  text.write_text('not an image')
  paths = [good[0], truncated, text, missing, tmp_path, good[1]]
  failed = restore.restore_files([str(p) for p in paths], sr_x2, tmp_path / 'out', '_x2')
  assert failed == [str(p) for p in paths[1:5]]
  stderr = capsys.readouterr().err
  assert f'error: {truncated}: damaged or unreadable image data (image file is truncated' in stderr
  assert f'error: {text}: not an image Pillow can read' in stderr
  assert f'error: {missing}: no such file' in stderr
  assert f'error: {tmp_path}: a directory, not an image' in stderr
  # Only the good images' outputs; nothing half-written, no temporary files.
  assert sorted(os.listdir(tmp_path / 'out')) == ['first_x2.png', 'last_x2.png']


def test_inputs_are_never_overwritten(tmp_path, sr_x2, capsys):
  first, same_stem = tmp_path / 'a.png', tmp_path / 'a.jpg'
  for path in (first, same_stem):
    Image.fromarray(random_pixels((16, 16, 3))).save(path)
  before = first.read_bytes()
  # Writing beside the inputs without a suffix would replace a.png.
  assert restore.restore_files([str(first)], sr_x2, tmp_path, '') == [str(first)]
  assert 'would overwrite an input' in capsys.readouterr().err
  assert first.read_bytes() == before
  # a.png and a.jpg would both become out/a.png: the second one is refused.
  failed = restore.restore_files([str(first), str(same_stem)], sr_x2, tmp_path / 'out', '')
  assert failed == [str(same_stem)]
  assert 'the output of an earlier image' in capsys.readouterr().err


def test_a_failed_image_leaves_its_output_name_free(tmp_path, sr_x2, capsys):
  damaged, good = tmp_path / 'photo.jpg', tmp_path / 'photo.png'
  damaged.write_bytes(b'\xff\xd8 not really a JPEG')
  Image.fromarray(random_pixels((16, 16, 3))).save(good)
  failed = restore.restore_files([str(damaged), str(good)], sr_x2, tmp_path / 'out', '')
  assert failed == [str(damaged)]
  assert (tmp_path / 'out' / 'photo.png').exists()
  assert 'earlier image' not in capsys.readouterr().err


def test_a_killed_runs_temporary_files_are_removed_on_the_next_run(tmp_path, sr_x2):
  out = tmp_path / 'out'
  out.mkdir()
  stale = out / '.photo_x2.png.999999999.ipt_jax-tmp'  # No such process.
  stale.write_bytes(b'half a PNG')
  Image.fromarray(random_pixels((16, 16, 3))).save(tmp_path / 'photo.png')
  restore.restore_files([str(tmp_path / 'photo.png')], sr_x2, out, '_x2')
  assert sorted(os.listdir(out)) == ['photo_x2.png']


def test_animated_images_use_the_first_frame_with_a_warning(tmp_path, monkeypatch):
  warnings = []
  monkeypatch.setattr(restore.logging, 'warning', lambda *args: warnings.append(args[0] % args[1:]))
  frames = [Image.fromarray(random_pixels((16, 16, 3), seed=i)) for i in range(3)]
  frames[0].save(tmp_path / 'a.gif', save_all=True, append_images=frames[1:])
  picture = restore.read_picture(tmp_path / 'a.gif')
  assert picture.rgb.shape == (16, 16, 3)
  assert warnings == [f'{tmp_path / "a.gif"} has 3 frames (animated or multi-page): restoring '
                      'the first.']


@pytest.mark.parametrize('pixels,message', [
    (np.full((8, 8), 0.5, np.float32), 'a floating-point image: its value range is unknown'),
    (np.full((8, 8), 100_000, np.int32), 'a 32-bit image with values 100000..100000'),
])
def test_float_and_32_bit_images_are_refused(tmp_path, pixels, message):
  Image.fromarray(pixels).save(tmp_path / 'x.tiff')
  with pytest.raises(errors.InputError, match=message):
    restore.read_picture(tmp_path / 'x.tiff')


def test_a_failed_write_leaves_nothing(tmp_path):
  target = tmp_path / 'out.png'

  def write_half(temporary):
    pathlib.Path(temporary).write_bytes(b'\x89PNG half')
    raise OSError('disk full')

  with pytest.raises(OSError, match='disk full'):
    files.write_atomically(target, write_half)
  assert not os.listdir(tmp_path)


def test_cli_restores_the_good_images_and_exits_non_zero(tmp_path):
  pytest.importorskip('torch')
  Image.fromarray(random_pixels((20, 30, 3))).save(tmp_path / 'good.jpg')
  (tmp_path / 'bad.png').write_text('not an image')
  result = run_command(
      'restore', f'--checkpoint={shared_path(*TINY_PT)}', '--num_heads=2', '--tasks=denoise_30',
      f'--output_dir={tmp_path / "out"}', '--tile_batch=4', str(tmp_path / 'good.jpg'),
      str(tmp_path / 'bad.png'), str(tmp_path / 'missing.webp'))
  assert result.returncode == 1, result.stderr
  errors = result.stderr.strip().splitlines()
  assert f'error: {tmp_path / "bad.png"}: not an image' in result.stderr
  assert f'error: {tmp_path / "missing.webp"}: no such file' in result.stderr
  assert errors[-1] == (f'error: 2 of 3 images could not be restored (see above): '
                        f'{tmp_path / "bad.png"}, {tmp_path / "missing.webp"}')
  assert f'{tmp_path / "good.jpg"} -> {tmp_path / "out" / "good_denoise_30.png"}' in result.stdout
  assert os.listdir(tmp_path / 'out') == ['good_denoise_30.png']
  with Image.open(tmp_path / 'out' / 'good_denoise_30.png') as image:
    assert image.size == (30, 20) and image.mode == 'RGB'


def test_a_task_the_checkpoint_lacks_is_refused_with_its_tasks(tiny):
  with pytest.raises(ValueError, match="'sr_x8' is not one of this model's tasks: sr_x2, sr_x3"):
    inference.image_model(*tiny, 'sr_x8')
