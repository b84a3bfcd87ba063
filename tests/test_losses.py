"""The training losses against direct NumPy computations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ipt_jax import losses


def _supcon_numpy(features, temperature):
  """The supervised-contrastive loss written out anchor by anchor."""
  batch, k, dim = features.shape
  z = features.reshape(batch * k, dim).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  image = np.repeat(np.arange(batch), k)
  total = 0.
  for i in range(batch * k):
    others = [a for a in range(batch * k) if a != i]
    denominator = sum(np.exp(z[i] @ z[a] / temperature) for a in others)
    positives = [p for p in others if image[p] == image[i]]
    total += -np.mean([np.log(np.exp(z[i] @ z[p] / temperature) / denominator)
                       for p in positives])
  return total / (batch * k)


def test_patch_contrastive_equals_numpy():
  features = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)
  got = losses.patch_contrastive(jnp.asarray(features), temperature=0.07)
  np.testing.assert_allclose(float(got), _supcon_numpy(features, 0.07), rtol=1e-5)


def test_patch_contrastive_prefers_images_whose_patches_agree():
  rng = np.random.default_rng(1)
  centres = rng.normal(size=(4, 1, 16))
  clustered = centres + 0.01 * rng.normal(size=(4, 6, 16))
  scattered = rng.normal(size=(4, 6, 16))
  assert losses.patch_contrastive(jnp.asarray(clustered), 0.07) < losses.patch_contrastive(
      jnp.asarray(scattered), 0.07)


def test_sample_patches_draws_distinct_patches_of_each_image():
  features = jnp.arange(2 * 10, dtype=jnp.float32).reshape(2, 10, 1)
  sampled = np.asarray(losses.sample_patches(features, jax.random.key(0), 4))[..., 0]
  assert sampled.shape == (2, 4)
  for image, values in enumerate(sampled):
    assert len(set(values)) == 4 and all(image * 10 <= v < image * 10 + 10 for v in values)
  with pytest.raises(ValueError, match=r'contrastive_patches must be in 1\.\.10, got 11'):
    losses.sample_patches(features, jax.random.key(0), 11)
  with pytest.raises(ValueError, match='at least 2 patches per image'):
    losses.patch_contrastive(features[:, :1], 0.07)


def test_l1():
  assert float(losses.l1(jnp.array([1., 2.]), jnp.array([3, 2], jnp.uint8))) == 1.
