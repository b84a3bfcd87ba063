"""Fine-tuning entry point: one task on a pre-trained IPT.

  python -m ipt_jax.finetune --config=configs/finetune.py:sr_x2 \
      --config.init=<pre-training workdir | params dir | official .pt> --workdir=...

The chosen task keeps its head, tail and task embedding from the checkpoint and the other
tasks' are dropped (as in the paper); a task the checkpoint does not have gets a fresh head,
tail and embedding on the pre-trained body. Training, metrics, checkpoints and exact resume
are those of pre-training (`train.train_and_evaluate`); the checkpoints load anywhere a
checkpoint path is taken (evaluate, restore, convert, a further fine-tuning).
"""
from absl import flags
from absl import logging
import jax
import ml_collections

from ipt_jax import checkpoint
from ipt_jax import cli
from ipt_jax import parallel
from ipt_jax import tasks as tasks_lib
from ipt_jax import train
from ipt_jax.models import ipt


def single_task_params(pretrained, pretrained_tasks, task: str, fresh) -> dict:
  """The pre-trained body with `task`'s head, tail and embedding: from `pretrained` when it
  has the task, else from `fresh` (initialised parameters of the one-task model)."""
  source = pretrained if task in pretrained_tasks else fresh
  body = {name: value for name, value in pretrained['body'].items()
          if ipt.task_of_param([name], pretrained_tasks) is None}
  body[f'query_embed_{task}'] = source['body'][f'query_embed_{task}']
  return {'body': body, f'head_{task}': source[f'head_{task}'],
          f'tail_{task}': source[f'tail_{task}']}


def init_model(config: ml_collections.ConfigDict) -> tuple[ipt.IPT, dict]:
  """The one-task model and its starting parameters from `config.init`."""
  if not config.init:
    raise ValueError('Set --config.init to a pre-training checkpoint (workdir or checkpoints '
                     'directory), a params directory from ipt_jax.convert or an official .pt.')
  if len(config.data.tasks) != 1:
    raise ValueError(f'Fine-tuning trains one task; data.tasks is {tuple(config.data.tasks)}. '
                     'Name it after the config: --config=configs/finetune.py:sr_x2.')
  task = tasks_lib.get(config.data.tasks[0]).name
  overrides = {} if config.init_num_heads is None else {'num_heads': config.init_num_heads}
  pretrained_model, pretrained = checkpoint.load_params(
      config.init, tasks=config.init_tasks, **overrides)
  fields = {**ipt.to_config(pretrained_model), **config.model, 'tasks': (task,)}
  model = ipt.from_config(fields)
  fresh = None
  if task not in pretrained_model.tasks:
    logging.info('%s is not one of the checkpoint\'s tasks (%s): it starts with a fresh head, '
                 'tail and task embedding.', task, ', '.join(pretrained_model.tasks))
    fresh = model.init_params(jax.random.key(config.seed))
  return model, single_task_params(jax.device_get(pretrained), pretrained_model.tasks, task,
                                   fresh)


def finetune(config: ml_collections.ConfigDict, workdir: str) -> train.TrainState:
  """Fine-tunes (or resumes fine-tuning) as `config` says; returns the final state."""
  model, params = init_model(config)
  return train.train_and_evaluate(config, workdir, model=model, init_params=params)


def main(argv):
  cli.check_no_arguments(argv)
  parallel.initialize(FLAGS.config.distributed)
  finetune(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  cli.define_training_flags('Fine-tuning configuration file, with the task after a colon: '
                            'configs/finetune.py:sr_x2.')
  FLAGS = flags.FLAGS
  cli.run(main)
