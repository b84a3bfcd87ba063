"""The Flax IPT: shapes, parameters, errors, and its building blocks against PyTorch."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ipt_jax import tasks
from ipt_jax.models import ipt
from tests.conftest import BLOCK_TENSORFLOW
from tests.conftest import random_params


@pytest.fixture(scope='module')
def tiny():
  model = ipt.create('tiny')
  return model, random_params(model)


def test_paper_preset_has_the_official_parameter_count():
  model = ipt.create('paper')
  shapes = jax.eval_shape(model.init_params, jax.random.key(0))
  assert ipt.count_params(shapes) == 118_892_370
  assert ipt.count_params(shapes['body']) - 6 * 256 * 576 == 115_636_608 - 6 * 256 * 576


@pytest.mark.slow
def test_every_task_gets_the_right_output_shape_and_features(tiny):
  model, params = tiny
  x = jax.random.uniform(jax.random.key(1), (2, 48, 48, 3), maxval=255.)
  for i, name in enumerate(model.tasks):
    out, features = model.apply({'params': params}, x, task=i, return_features=True)
    scale = tasks.get(name).scale
    assert out.shape == (2, 48 * scale, 48 * scale, 3)
    assert features.shape == (2, 256, 8 * 9)
    assert np.isfinite(np.asarray(out)).all()


def test_init_creates_every_tasks_head_tail_and_embedding(tiny):
  model, params = tiny
  for name in model.tasks:
    assert f'head_{name}' in params and f'tail_{name}' in params
    assert params['body'][f'query_embed_{name}'].shape == (256, 72)


def test_tasks_use_their_own_parameters(tiny):
  model, params = tiny
  x = jnp.full((1, 48, 48, 3), 100.)
  a = model.apply({'params': params}, x, task=3)
  b = model.apply({'params': params}, x, task=4)
  assert not np.allclose(a, b)


def test_task_of_param():
  names = tasks.PRETRAIN_NAMES
  assert ipt.task_of_param(('head_sr_x2', 'conv_in', 'kernel'), names) == 'sr_x2'
  assert ipt.task_of_param(('body', 'query_embed_derain'), names) == 'derain'
  assert ipt.task_of_param(('body', 'encoder_0', 'norm1', 'scale'), names) is None
  assert ipt.task_of_param(('head_sr_x8', 'conv_in', 'kernel'), names) is None


def test_wrong_input_size_is_a_clear_error(tiny):
  model, params = tiny
  with pytest.raises(ValueError, match=r'shape \[batch, 48, 48, 3\].*got \(1, 50, 48, 3\).*'
                                       'ipt_jax.inference'):
    model.apply({'params': params}, jnp.zeros((1, 50, 48, 3)), task=0)
  with pytest.raises(ValueError, match=r'got \(48, 48, 3\)'):
    model.apply({'params': params}, jnp.zeros((48, 48, 3)), task=0)


def test_bad_task_is_a_clear_error(tiny):
  model, params = tiny
  x = jnp.zeros((1, 48, 48, 3))
  with pytest.raises(ValueError, match=r'task index 6 is out of range.*valid: 0\.\.5'):
    model.apply({'params': params}, x, task=6)
  with pytest.raises(TypeError, match='static Python int'):
    model.apply({'params': params}, x, task='sr_x2')


def test_task_lookup_errors():
  with pytest.raises(ValueError, match='Unknown task .*sr_x2, sr_x3, sr_x4, derain, denoise_30'):
    tasks.get('deblur')
  with pytest.raises(ValueError, match='scales 2, 3 and powers of 2'):
    tasks.get('sr_x5')
  with pytest.raises(ValueError, match="not one of this model's tasks: sr_x2"):
    tasks.index('sr_x4', ('sr_x2',))
  assert tasks.get('denoise_15') == tasks.Task('denoise_15', 'denoise', sigma=15.)
  assert tasks.get('sr_x8').scale == 8
  assert [tasks.index(n) for n in tasks.PRETRAIN_NAMES] == list(range(6))


def test_unknown_preset():
  with pytest.raises(ValueError, match="Unknown model preset 'huge'; choose one of paper, small"):
    ipt.create('huge')


def test_config_round_trip():
  model = ipt.create('small', tasks=('sr_x2', 'denoise_15'), dtype=jnp.bfloat16)
  config = ipt.to_config(model)
  assert config['dtype'] == 'bfloat16' and config['tasks'] == ['sr_x2', 'denoise_15']
  assert ipt.create(**config) == model
  assert ipt.create(**{**config, 'dtype': 'float32'}).dtype == jnp.float32
  with pytest.raises(ValueError, match='Unknown IPT fields'):
    ipt.create(**{**config, 'depth': 3})


def test_pixel_shuffle_matches_pytorch():
  torch = pytest.importorskip('torch')
  for r in (2, 3):
    x = np.random.default_rng(0).normal(size=(2, 4 * r * r, 5, 6)).astype(np.float32)
    expected = torch.nn.functional.pixel_shuffle(torch.from_numpy(x), r).numpy()
    got = ipt.pixel_shuffle(jnp.asarray(x.transpose(0, 2, 3, 1)), r)
    np.testing.assert_array_equal(np.asarray(got).transpose(0, 3, 1, 2), expected)


@pytest.mark.slow
def test_bfloat16_compute_stays_close_to_float32():
  model = ipt.create('tiny', tasks=('sr_x2',))
  params = model.init_params(jax.random.key(0))  # As initialised: activations of a real scale.
  x = jax.random.uniform(jax.random.key(2), (2, 48, 48, 3), maxval=255.)
  ref = model.apply({'params': params}, x, task=0)
  bf16 = model.clone(dtype=jnp.bfloat16).apply({'params': params}, x, task=0)
  err = jnp.abs(bf16.astype(jnp.float32) - ref)
  assert float(err.mean()) < 1.0, float(err.mean())


@pytest.mark.parametrize('dtype,tolerance', [('float64', 1e-12), ('float32', 1e-5)])
def test_attention_normalised_after_the_product_is_softmax_attention(dtype, tolerance):
  with jax.enable_x64(dtype == 'float64'):
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (3 * jax.random.normal(key, (2, 3, 16, 8), dtype) for key in keys)

    def softmax_first(q, k, v):
      logits = jnp.einsum('bnqd,bnkd->bnqk', q, k) / np.sqrt(q.shape[-1])
      return jnp.einsum('bnqk,bnkd->bnqd', jax.nn.softmax(logits, axis=-1), v)

    expected, got = softmax_first(q, k, v), ipt.dot_product_attention(q, k, v)
    assert got.dtype == q.dtype
    np.testing.assert_allclose(got, expected, atol=tolerance * np.abs(expected).max())
    grad = lambda f: jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a))), argnums=(0, 1, 2))(q, k, v)
    for got_grad, expected_grad in zip(grad(ipt.dot_product_attention), grad(softmax_first)):
      np.testing.assert_allclose(got_grad, expected_grad,
                                 atol=tolerance * np.abs(expected_grad).max())
    # Logits in the thousands: exp without the max shift would overflow.
    assert np.all(np.isfinite(ipt.dot_product_attention(100 * q, 100 * k, v)))


@pytest.fixture(scope='module')
def float64_reference():
  """A float64 model, its parameters, an input, and the loss and gradients of the unrolled one."""
  with jax.enable_x64(True):
    model = ipt.create('tiny', tasks=('sr_x2', 'derain'), dtype='float64', param_dtype='float64')
    params = random_params(model)
    x = jax.random.uniform(jax.random.key(1), (2, 48, 48, 3), jnp.float64, maxval=255.)
    return model, params, x, _loss_and_grad(model, params, x)


def _loss_and_grad(model, params, x):
  loss = lambda p: jnp.mean(model.apply({'params': p}, x, task=1, train=True) ** 2)
  return jax.value_and_grad(loss)(params)


@pytest.mark.slow
@pytest.mark.parametrize('fields', [dict(remat=True), dict(scan_layers=True),
                                    dict(scan_layers=True, remat=True)])
def test_remat_and_scan_layers_change_how_it_runs_not_what_it_computes(float64_reference,
                                                                          fields):
  model, params, x, (loss, grads) = float64_reference
  with jax.enable_x64(True):
    other = model.clone(**fields)
    # The same parameter names and shapes (checkpoints and conversion are unaffected).
    assert jax.tree.map(jnp.shape, jax.eval_shape(other.init_params, jax.random.key(0))) == (
        jax.tree.map(jnp.shape, params))
    other_loss, other_grads = _loss_and_grad(other, params, x)
    np.testing.assert_allclose(other_loss, loss, rtol=1e-12)
    for a, b in zip(jax.tree.leaves(other_grads), jax.tree.leaves(grads)):
      np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12 * float(jnp.abs(b).max()))


@pytest.mark.slow
def test_scan_layers_applies_dropout_by_its_key(tiny):
  model, params = tiny
  model = model.clone(dropout_rate=0.5, scan_layers=True)
  x = jnp.full((1, 48, 48, 3), 100.)
  run = jax.jit(lambda key: model.apply({'params': params}, x, task=0, train=True,
                                        rngs={'dropout': key}))
  assert np.isfinite(np.asarray(run(jax.random.key(0)))).all()
  assert not np.allclose(run(jax.random.key(0)), run(jax.random.key(1)))
  assert not np.allclose(run(jax.random.key(0)), model.apply({'params': params}, x, task=0))


@pytest.mark.slow
def test_the_accelerator_side_imports_without_tensorflow():
  code = BLOCK_TENSORFLOW + '''
for name in ('models.ipt', 'losses', 'metrics', 'inference', 'train', 'convert', 'parallel',
             'checkpoint', 'benchmark', 'data.testsets'):
  __import__('ipt_jax.' + name)
'''
  subprocess.run([sys.executable, '-c', code], check=True)
