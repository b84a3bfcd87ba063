"""The training losses against direct NumPy computations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ipt_jax import losses


def _supcon_numpy(features, temperature, image_ids=None):
  """The supervised-contrastive loss written out anchor by anchor; a patch's label is its
  example's image id (default: every example its own image)."""
  batch, k, dim = features.shape
  z = features.reshape(batch * k, dim).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  image = np.repeat(np.arange(batch) if image_ids is None else image_ids, k)
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


def test_examples_of_one_source_image_are_positives():
  # Examples 0 and 2 are crops of image 7: each other's patches are positives, not negatives.
  features = np.random.default_rng(2).normal(size=(4, 3, 5)).astype(np.float32)
  ids = np.array([7, 2, 7, 5], np.int32)
  got = float(losses.patch_contrastive(jnp.asarray(features), 0.1, jnp.asarray(ids)))
  np.testing.assert_allclose(got, _supcon_numpy(features, 0.1, ids), rtol=1e-5)
  assert abs(got - _supcon_numpy(features, 0.1)) > 1e-3  # Not the loss without the ids.
  # Two identical crops of one image: no pull apart, so a lower loss than as two images.
  twins = features.copy()
  twins[2] = twins[0]
  assert losses.patch_contrastive(jnp.asarray(twins), 0.1, jnp.asarray(ids)) < (
      losses.patch_contrastive(jnp.asarray(twins), 0.1))


@pytest.mark.slow
def test_all_token_group_wise_loss_equals_numpy_per_group():
  features = np.random.default_rng(3).normal(size=(6, 5, 4)).astype(np.float32)
  ids = np.array([0, 1, 1, 2, 3, 3], np.int32)
  patches = losses.sample_patches(jnp.asarray(features), jax.random.key(0), 0)  # All tokens.
  np.testing.assert_array_equal(patches, features)
  for group in (2, 3, 6):
    expected = np.mean([_supcon_numpy(features[i:i + group], 0.07, ids[i:i + group])
                        for i in range(0, 6, group)])
    got = losses.grouped_contrastive(patches, jnp.asarray(ids), 0.07, group)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
  whole = _supcon_numpy(features, 0.07, ids)
  for group in (0, 64):  # The whole batch; so is a group larger than it (a small batch).
    got = losses.grouped_contrastive(patches, jnp.asarray(ids), 0.07, group)
    np.testing.assert_allclose(float(got), whole, rtol=1e-5)
  # Without ids every example is its own image.
  np.testing.assert_allclose(float(losses.grouped_contrastive(patches, None, 0.07, 3)), np.mean(
      [_supcon_numpy(features[i:i + 3], 0.07) for i in (0, 3)]), rtol=1e-5)
  for group in (4, -1):
    with pytest.raises(ValueError, match=rf'contrastive_group={group} must divide the batch of 6'):
      losses.grouped_contrastive(patches, None, 0.07, group)


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
  with pytest.raises(ValueError, match=r'contrastive_patches must be in 1\.\.10, or 0 for all '
                                       r'of them; got 11'):
    losses.sample_patches(features, jax.random.key(0), 11)
  with pytest.raises(ValueError, match='at least 2 patches per image'):
    losses.patch_contrastive(features[:, :1], 0.07)


def test_l1():
  assert float(losses.l1(jnp.array([1., 2.]), jnp.array([3, 2], jnp.uint8))) == 1.
