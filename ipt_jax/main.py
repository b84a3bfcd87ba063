"""Pre-training entry point.

  python -m ipt_jax.main --config=configs/pretrain.py --workdir=gs://bucket/ipt
  python -m ipt_jax.main --config=configs/quickstart.py --workdir=/tmp/ipt_quickstart

Any config field can be overridden, e.g. --config.data.batch_size=512. Running the same
command again resumes from the newest checkpoint in <workdir>/checkpoints.
"""
from absl import flags
from ml_collections import config_flags

from ipt_jax import cli
from ipt_jax import parallel
from ipt_jax import train


def main(argv):
  cli.check_no_arguments(argv)
  parallel.initialize(FLAGS.config.distributed)
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'Training configuration file.',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory (local or gs://) for checkpoints and '
                      'TensorBoard events.')
  flags.mark_flags_as_required(['config', 'workdir'])
  FLAGS = flags.FLAGS
  cli.run(main)
