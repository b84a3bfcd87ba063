"""Pre-training entry point.

  python -m ipt_jax.main --config=configs/pretrain.py --workdir=gs://bucket/ipt
  python -m ipt_jax.main --config=configs/quickstart.py --workdir=/tmp/ipt_quickstart

Any config field can be overridden, e.g. --config.data.batch_size=512. Running the same
command again resumes from the newest checkpoint in <workdir>/checkpoints.
"""
from absl import flags

from ipt_jax import cli
from ipt_jax import errors
from ipt_jax import supervise
from ipt_jax import train

CONFIG = cli.config_flag()
WORKDIR = cli.workdir_flag()


def main(argv):
  cli.check_no_arguments(argv)
  if CONFIG.value.get('checkpoint'):  # A fine-tuning config run here trains from scratch.
    raise errors.FlagError('ipt_jax.main trains from random weights and would ignore '
                           'config.checkpoint; start from it with python -m ipt_jax.finetune.')
  supervise.run(CONFIG.value, WORKDIR.value,
                lambda: train.train_and_evaluate(CONFIG.value, WORKDIR.value))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  cli.run(main)
