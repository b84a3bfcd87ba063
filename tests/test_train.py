"""The train step: the official and per-task optimisers, clipping, schedules, learning,
non-finite guards, sharding."""
import jax
import numpy as np
import pytest
import skimage.data

from ipt_jax import errors
from ipt_jax import parallel
from ipt_jax import optimizer
from ipt_jax import train
from tests.conftest import trained_config


class Trainer:
  """A tiny two-task IPT with its optimiser and jitted steps on a mesh."""

  def __init__(self, config, mesh=None, params=None):
    self.config = config
    self.model = train.build_model(config)
    self.mesh = mesh or parallel.make_mesh()
    self.schedule = optimizer.learning_rate(config, optimizer.total_steps(config))
    self.tx = optimizer.make(config, self.model, self.schedule)
    self.state = train.create_train_state(self.model, self.tx, self.mesh, config, params=params)
    abstract_state = jax.eval_shape(lambda s: s, self.state)
    self.steps = train.make_train_steps(self.model, self.tx, self.schedule, config, self.mesh,
                                        abstract_state)
    self._shardings = train.state_shardings(self.mesh, abstract_state, config)
    self._initial = jax.device_get(self.state)

  def restart(self, params=None):
    """Back to step 0 (with `params`, if given), keeping the compiled steps: Adam's initial
    state is zeros whatever the parameters."""
    initial = self._initial if params is None else self._initial.replace(params=params)
    self.state = jax.device_put(initial, self._shardings)
    return self

  def step(self, task, batch):
    self.state, metrics = self.steps[task](self.state, parallel.global_batch(self.mesh, batch))
    return jax.device_get(metrics)

  def snapshot(self):
    return jax.device_get(self.state)


def make_batch(task, seed=0, size=4):
  """Crops of a photo: (2x subsampled, crop) for sr_x2, (noisy, clean) for denoise_30, typed as
  the input pipeline's batches."""
  scale = (2, 1)[task]
  rng = np.random.default_rng(seed)
  photo, crop = skimage.data.astronaut(), 48 * scale
  corners = rng.integers(0, photo.shape[0] - crop, (size, 2))
  hq = np.stack([photo[y:y + crop, x:x + crop] for y, x in corners])
  lq = hq[:, ::scale, ::scale] if scale > 1 else np.clip(
      hq + rng.normal(0, 30, hq.shape), 0, 255).astype(np.uint8)
  return {'lq': lq.astype(np.float32), 'hq': hq, 'image_id': np.arange(size, dtype=np.int32)}


@pytest.fixture(scope='module')
def trainer():
  """Adam state per task: inactive tasks frozen."""
  config = trained_config()
  config.optimizer.per_task_state = True
  return Trainer(config)


@pytest.fixture(scope='module')
def official_trainer(trained_run):
  """One Adam state for all tasks, the official default; each test restarts it. (After the
  session's trained run, whose compiled init and steps it reuses.)"""
  del trained_run
  return Trainer(trained_config())


def _adam(state, group):
  return state.opt_state.inner_state[1].inner_states[group].inner_state


