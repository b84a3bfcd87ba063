"""Whole-image tiled inference: the official forward_chop reproduced against its outputs, coverage
and weight normalisation of both tilings, self-ensemble, the calls the tiles run in (and the few
shapes compiled for all image sizes), and errors for bad inputs."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import shared_path
from ipt_jax import inference
from ipt_jax import torch_layout

TINY = ('fixtures', 'official_ipt_tiny')
CHOP_TASKS = (0, 2, 3)  # sr_x2, sr_x4, denoise_30.


class NearestStub:
  """A stand-in model that upsamples each tile by pixel repetition.

  It commutes with cropping, flips and transposes, so any correct tiling, blending or ensemble
  of it gives the nearest-neighbour upsampling of the whole image. `traces` counts how often
  jit traced it.
  """
  patch_size = 48
  dtype = jnp.float32

  def __init__(self, scale: int):
    self._scale = scale
    self.traces = 0

  def scale(self, task):
    del task
    return self._scale

  def apply(self, variables, x, task):
    del variables, task
    self.traces += 1
    return jnp.repeat(jnp.repeat(x, self._scale, axis=1), self._scale, axis=2)


def nearest(image, scale):
  return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def random_image(height, width, seed=0):
  return np.random.default_rng(seed).uniform(0, 255, (height, width, 3)).astype(np.float32)


@pytest.fixture(scope='module')
def chop():
  return np.load(shared_path(*TINY, 'chop.npz'))


@pytest.fixture(scope='module')
def tiny():
  pytest.importorskip('torch')
  return torch_layout.from_torch(shared_path(*TINY, 'state_dict.pt'), num_heads=2)


@pytest.fixture(scope='module')
def official(tiny):
  """Official-mode image models of the tiny model per task, shared so each compiles once."""
  model, params = tiny
  return {t: inference.ImageModel(model, params, t, tile_batch=8) for t in CHOP_TASKS}


def _chop_errors(image_models, chop):
  for t in CHOP_TASKS:
    for name in 'ab':
      image = chop[f'input_{name}'][0].transpose(1, 2, 0)  # The fixture is NCHW.
      out = image_models[t](image)
      expected = chop[f'chop_{name}_task{t}'][0].transpose(1, 2, 0)
      assert out.shape == expected.shape, (t, name, out.shape)
      yield t, name, out, np.abs(out - expected)


@pytest.mark.slow
def test_official_mode_reproduces_forward_chop(official, chop):
  for t, name, out, err in _chop_errors(official, chop):
    assert out.dtype == np.float32
    assert err.max() < 1e-2 and err.mean() < 2e-4, (t, name, err.max(), err.mean())


@pytest.mark.slow
def test_official_mode_is_exactly_forward_chop_in_float64(chop):
  pytest.importorskip('torch')
  with jax.enable_x64(True):
    model, params = torch_layout.from_torch(shared_path(*TINY, 'state_dict.pt'), num_heads=2,
                                       dtype=jnp.float64, param_dtype=jnp.float64)
    image_models = {t: inference.ImageModel(model, params, t, tile_batch=8) for t in CHOP_TASKS}
    for t, name, out, err in _chop_errors(image_models, chop):
      # Any pixel from the wrong tiles, or averaged over the wrong set, would be off by >> 1e-9.
      assert out.dtype == np.float64
      assert err.max() < 1e-9, (t, name, err.max())


@pytest.mark.parametrize('mode', inference.MODES)
@pytest.mark.parametrize('scale', [1, 2, 3, 4])
def test_every_pixel_is_covered_and_weights_are_normalised(mode, scale):
  model = NearestStub(scale)
  image_model = inference.ImageModel(model, {}, 0, mode=mode, tile_batch=16)
  for height, width in [(48, 48), (49, 131), (70, 61), (96, 97), (107, 60)]:
    image = random_image(height, width)
    out = image_model(image)
    if mode == 'official':  # 0/1 weights over 1, 2 or 4 tiles: exact.
      np.testing.assert_array_equal(out, nearest(image, scale), err_msg=f'{height}x{width}')
    else:
      np.testing.assert_allclose(out, nearest(image, scale), rtol=1e-6, err_msg=f'{height}x{width}')


@pytest.mark.parametrize('mode', inference.MODES)
@pytest.mark.parametrize('height,width', [(1, 1), (1, 5), (10, 10), (2, 47), (47, 130), (60, 3)])
def test_images_smaller_than_a_tile_are_padded_and_cropped_back(mode, height, width):
  image = random_image(height, width)
  out = inference.ImageModel(NearestStub(2), {}, 0, mode=mode)(image)
  np.testing.assert_allclose(out, nearest(image, 2), rtol=1e-6)


def test_small_images_are_padded_by_reflection():
  image = random_image(10, 30)
  out = inference.ImageModel(TileMeanStub(1), {}, 0)(image)
  padded = np.pad(image, ((0, 38), (0, 18), (0, 0)), mode='reflect')
  np.testing.assert_allclose(out, padded.mean(), rtol=1e-5)


@pytest.mark.parametrize('mode', inference.MODES)
def test_small_and_odd_images_have_the_right_shape_with_the_real_model(tiny, official, mode):
  model, params = tiny
  image_model = official[0] if mode == 'official' else inference.ImageModel(
      model, params, 0, mode=mode, tile_batch=8)
  for height, width in [(10, 10), (47, 130)]:
    out = image_model(random_image(height, width))
    assert out.shape == (2 * height, 2 * width, 3) and out.dtype == np.float32
    assert np.isfinite(out).all()


def test_fast_mode_on_one_tile_is_the_model_output(tiny):
  model, params = tiny
  image = random_image(48, 48)
  expected = jax.jit(lambda p, x: model.apply({'params': p}, x, task=0))(params, image[None])[0]
  out = inference.ImageModel(model, params, 0, mode='fast', tile_batch=1)(image)
  np.testing.assert_array_equal(out, np.asarray(expected))


class TileMeanStub(NearestStub):
  """Outputs each tile's mean everywhere: neighbouring tiles disagree by a step."""

  def apply(self, variables, x, task):
    return jnp.broadcast_to(x.mean(axis=(1, 2, 3), keepdims=True), x.shape)


