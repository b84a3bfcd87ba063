"""Checks that need four devices, run together in one process started by
test_four_devices.py (XLA splits the CPU into four devices before JAX starts):

  XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m tests.four_devices

Prints `ok <check>` for each check that passes; the first failure raises.
"""
import jax
import numpy as np

from ipt_jax import inference
from ipt_jax import losses
from ipt_jax import parallel
from ipt_jax import train
from tests.conftest import trained_config
from tests.test_train import make_batch
from tests.test_train import Trainer


def train_as_one():
  """Two-way data parallelism with two-way FSDP over four devices trains as one device does."""
  config = trained_config()
  config.mesh.fsdp_min_size_mb = 0.004  # Shard the tiny model's larger arrays too.
  # Adam's default eps turns reduction-order noise in near-zero gradients into steps of up to
  # lr: a larger eps keeps the comparison about sharding, not about that amplification.
  config.optimizer.eps = 1e-3
  params = train.build_model(config).init_params(jax.random.key(0))
  runs = {}
  for name, fsdp, devices in (('one', 1, jax.devices()[:1]), ('fsdp2', 2, None)):
    trainer = Trainer(config, parallel.make_mesh(fsdp, devices), params)
    losses_ = [trainer.step(0, make_batch(0, seed))['loss'] for seed in range(3)]
    runs[name] = losses_, trainer.snapshot().params
  sharded = jax.tree.leaves(trainer.state.params)
  assert any(len(x.sharding.device_set) == 4 and not x.sharding.is_fully_replicated
             for x in sharded), 'fsdp did not shard any parameter'
  np.testing.assert_allclose(runs['fsdp2'][0], runs['one'][0], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-4),
               runs['fsdp2'][1], runs['one'][1])


def contrastive_groups_stay_on_their_device():
  """A contrastive group within one device's examples needs no communication."""
  sharding = parallel.batch_sharding(parallel.make_mesh())  # 4 devices, 4 examples each.
  features = np.random.default_rng(0).normal(size=(16, 8, 6)).astype(np.float32)
  ids = np.arange(16, dtype=np.int32) // 2
  args = [jax.device_put(x, sharding) for x in (features, ids)]
  for group in (0, 2, 4, 8):
    loss = jax.jit(jax.value_and_grad(
        lambda f, i: losses.grouped_contrastive(f, i, 0.07, group))).lower(*args).compile()
    gathers = 'all-gather' in loss.as_text()
    assert gathers == (group in (0, 8)), (group, 'all-gather' if gathers else 'shard-local')
    value, _ = loss(*args)
    np.testing.assert_allclose(value, losses.grouped_contrastive(features, ids, 0.07, group),
                               rtol=1e-5)


def tiles_split_over_devices():
  """Whole-image inference splits each batch of tiles over the devices: the output is that of
  one device, and the tile batch rounds up to an equal share per device."""
  config = trained_config()
  model = train.build_model(config)
  params = model.init_params(jax.random.key(0))
  image = np.random.default_rng(0).uniform(0, 255, (70, 61, 3)).astype(np.float32)
  split = inference.ImageModel(model, params, 0, tile_batch=6)
  assert split.tile_batch == 8
  assert {d for x in jax.tree.leaves(split.params) for d in x.sharding.device_set} == set(
      jax.devices())
  alone = inference.ImageModel(model, params, 0, tile_batch=6, devices=jax.devices()[:1])
  np.testing.assert_allclose(split(image), alone(image), rtol=1e-5, atol=1e-3)


CHECKS = (train_as_one, contrastive_groups_stay_on_their_device, tiles_split_over_devices)

if __name__ == '__main__':
  assert jax.device_count() == 4, jax.devices()
  for check in CHECKS:
    check()
    print('ok', check.__name__, flush=True)
