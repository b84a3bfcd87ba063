"""IPT's training losses: L1 on pixels and the patch contrastive loss on body features."""
import jax
import jax.numpy as jnp

from ipt_jax import errors


def l1(output: jax.Array, target: jax.Array) -> jax.Array:
  """Mean absolute error (on the [0, 255] scale, as the official training)."""
  return jnp.mean(jnp.abs(output.astype(jnp.float32) - target.astype(jnp.float32)))


def sample_patches(features: jax.Array, rng: jax.Array, num_patches: int) -> jax.Array:
  """`num_patches` distinct random patch features per image: [B, T, D] -> [B, K, D]."""
  batch, tokens, _ = features.shape
  if not 0 < num_patches <= tokens:
    raise errors.InputError(f'contrastive_patches must be in 1..{tokens}, got {num_patches}.')
  keys = jax.random.split(rng, batch)
  idx = jax.vmap(lambda k: jax.random.permutation(k, tokens)[:num_patches])(keys)
  return jnp.take_along_axis(features, idx[..., None], axis=1)


def patch_contrastive(features: jax.Array, temperature: float) -> jax.Array:
  """Supervised-contrastive loss over patch features [B, K, D].

  Each of the B*K L2-normalised patches is an anchor; its positives are the other patches
  of the same image, its negatives the patches of the other images (Khosla et al., 2020):
    mean over anchors i of  -1/|P(i)| sum_{p in P(i)} log softmax_{a != i}(z_i . z_a / T)_p
  """
  batch, k, dim = features.shape
  if k < 2:
    raise errors.InputError('The contrastive loss needs at least 2 patches per image (positives).')
  z = features.astype(jnp.float32).reshape(batch * k, dim)
  z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
  logits = z @ z.T / temperature
  image = jnp.repeat(jnp.arange(batch), k)
  self_mask = jnp.eye(batch * k, dtype=bool)
  logits = jnp.where(self_mask, -jnp.inf, logits)  # An anchor is not its own candidate.
  log_prob = jax.nn.log_softmax(logits, axis=-1)
  positive = (image[:, None] == image[None, :]) & ~self_mask
  per_anchor = jnp.sum(jnp.where(positive, log_prob, 0.), axis=-1) / (k - 1)
  return -jnp.mean(per_anchor)