def test_fast_mode_cross_fades_overlaps():
  image = np.tile(np.linspace(0, 255, 180, dtype=np.float32)[None, :, None], (48, 1, 3))
  row = inference.ImageModel(TileMeanStub(1), {}, 0, mode='fast')(image)[0, :, 0]
  starts = [0, 38, 76, 114, 132]  # 10 px overlaps; the last tile, at the border, overlaps 30.
  means = [image[0, s:s + 48, 0].mean() for s in starts]
  # Constant where a tile is alone, linear across each overlap.
  np.testing.assert_allclose(row[:38], means[0], rtol=1e-5)
  np.testing.assert_allclose(row[124:132], means[3], rtol=1e-5)
  np.testing.assert_allclose(np.diff(row[38:48]), (means[1] - means[0]) / 10, rtol=1e-3)
  np.testing.assert_allclose(np.diff(row[132:162]), (means[4] - means[3]) / 30, rtol=1e-3)
  assert row.min() >= means[0] - 1e-4 and row.max() <= means[-1] + 1e-4


@pytest.mark.parametrize('height,width,official,fast', [
    (48, 48, 1, 1), (10, 10, 1, 1), (70, 61, 9, 4), (48, 97, 6, 3), (256, 256, 361, 49)])
def test_number_of_tiles(height, width, official, fast):
  assert inference.num_tiles(height, width, mode='official') == official
  assert inference.num_tiles(height, width, mode='fast') == fast
  assert inference.num_tiles(height, width, mode='fast', self_ensemble=True) == 8 * fast


def test_number_of_tiles_follows_the_overlap():
  assert inference.num_tiles(96, 144, mode='fast', overlap=0) == 2 * 3  # Side by side.
  assert inference.num_tiles(96, 144, mode='fast', overlap=24) == 3 * 5  # Every 24 px.
  assert inference.num_tiles(96, 144, mode='fast', overlap=47) == 49 * 97


@pytest.mark.parametrize('mode', inference.MODES)
@pytest.mark.parametrize('self_ensemble', [False, True])
def test_number_of_tiles_is_what_runs(monkeypatch, mode, self_ensemble):
  calls = []
  apply_tiles = inference._apply_tiles
  monkeypatch.setattr(inference, '_apply_tiles',
                      lambda *args, **kwargs: calls.append(1) or apply_tiles(*args, **kwargs))
  image_model = inference.ImageModel(NearestStub(1), {}, 0, mode=mode, tile_batch=1,
                                self_ensemble=self_ensemble)
  image_model(random_image(70, 101))
  assert len(calls) == image_model.num_tiles(70, 101)


