"""Fine-tuning a pre-trained IPT on one task, with the official fine-tuning scripts' budgets.

  python -m ipt_jax.finetune --config=configs/finetune.py:sr_x2 \
      --config.checkpoint=gs://bucket/ipt --workdir=gs://bucket/ipt_sr_x2

The argument after ':' is the task: one of the checkpoint's (its head, tail and task
embedding are kept, the others dropped) or a new one such as denoise_15 or sr_x8 (a fresh
head and tail on the pre-trained body). Data: DIV2K HR images from TFDS, degraded on the fly
(MATLAB bicubic, Gaussian noise or synthetic rain) as in pre-training; deraining can also
train on rainy / clean pairs (--config.data.source=pairs:/data/RainTrainL).

Length, batch, learning rate and augmentation per task follow the official MindSpore
fine-tuning scripts (global batch 16 x 8, epochs of 16,000 samples, 2e-5 halved at epoch
200): denoising 100 epochs without augmentation, deraining 300, super-resolution (which has
no script) 100 as denoising. docs/recipe.md gives the sources and where they disagree.
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
  config.data.shuffle_buffer = 800
  # The official epoch repeats each of DIV2K's 800 images 16,000 // 800 = 20 times; cutting
  # 20 crops per decoded 2K PNG does the same at a 20th of the decoding.
  config.data.crops_per_image = 20

  # Sizes come from the checkpoint; these fields apply on top. num_heads: that of a .pt
  # checkpoint (not visible in its shapes; default 12).
  del config.model.preset
  config.model.num_heads = config_dict.placeholder(int)
  # An official epoch: 16 per device x test_every 1000 samples in all (docs/recipe.md).
  config.num_train_images = 16_000
  config.num_epochs = {'derain': 300}.get(task, 100)
  config.data.batch_size = 128
  config.data.augment = not task.startswith('denoise')  # Official denoising data: none.
  config.optimizer.lr = 2e-5  # Halved at epoch 200 (decay_epochs): only deraining gets there.
  config.loss.contrastive_weight = 0.  # L1 only when fine-tuning.
  config.log_every = 100
  config.eval_every = 1000
  config.checkpoint_every = 1000
  return config
