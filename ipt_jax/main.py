"""Pre-training entry point.

  python -m ipt_jax.main --config=configs/pretrain.py --workdir=gs://bucket/ipt
  python -m ipt_jax.main --config=configs/quickstart.py --workdir=/tmp/ipt_quickstart

Any config field can be overridden, e.g. --config.data.batch_size=512. Running the same
command again resumes from the newest checkpoint in <workdir>/checkpoints.
"""
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from ipt_jax import cli
from ipt_jax import parallel
from ipt_jax import train

config_flags.DEFINE_config_file('config', None, 'Training configuration file.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory (local or gs://) for checkpoints and '
                    'TensorBoard events.')
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise ValueError(f'Unexpected arguments: {" ".join(argv[1:])}.')
  config = FLAGS.config
  parallel.initialize(config.distributed)
  logging.info('Config:\n%s', config)
  logging.info('JAX %s on %s: process %d of %d, %d devices (%d local: %s).', jax.__version__,
               jax.default_backend(), jax.process_index(), jax.process_count(),
               jax.device_count(), jax.local_device_count(), jax.local_devices()[0].device_kind)
  train.train_and_evaluate(config, FLAGS.workdir)


if __name__ == '__main__':
  cli.run(main)
