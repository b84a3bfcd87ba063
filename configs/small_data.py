"""One task from scratch on a small set of photographs, in 30 minutes on 2 CPU cores.

  python -m ipt_jax.main --config=configs/small_data.py:sr_x2 \
      --config.data.source=folder:/data/SR291 --workdir=runs/sr_x2
  python -m ipt_jax.evaluate --checkpoint=runs/sr_x2 --tasks=sr_x2 --data_dir=/data/benchmark \
      --sets=Set5,Set14

The argument after ':' is the task (sr_x2, denoise_30, ...). The training images are a required
override (e.g. the 291 classic SR training photographs, T91 + BSDS300 train); validation uses
crops of two photographs bundled with scikit-image, held out from training. The model, batch and
learning rate were chosen by short runs for what learns fastest in the time (docs/training.md).
"""
from ml_collections import config_dict

from configs import pretrain

# The small preset with one encoder and one decoder layer: in 5-minute trials it beat the
# small preset (4 + 4 layers, 3x slower steps) and a narrower two-layer model (docs/training.md).
MODEL = dict(preset='small', num_layers=1, dtype='float32')
CPU_DEVICES = 2  # One per core: both cores run every op (6% faster steps, BENCHMARKS.md).


def get_config(arg=None):
  task = arg or 'sr_x2'
  config = pretrain.get_config()
  config.data.source = config_dict.placeholder(str)  # Required: folder:<photographs>.
  config.data.val_source = 'samples:validation'
  config.data.tasks = (task,)
  config.data.batch_size = 16
  config.data.shuffle_buffer = 64
  config.data.crops_per_image = 8
  config.data.augment = True  # As the official fine-tuning of SR and deraining.

  config.model.update(MODEL)
  config.mesh.cpu_devices = CPU_DEVICES

  config.total_steps = 1800  # 31 minutes on 2 vCPUs with AVX-512 (docs/training.md).
  config.optimizer.update(lr=5e-4, schedule='cosine', end_lr=1e-5, warmup_steps=20)
  config.loss.contrastive_weight = 0.  # One task from scratch: L1 alone.
  config.log_every = 50
  config.eval_every = 100
  config.eval.num_examples = 32
  config.checkpoint_every = 450
  return config