def _same(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.slow
def test_only_the_steps_task_and_the_body_are_updated(trainer):
  for _ in range(2):
    trainer.step(1, make_batch(1))
  after_denoise = trainer.snapshot()
  for seed in range(3):
    trainer.step(0, make_batch(0, seed))
  after_sr = trainer.snapshot()
  p0, p1 = after_denoise.params, after_sr.params
  for name in ('head_denoise_30', 'tail_denoise_30'):
    assert _same(p0[name], p1[name]), name
  assert _same(p0['body']['query_embed_denoise_30'], p1['body']['query_embed_denoise_30'])
  assert _same(_adam(after_denoise, 'denoise_30'), _adam(after_sr, 'denoise_30'))
  for name in ('head_sr_x2', 'tail_sr_x2'):
    assert not _same(p0[name], p1[name]), name
  assert not _same(p0['body']['query_embed_sr_x2'], p1['body']['query_embed_sr_x2'])
  assert not _same(p0['body']['encoder_0'], p1['body']['encoder_0'])
  # Bias correction counts the steps each group took part in, as PyTorch's per-parameter Adam.
  assert int(_adam(after_sr, 'shared').count) == 5
  assert int(_adam(after_sr, 'sr_x2').count) == 3
  assert int(_adam(after_sr, 'denoise_30').count) == 2
  assert int(after_sr.step) == 5


@pytest.mark.slow
def test_one_adam_moves_inactive_tasks_on_their_momentum(official_trainer):
  official = official_trainer.restart()
  official.step(1, make_batch(1))
  after_denoise = official.snapshot()
  official.step(0, make_batch(0))
  after_sr = official.snapshot()
  # denoise_30 has no gradient at an sr_x2 step, but Adam's first moment still moves it.
  assert not _same(after_denoise.params['head_denoise_30'], after_sr.params['head_denoise_30'])
  assert int(after_sr.opt_state.inner_state[1].count) == 2  # One bias correction for all.


def test_per_tensor_clipping_bounds_each_tensor():
  grads = {'small': np.full((4,), 0.1, np.float32), 'large': np.full((3, 3), 10., np.float32)}
  clipped, _ = optimizer.clip_by_tensor_norm(1.).update(grads, None)
  np.testing.assert_allclose(clipped['small'], grads['small'])  # Norm 0.2: kept.
  np.testing.assert_allclose(np.linalg.norm(clipped['large']), 1., rtol=1e-6)
  # Query, key and value are one packed tensor officially: norm sqrt(3 * 0.36) > 1, clipped.
  attention = {name: {'kernel': np.full((1,), 0.6, np.float32)}
               for name in ('query', 'key', 'value')}
  clipped, _ = optimizer.clip_by_tensor_norm(1.).update({'attn': attention, 'out': np.float32(0.6)}, None)
  np.testing.assert_allclose(clipped['attn']['key']['kernel'], 0.6 / np.sqrt(1.08), rtol=1e-6)
  np.testing.assert_allclose(clipped['out'], 0.6)
  config = trained_config()
  config.optimizer.clip = 'norm'
  with pytest.raises(errors.InputError, match="optimizer.clip='norm': use 'per_tensor'"):
    optimizer.make(config, train.build_model(config), lambda _: 1.)


@pytest.mark.slow
def test_loss_falls_on_a_fixed_batch(official_trainer):
  trainer = official_trainer.restart()
  batch = make_batch(0)
  losses = [trainer.step(0, batch)['loss'] for _ in range(25)]
  assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.slow
def test_non_finite_steps_are_skipped_and_counted(official_trainer):
  params = jax.tree.map(np.array, official_trainer.restart().snapshot().params)
  params['head_sr_x2']['conv_in']['kernel'][0, 0, 0, 0] = np.nan
  broken = official_trainer.restart(params)
  for expected in (1, 2):
    metrics = broken.step(0, make_batch(0))
    assert not np.isfinite(metrics['loss'])
    assert metrics['nonfinite_in_a_row'] == expected and metrics['skipped_steps'] == expected
  after = broken.snapshot()
  assert int(after.step) == 2  # The data moves on; the parameters do not.
  assert _same(after.params['body'], params['body'])


@pytest.mark.slow
def test_training_stops_after_too_many_non_finite_steps_in_a_row(tmp_path, trained_run):
  del trained_run  # Run after it: its compiled steps are reused.
  config = trained_config(max_nonfinite_steps=3)  # It stops before the first checkpoint.
  model = train.build_model(config)
  params = jax.tree.map(lambda p: np.full(p.shape, np.nan, p.dtype),
                        jax.eval_shape(model.init_params, jax.random.key(0)))
  with pytest.raises(train.NonFiniteError, match=r'3 non-finite losses or gradients in a row '
                                                 r'.*Lower the learning rate'):
    train.train_and_evaluate(config, str(tmp_path), init_params=params)


def test_the_official_step_schedule_halves_at_epoch_200():
  config = trained_config(total_steps=None, num_epochs=300, num_train_images=1000)
  config.optimizer.update(lr=5e-5, schedule='step', decay_epochs=(200,), decay_factor=0.5)
  config.data.batch_size = 10  # 100 steps per epoch: epoch 200 starts at step 20,000.
  schedule = optimizer.learning_rate(config, optimizer.total_steps(config))
  np.testing.assert_allclose([schedule(0), schedule(19_999), schedule(20_000), schedule(29_999)],
                             [5e-5, 5e-5, 2.5e-5, 2.5e-5], rtol=1e-6)


def test_cosine_schedule_anneals_to_end_lr():
  config = trained_config()
  config.optimizer.update(lr=5e-5, end_lr=2e-5, schedule='cosine')
  schedule = optimizer.learning_rate(config, 1000)
  np.testing.assert_allclose([schedule(0), schedule(500), schedule(1000)], [5e-5, 3.5e-5, 2e-5],
                             rtol=1e-6)


def test_total_steps_from_epochs():
  config = trained_config(total_steps=None, num_epochs=3, num_train_images=1000)
  assert optimizer.total_steps(config) == 750


def test_unknown_preset_is_a_clear_error():
  config = trained_config()
  config.model.preset = 'giant'
  with pytest.raises(ValueError, match="Unknown model preset 'giant'"):
    train.build_model(config)


def test_batch_must_divide_over_devices():
  with pytest.raises(ValueError, match='global batch size 6 does not divide over 4 devices'):
    parallel.check_batch_size(6, type('Mesh', (), {'size': 4})())
