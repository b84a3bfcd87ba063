"""The paper's pre-training in miniature: six tasks on 1,000 ImageNet photographs, 2 CPU cores.

  python -m ipt_jax.pack_imagenet --images=<folder of ImageNet JPEGs> \
      --output_dir=imagenet_pack --tfds_data_dir=tfds_data
  python -m ipt_jax.main --config=configs/mini_pretrain.py \
      --config.data.data_dir=tfds_data --workdir=runs/mini_pretrain

(or --config.data.source=folder:<the same JPEGs>). The recipe of configs/pretrain.py: all six
tasks, one random task per batch, L1 + 0.1 x contrastive over every patch, one Adam, each
gradient tensor clipped to norm 1, the learning rate halved after two thirds of the epochs, one
crop per image and epoch with no augmentation (as the official pre-training). Only the sizes
change: the model of configs/small_data.py, batch 16, a learning rate for that model, and 18
epochs of 990 images (halved after 12) instead of 300 of ImageNet's 1.28 million (halved after
200). About 40 minutes on 2 CPU cores. Fine-tune with configs/mini_finetune.py.
"""
from configs import pretrain
from configs import small_data


def get_config(arg=None):
  del arg
  config = pretrain.get_config()
  config.data.batch_size = 16
  config.data.shuffle_buffer = 1000

  config.model.update(small_data.MODEL)
  config.mesh.cpu_devices = small_data.CPU_DEVICES

  config.num_epochs = 18
  config.num_train_images = 990  # The pack's training split (pack_imagenet --val_images=10).
  config.optimizer.update(lr=5e-4, decay_epochs=(12,))
  config.loss.contrastive_group = 0  # One loss over the batch (officially: over 64 per device).
  config.log_every = 50
  config.eval_every = 250
  config.eval.num_examples = 32
  config.checkpoint_every = 250
  return config
