"""IPT pre-training as in the paper: six tasks on ImageNet, batch 256, 300 epochs.

  python -m ipt_jax.main --config=configs/pretrain.py --workdir=gs://bucket/ipt \
      --config.data.data_dir=gs://bucket/tensorflow_datasets
"""
import ml_collections

from ipt_jax import tasks
from ipt_jax.data import pipeline


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = pipeline.default_config()
  config.data.source = 'tfds:imagenet2012:train'
  config.data.val_source = 'tfds:imagenet2012:validation'
  config.data.tasks = tasks.PRETRAIN_NAMES
  config.data.batch_size = 256  # Global.
  config.data.shuffle_buffer = 10_000

  # A preset name plus any IPT field (ipt_jax/models/ipt.py). bfloat16 compute with float32
  # parameters is the accelerator setting; use float32 on CPU.
  config.model = ml_collections.ConfigDict(dict(
      preset='paper', dtype='bfloat16', param_dtype='float32', attention_impl=None))

  # Length: total_steps, or num_epochs over num_train_images at the global batch size.
  config.num_epochs = 300
  config.num_train_images = 1_281_167  # ImageNet-1k train.
  config.total_steps = None

  config.optimizer = ml_collections.ConfigDict(dict(
      lr=5e-5, end_lr=2e-5, warmup_steps=0, b1=0.9, b2=0.999, eps=1e-8,
      grad_clip=1.0))  # As the MindSpore release; 0 turns clipping off.
  config.loss = ml_collections.ConfigDict(dict(
      contrastive_weight=0.1, temperature=0.07,
      contrastive_patches=16))  # Patches sampled per image for the contrastive loss.
  config.max_nonfinite_steps = 10  # Non-finite steps in a row before training stops.

  config.mesh = ml_collections.ConfigDict(dict(fsdp=1))
  config.distributed = 'auto'  # 'on' for multi-host Cloud TPU (see ipt_jax/parallel.py).

  config.log_every = 100
  config.eval_every = 5_000
  config.eval = ml_collections.ConfigDict(dict(num_examples=64))  # Held-out crops per task.
  config.checkpoint_every = 2_000
  config.keep_checkpoints = 3
  return config
