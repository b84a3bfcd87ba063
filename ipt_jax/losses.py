"""IPT's training losses: L1 on pixels and the patch contrastive loss on body features."""
import jax
import jax.numpy as jnp

from ipt_jax import errors


def l1(output: jax.Array, target: jax.Array) -> jax.Array:
  """Mean absolute error (on the [0, 255] scale, as the official training)."""
  return jnp.mean(jnp.abs(output.astype(jnp.float32) - target.astype(jnp.float32)))


def sample_patches(features: jax.Array, rng: jax.Array, num_patches: int) -> jax.Array:
  """`num_patches` distinct random patch features per image: [B, T, D] -> [B, K, D].

  num_patches=0 keeps all T patches (as the official code), in order.
  """
  batch, tokens, _ = features.shape
  if num_patches == 0:
    return features
  if not 0 < num_patches <= tokens:
    raise errors.InputError(f'contrastive_patches must be in 1..{tokens}, or 0 for all of them; '
                            f'got {num_patches}.')
  keys = jax.random.split(rng, batch)
  idx = jax.vmap(lambda k: jax.random.permutation(k, tokens)[:num_patches])(keys)
  return jnp.take_along_axis(features, idx[..., None], axis=1)


def patch_contrastive(features: jax.Array, temperature: float,
                      image_ids: jax.Array | None = None) -> jax.Array:
  """Supervised-contrastive loss over patch features [B, K, D] of images labelled `image_ids`.

  Each of the B*K L2-normalised patches is an anchor; its positives P(i) are the other
  patches of its source image (every patch of an example with the same image id: crops of
  one image are never negatives of each other), its negatives the patches of the other
  images (Khosla et al., 2020):
    mean over anchors i of  -1/|P(i)| sum_{p in P(i)} log softmax_{a != i}(z_i . z_a / T)_p
  `image_ids` [B] int; None: every example is a different image.
  """
  batch, k, dim = features.shape
  if k < 2:
    raise errors.InputError('The contrastive loss needs at least 2 patches per image (positives); '
                            'set loss.contrastive_patches to 0 (all) or at least 2.')
  if image_ids is None:
    image_ids = jnp.arange(batch)
  z = features.astype(jnp.float32).reshape(batch * k, dim)
  z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
  logits = z @ z.T / temperature
  image = jnp.repeat(image_ids, k)
  self_mask = jnp.eye(batch * k, dtype=bool)
  logits = jnp.where(self_mask, -jnp.inf, logits)  # An anchor is not its own candidate.
  log_prob = jax.nn.log_softmax(logits, axis=-1)
  positive = (image[:, None] == image[None, :]) & ~self_mask
  # k >= 2 gives every anchor at least one positive: the other patches of its own example.
  per_anchor = jnp.sum(jnp.where(positive, log_prob, 0.), axis=-1) / jnp.sum(positive, axis=-1)
  return -jnp.mean(per_anchor)


def grouped_contrastive(features: jax.Array, image_ids: jax.Array | None, temperature: float,
                        group: int) -> jax.Array:
  """`patch_contrastive` taken separately over groups of `group` consecutive examples, averaged.

  As the official code, which takes the loss per device over that device's images: with the
  batch sharded over devices and `group` dividing the per-device batch, every group lies on
  one device and its [group*K, group*K] similarities are computed there. group=0, or one
  larger than the batch (a small test batch): one loss over the whole batch.
  """
  batch = features.shape[0]
  if image_ids is None:
    image_ids = jnp.arange(batch)
  if group < 0 or (0 < group < batch and batch % group):
    raise errors.InputError(f'loss.contrastive_group={group} must divide the batch of {batch} '
                            'examples (best: the batch per device), or be 0 for the whole batch.')
  if group == 0 or group >= batch:
    return patch_contrastive(features, temperature, image_ids)
  grouped = lambda x: x.reshape(batch // group, group, *x.shape[1:])
  per_group = jax.vmap(lambda f, ids: patch_contrastive(f, temperature, ids))(
      grouped(features), grouped(image_ids))
  return jnp.mean(per_group)