@pytest.mark.parametrize('mode', inference.MODES)
def test_self_ensemble_of_an_equivariant_model_is_the_plain_result(mode):
  image = random_image(61, 50)
  plain = inference.ImageModel(NearestStub(3), {}, 0, mode=mode)(image)
  ensemble = inference.ImageModel(NearestStub(3), {}, 0, mode=mode, self_ensemble=True)(image)
  np.testing.assert_allclose(ensemble, plain, rtol=1e-6)


def test_self_ensemble_is_the_mean_of_the_eight_transformed_runs(tiny, official):
  model, params = tiny
  image = random_image(50, 61)
  plain = official[0]
  runs = []
  for transpose in (False, True):
    for flip_rows in (False, True):
      for flip_cols in (False, True):
        x = image[::-1] if flip_rows else image
        x = x[:, ::-1] if flip_cols else x
        y = plain(x.transpose(1, 0, 2) if transpose else x)
        y = y.transpose(1, 0, 2) if transpose else y
        y = y[::-1] if flip_rows else y
        runs.append(y[:, ::-1] if flip_cols else y)
  ensemble = inference.ImageModel(model, params, 0, tile_batch=8, self_ensemble=True)(image)
  np.testing.assert_allclose(ensemble, np.mean(runs, axis=0), atol=1e-4)
  # Transforming matters for this model, so the check above is not vacuous.
  assert np.abs(runs[0] - runs[-1]).max() > 1e-2


def test_compile_covers_every_image_size():
  model = NearestStub(2)
  image_model = inference.ImageModel(model, {}, 0, tile_batch=8)
  image_model.compile()
  assert image_model.call_sizes == [1, 2, 4, 8] and model.traces == 4
  for mode in inference.MODES:
    image_model = inference.ImageModel(model, {}, 0, mode=mode, tile_batch=8)
    for height, width in [(48, 48), (70, 61), (130, 97), (20, 300)]:
      image_model(random_image(height, width))
  assert model.traces == 4


@pytest.mark.parametrize('tile_batch,calls', [
    (64, [8, 1]),  # 70x61, official tiling: 9 tiles, none computed twice.
    (4, [4, 4, 1]),
    (6, [6, 2, 1]),
])
def test_tiles_run_in_full_calls_then_powers_of_two(monkeypatch, tile_batch, calls):
  sizes = []
  apply_tiles = inference._apply_tiles
  monkeypatch.setattr(inference, '_apply_tiles', lambda params, batch, **kwargs: sizes.append(
      len(batch)) or apply_tiles(params, batch, **kwargs))
  image_model = inference.ImageModel(NearestStub(1), {}, 0, tile_batch=tile_batch)
  assert image_model.num_tiles(70, 61) == 9
  image = random_image(70, 61)
  np.testing.assert_array_equal(image_model(image), image)
  assert sizes == calls


def test_with_two_devices_every_call_is_an_even_share():
  sizes = inference._call_sizes(64, devices=2)
  assert sizes == [2, 4, 8, 16, 32, 64]
  calls = [size for _, size in inference._calls(list(range(75)), sizes)]
  assert calls == [64, 8, 2, 2]  # The last tile padded to 2.


def test_integer_and_jax_inputs_give_the_same_result():
  image = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
  image_model = inference.ImageModel(NearestStub(2), {}, 0)
  expected = image_model(image.astype(np.float32))
  np.testing.assert_array_equal(image_model(image), expected)
  np.testing.assert_array_equal(image_model(jnp.asarray(image)), expected)


@pytest.mark.parametrize('options,message', [
    (dict(mode='chop'), "Unknown tiling mode 'chop'"),
    (dict(overlap=-1), r'overlap must be an integer number of pixels in \[0, 47\]'),
    (dict(overlap=48), r'positive stride \(48 - overlap\); got 48'),
    (dict(overlap=2.5), 'got 2.5'),
    (dict(tile_batch=0), 'tile_batch .* must be a positive integer, got 0'),
])
def test_bad_options_are_refused(options, message):
  with pytest.raises(ValueError, match=message):
    inference.ImageModel(NearestStub(2), {}, 0, **options)


@pytest.mark.parametrize('shape', [(48, 48), (1, 48, 48, 3), (48, 48, 1), (48, 48, 4)])
def test_bad_images_are_refused(shape):
  with pytest.raises(ValueError, match=r'Expected one RGB image of shape \[height, width, 3\], '
                                       rf'got shape {re.escape(str(shape))}'):
    inference.ImageModel(NearestStub(2), {}, 0)(np.zeros(shape, np.float32))


def test_empty_images_are_refused():
  with pytest.raises(ValueError, match='empty'):
    inference.ImageModel(NearestStub(2), {}, 0)(np.zeros((0, 5, 3), np.float32))
