"""Fine-tuning entry point: one task on a pre-trained IPT.

  python -m ipt_jax.finetune --config=configs/finetune.py:sr_x2 \
      --config.checkpoint=<pre-training workdir | params dir | official .pt> --workdir=...

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

from ipt_jax import cli
from ipt_jax import errors
from ipt_jax import supervise
from ipt_jax import tasks as tasks_lib
from ipt_jax import train
from ipt_jax import weights
from ipt_jax.models import ipt

CONFIG = cli.config_flag()
WORKDIR = cli.workdir_flag()


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
  """The one-task model and its starting parameters from `config.checkpoint`."""
  if not config.checkpoint:
    raise errors.InputError('Set --config.checkpoint to a pre-training checkpoint (workdir or '
                            'checkpoints directory), a params directory from ipt_jax.convert '
                            'or an official .pt.')
  if len(config.data.tasks) != 1:
    raise errors.InputError(f'Fine-tuning trains one task; data.tasks is '
                            f'{tuple(config.data.tasks)}. Name it after the config: '
                            '--config=configs/finetune.py:sr_x2.')
  task = tasks_lib.get(config.data.tasks[0]).name
  # model.num_heads is that of the checkpoint (a PyTorch file does not record it).
  model_fields = dict(config.model)
  pretrained_model, pretrained = weights.load(
      config.checkpoint, checkpoint_tasks=config.checkpoint_tasks,
      num_heads=model_fields.pop('num_heads', None))
  model = ipt.create(**{**ipt.to_config(pretrained_model), **model_fields, 'tasks': (task,)})
  fresh = None
  if task not in pretrained_model.tasks:
    logging.info('%s is not one of the checkpoint\'s tasks (%s): it starts with a fresh head, '
                 'tail and task embedding.', task, ', '.join(pretrained_model.tasks))
    fresh = model.init_params(jax.random.key(config.seed))
  return model, single_task_params(jax.device_get(pretrained), pretrained_model.tasks, task,
                                   fresh)


def finetune(config: ml_collections.ConfigDict, workdir: str) -> train.TrainState:
  """Fine-tunes (or resumes fine-tuning) as `config` says; returns the final state."""
  train.check_config(config)  # Before the checkpoint is loaded.
  model, params = init_model(config)
  return train.train_and_evaluate(config, workdir, model=model, init_params=params)


def main(argv):
  cli.check_no_arguments(argv)
  supervise.run(CONFIG.value, WORKDIR.value, lambda: finetune(CONFIG.value, WORKDIR.value))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  cli.run(main)
