"""Fine-tuning after configs/mini_pretrain.py, and the same training from scratch as its control.

  python -m ipt_jax.finetune --config=configs/mini_finetune.py:sr_x2 \
      --config.checkpoint=runs/mini_pretrain --config.data.source=folder:/data/SR291 \
      --workdir=runs/mini_finetune_sr_x2
  python -m ipt_jax.main --config=configs/mini_finetune.py:sr_x2 \
      --config.data.source=folder:/data/SR291 --workdir=runs/mini_scratch_sr_x2

The argument after ':' is the task. Through ipt_jax.finetune the model starts from the
pre-training checkpoint; through ipt_jax.main (no checkpoint) the same model starts from random
weights, with the same data, batch, schedule and steps: the difference is what pre-training is
worth. The schedule is that of configs/small_data.py (tuned for training from scratch), so the
control is not handicapped. About 14 minutes on 2 CPU cores.
"""
from ml_collections import config_dict

from configs import small_data


def get_config(arg=None):
  config = small_data.get_config(arg)
  config.checkpoint = ''  # Used by ipt_jax.finetune only; ipt_jax.main refuses it.
  config.checkpoint_tasks = config_dict.placeholder(tuple)
  config.total_steps = 500
  config.eval_every = 50
  config.checkpoint_every = 250
  return config
