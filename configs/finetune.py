"""Fine-tuning a pre-trained IPT on one task, as in the paper: 30 epochs at 2e-5.

  python -m ipt_jax.finetune --config=configs/finetune.py:sr_x2 \
      --config.checkpoint=gs://bucket/ipt --workdir=gs://bucket/ipt_sr_x2

The argument after ':' is the task: one of the checkpoint's (its head, tail and task
embedding are kept, the others dropped) or a new one such as denoise_15 or sr_x8 (a fresh
head and tail on the pre-trained body). Data: DIV2K HR images from TFDS, degraded on the fly
(MATLAB bicubic, Gaussian noise or synthetic rain) as in pre-training; deraining can also
train on rainy / clean pairs (--config.data.source=pairs:/data/RainTrainL).
"""
from ml_collections import config_dict

from configs import pretrain


def get_config(arg=None):
  task = arg or 'sr_x2'
  config = pretrain.get_config()
  # The weights to start from, as --checkpoint of the other commands: a pre-training
  # checkpoint (workdir, checkpoints dir or step), a params directory from ipt_jax.convert,
  # or an official PyTorch .pt / .safetensors file.
  config.checkpoint = ''
  # Head order of a .pt checkpoint without the six pre-training heads, e.g. "('sr_x2',)".
  config.checkpoint_tasks = config_dict.placeholder(tuple)

  config.data.source = 'tfds:div2k/bicubic_x2:train'  # Only the 'hr' images are used.
  # derain: real pairs as the official fine-tuning, --config.data.source=pairs:<RainTrainL>.
  config.data.val_source = 'tfds:div2k/bicubic_x2:validation'
  config.data.image_key = 'hr'
  config.data.tasks = (task,)
  config.data.batch_size = 64
  config.data.shuffle_buffer = 800

  # Sizes come from the checkpoint; these fields apply on top. num_heads: that of a .pt
  # checkpoint (not visible in its shapes; default 12).
  del config.model.preset
  config.model.num_heads = config_dict.placeholder(int)
  # EDSR / the official IPT code count an epoch as 1000 steps (--test_every).
  config.total_steps = 30 * 1000
  config.optimizer.lr = 2e-5
  config.optimizer.decay_epochs = ()  # Constant, as the official fine-tuning.
  config.loss.contrastive_weight = 0.  # L1 only when fine-tuning.
  config.log_every = 100
  config.eval_every = 1000
  config.checkpoint_every = 1000
  return config
