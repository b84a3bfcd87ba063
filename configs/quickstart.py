"""The embedded default: the tiny IPT pre-trained on scikit-image's sample images on a CPU.

  python -m ipt_jax.main --config=configs/quickstart.py --workdir=/tmp/ipt_quickstart

A few hundred steps in under three minutes on two CPU cores; validation Y-PSNR on crops
held out from training rises as it trains.
"""
from configs import pretrain


def get_config(arg=None):
  config = pretrain.get_config(arg)
  config.data.source = 'samples:train'  # 7 photos bundled with scikit-image.
  config.data.val_source = 'samples:validation'
  config.data.batch_size = 8
  config.data.shuffle_buffer = 64
  # Seven photos: several crops per decode and random flips make the most of them.
  config.data.crops_per_image = 4
  config.data.augment = True
  config.model.preset = 'tiny'
  config.model.dtype = 'float32'
  config.total_steps = 300
  config.optimizer.lr = 1e-3
  config.optimizer.schedule = 'cosine'  # Over 300 steps, not ImageNet epochs.
  config.optimizer.end_lr = 1e-4
  config.loss.contrastive_patches = 8  # Sampled: fast.
  config.loss.contrastive_group = 0  # One loss over the batch.
  config.log_every = 25
  config.eval_every = 100
  config.eval.num_examples = 16
  config.checkpoint_every = 100
  return config
