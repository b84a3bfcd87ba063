"""The optimiser: Adam with the official gradient clipping, and the learning-rate schedules.

`make(config, model, schedule)` builds it from `config.optimizer`; `learning_rate` the
schedule over `total_steps(config)`. The official recipe (docs/recipe.md): one Adam over all
parameters, each parameter tensor's gradient clipped to norm 1 on its own, the learning rate
halved at epoch 200 of 300.
"""
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ipt_jax import errors
from ipt_jax.models import ipt

SHARED = 'shared'  # Optimiser group of the parameters every task trains.


def total_steps(config: ml_collections.ConfigDict) -> int:
  """config.total_steps, or num_epochs over num_train_images at the global batch size."""
  if config.get('total_steps'):
    return config.total_steps
  return int(np.ceil(config.num_epochs * config.num_train_images / config.data.batch_size))


def learning_rate(config: ml_collections.ConfigDict, steps: int) -> optax.Schedule:
  """optimizer.schedule: 'step' (the official one: lr times decay_factor at each of
  decay_epochs) or 'cosine' (lr annealed to end_lr over `steps`), after an optional warm-up."""
  opt = config.optimizer
  if opt.schedule == 'step':
    steps_per_epoch = config.num_train_images / config.data.batch_size
    # Scaled from the first step of each epoch named.
    decay = optax.piecewise_constant_schedule(opt.lr, {
        round(epoch * steps_per_epoch) - opt.warmup_steps: opt.decay_factor
        for epoch in opt.decay_epochs})
  elif opt.schedule == 'cosine':
    decay = optax.cosine_decay_schedule(opt.lr, max(steps - opt.warmup_steps, 1),
                                        alpha=opt.end_lr / opt.lr)
  else:
    raise errors.InputError(f"optimizer.schedule={opt.schedule!r}: use 'step' (official) or "
                            "'cosine'.")
  if not opt.warmup_steps:
    return decay
  warmup = optax.linear_schedule(0., opt.lr, opt.warmup_steps)
  return optax.join_schedules([warmup, decay], [opt.warmup_steps])


def param_groups(params, model_tasks) -> Any:
  """The optimiser group of every parameter: its task's name, or SHARED."""
  def group(path, _):
    names = [getattr(k, 'key', str(k)) for k in path]
    return ipt.task_of_param(names, model_tasks) or SHARED
  return jax.tree_util.tree_map_with_path(group, params)


def _only_when_active(inner: optax.GradientTransformation, group: str):
  """Runs `inner` for the shared group and the step's task; leaves other tasks untouched."""
  def update(updates, state, params=None, *, active_task: str, **unused):
    if group in (SHARED, active_task):
      return inner.update(updates, state, params)
    return jax.tree.map(jnp.zeros_like, updates), state
  return optax.GradientTransformationExtraArgs(inner.init, update)


# An attention's query, key and value kernels: officially one packed in_proj tensor.
_PACKED_QKV = ('query', 'key', 'value')


def _clipped_tensor(path) -> tuple[str, ...]:
  """The official tensor a gradient belongs to: its own, or its attention's packed q/k/v."""
  names = tuple(getattr(k, 'key', str(k)) for k in path)
  if len(names) >= 2 and names[-2] in _PACKED_QKV and names[-1] == 'kernel':
    return names[:-2]
  return names


def clip_by_tensor_norm(max_norm: float) -> optax.GradientTransformation:
  """Scales each official parameter tensor's gradient to L2 norm at most `max_norm` on its own
  (MindSpore's ClipByNorm per parameter, as the official IPT training); an attention's query,
  key and value kernels are clipped together, as the one packed tensor they are there."""
  def update(updates, state, params=None):
    del params
    squares = {}
    for path, g in jax.tree_util.tree_leaves_with_path(updates):
      tensor = _clipped_tensor(path)
      squares[tensor] = squares.get(tensor, 0.) + jnp.sum(jnp.square(g.astype(jnp.float32)))

    def clip(path, g):
      norm = jnp.sqrt(squares[_clipped_tensor(path)])
      return (g * jnp.minimum(1., max_norm / jnp.maximum(norm, 1e-12))).astype(g.dtype)
    return jax.tree_util.tree_map_with_path(clip, updates), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _clipping(opt: ml_collections.ConfigDict) -> optax.GradientTransformation:
  if not opt.grad_clip:
    return optax.identity()
  if opt.clip == 'per_tensor':
    return clip_by_tensor_norm(opt.grad_clip)
  if opt.clip == 'global':
    return optax.clip_by_global_norm(opt.grad_clip)
  raise errors.InputError(f"optimizer.clip={opt.clip!r}: use 'per_tensor' (official) or "
                          "'global'.")


def make(config: ml_collections.ConfigDict, model: ipt.IPT,
         schedule: optax.Schedule) -> optax.GradientTransformationExtraArgs:
  """Gradient clipping, Adam and the schedule, skipping non-finite steps.

  One Adam over all parameters (official: inactive tasks' heads and tails move on their
  momentum), or with optimizer.per_task_state one Adam per task group, inactive tasks frozen.
  `update` takes the step's task name as the extra argument `active_task`.
  """
  opt = config.optimizer
  adam = lambda: optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps)
  if opt.per_task_state:
    groups = {g: _only_when_active(adam(), g) for g in (SHARED, *model.tasks)}
    adam_tx = optax.partition(groups, functools.partial(param_groups, model_tasks=model.tasks))
  else:
    adam_tx = adam()
  tx = optax.chain(_clipping(opt), adam_tx, optax.scale_by_learning_rate(schedule))
  # Never apply a non-finite update: the loop stops after config.max_nonfinite_steps.
  return optax.apply_if_finite(tx, max_consecutive_errors=np.iinfo(np.int32).max)
