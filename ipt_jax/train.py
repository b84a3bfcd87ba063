"""Train state, train step and the training loop shared by pre-training and fine-tuning.

One jitted step per task (the task is static): only that task's head, tail and query
embedding take part, with the shared body; the optimiser (`optimizer.make`) is the official
single Adam over all parameters unless the config asks for moments per task. Non-finite steps
are skipped and counted; too many in a row stop the run.
"""
from collections.abc import Callable
import functools
import sys
import time
from typing import Any

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ipt_jax import checkpoint
from ipt_jax import claim
from ipt_jax import errors
from ipt_jax import losses
from ipt_jax import metrics as metrics_lib
from ipt_jax import optimizer
from ipt_jax import parallel
from ipt_jax import progress
from ipt_jax import quiet
from ipt_jax import tasks as tasks_lib
from ipt_jax.data import degrade
from ipt_jax.models import ipt

@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: optax.OptState


def build_model(config: ml_collections.ConfigDict) -> ipt.IPT:
  """The IPT of `config.model` (a preset name plus field overrides) for `config.data.tasks`."""
  return ipt.create(**config.model, tasks=config.data.tasks)


def check_config(config: ml_collections.ConfigDict):
  """Refuses settings that cannot train, before anything is loaded or written."""
  for name in ('source', 'val_source'):
    if not config.data[name]:
      raise errors.InputError(f'config.data.{name} is not set: name the images, e.g. '
                              f'--config.data.{name}=folder:<path> (see docs/data.md).')
  positive = {'data.batch_size': config.data.batch_size, 'log_every': config.log_every,
              'eval_every': config.eval_every, 'checkpoint_every': config.checkpoint_every,
              'keep_checkpoints': config.keep_checkpoints, 'eval.num_examples':
              config.eval.num_examples, 'max_nonfinite_steps': config.max_nonfinite_steps,
              'optimizer.lr': config.optimizer.lr, 'optimizer.eps': config.optimizer.eps,
              'loss.temperature': config.loss.temperature}
  if config.get('total_steps') is None:
    positive.update({'num_epochs': config.num_epochs,
                     'num_train_images': config.num_train_images})
  else:
    positive['total_steps'] = config.total_steps
  non_negative = {'optimizer.end_lr': config.optimizer.end_lr,
                  'optimizer.warmup_steps': config.optimizer.warmup_steps,
                  'optimizer.grad_clip': config.optimizer.grad_clip,
                  'loss.contrastive_weight': config.loss.contrastive_weight}
  for bound, fields in ((0, positive), (-1, non_negative)):
    for name, value in fields.items():
      if not (np.isfinite(value) and value > bound):
        raise errors.InputError(f'config.{name} is {value}; it must be a '
                                f'{"positive" if bound == 0 else "non-negative"} number '
                                f'(--config.{name}=...).')
  for name in ('b1', 'b2'):
    if not 0 <= config.optimizer[name] < 1:
      raise errors.InputError(f'config.optimizer.{name} is {config.optimizer[name]}; Adam\'s '
                              'decay rates lie in [0, 1).')


def _initial_state(params, tx: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros([], jnp.int32), params=params, opt_state=tx.init(params))


def abstract_train_state(model: ipt.IPT, tx: optax.GradientTransformation,
                         config: ml_collections.ConfigDict, params=None) -> TrainState:
  """The shapes and dtypes of `create_train_state`'s result, computing nothing."""
  if params is None:
    params = jax.eval_shape(model.init_params, jax.random.key(config.seed))
  return jax.eval_shape(functools.partial(_initial_state, tx=tx), params)


def create_train_state(model: ipt.IPT, tx: optax.GradientTransformation, mesh,
                       config: ml_collections.ConfigDict, params=None) -> TrainState:
  """A sharded TrainState at step 0, from fresh parameters (config.seed) or the given ones."""
  if params is None:  # Every process draws the same values from the seed.
    params = model.init_params(jax.random.key(config.seed))
  shardings = state_shardings(mesh, abstract_train_state(model, tx, config, params), config)
  return jax.jit(functools.partial(_initial_state, tx=tx), out_shardings=shardings)(params)


def state_shardings(mesh, abstract_state: TrainState,
                    config: ml_collections.ConfigDict) -> TrainState:
  return parallel.tree_shardings(mesh, abstract_state, config.mesh.fsdp_min_size_mb)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: ipt.IPT,
               tx: optax.GradientTransformationExtraArgs, task: int, schedule: optax.Schedule,
               loss_config: ml_collections.ConfigDict, seed: int):
  """One optimisation step on a batch of `task`: {'lq', 'hq'} NHWC on the [0, 255] scale (uint8
  or float) and optionally 'image_id' [B], the source image of each example (without it every
  example is its own image): patches of one image are the contrastive positives."""
  # Randomness is a function of (seed, step): a resumed run draws the same numbers.
  patch_rng, dropout_rng = jax.random.split(jax.random.fold_in(jax.random.key(seed), state.step))
  lq = batch['lq'].astype(jnp.float32)
  hq = batch['hq'].astype(jnp.float32)
  image_ids = batch.get('image_id')

  def loss_fn(params):
    out, features = model.apply({'params': params}, lq, task=task, train=True,
                                return_features=True, rngs={'dropout': dropout_rng})
    l1 = losses.l1(out, hq)
    contrastive = jnp.zeros([], jnp.float32)
    if loss_config.contrastive_weight:
      patches = losses.sample_patches(features, patch_rng, loss_config.contrastive_patches)
      contrastive = losses.grouped_contrastive(patches, image_ids, loss_config.temperature,
                                               loss_config.contrastive_group)
    return l1 + loss_config.contrastive_weight * contrastive, {'l1': l1,
                                                                 'contrastive': contrastive}

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params,
                                 active_task=model.tasks[task])
  params = optax.apply_updates(state.params, updates)
  step_metrics = {
      'loss': loss, **aux, 'grad_norm': optax.tree.norm(grads),
      'learning_rate': schedule(state.step),
      'nonfinite_in_a_row': opt_state.notfinite_count,
      'skipped_steps': opt_state.total_notfinite,
  }
  return TrainState(state.step + 1, params, opt_state), step_metrics


def make_train_steps(model, tx, schedule, config, mesh, abstract_state) -> dict[int, Callable]:
  """A jitted, state-donating train step per task index (compiled on first use)."""
  shardings = state_shardings(mesh, abstract_state, config)
  batch_shardings = parallel.batch_sharding(mesh)  # Every array of the batch dict, any keys.
  return {task: jax.jit(
      functools.partial(train_step, model=model, tx=tx, task=task, schedule=schedule,
                        loss_config=config.loss, seed=config.seed),
      in_shardings=(shardings, batch_shardings),
      out_shardings=(shardings, parallel.replicated(mesh)),
      donate_argnums=0) for task in range(len(model.tasks))}


def make_eval_step(model: ipt.IPT, task: int):
  """Model output (float32, unclipped) for a batch of lq inputs of `task`."""
  return jax.jit(lambda params, lq: model.apply({'params': params}, lq.astype(jnp.float32),
                                                task=task).astype(jnp.float32))


def _mean_psnr(quantised: np.ndarray, hq: np.ndarray, task: tasks_lib.Task) -> float:
  return float(np.mean(metrics_lib.psnr_y(quantised, hq, metrics_lib.border_shave(task))))


def evaluate(model, params, eval_steps, eval_batches, mesh) -> tuple[dict, dict]:
  """Y-PSNR per task on held-out crops, and (input | output | target) sample images."""
  scalars, images = {}, {}
  for task, name in enumerate(model.tasks):
    lq, hq = eval_batches[name]['lq'], eval_batches[name]['hq']
    lq_global = jax.make_array_from_process_local_data(parallel.replicated(mesh), lq)
    out = metrics_lib.quantise(eval_steps[task](params, lq_global).addressable_data(0))
    task_info = tasks_lib.get(name)
    scalars[f'val/psnr_{name}'] = _mean_psnr(out, hq, task_info)
    scale = task_info.scale
    upsampled = np.repeat(np.repeat(lq[:4], scale, axis=1), scale, axis=2)
    images[f'val/{name}'] = np.concatenate([upsampled, out[:4], hq[:4]], axis=2).astype(np.uint8)
  return scalars, images


def baseline_psnr(tasks: tuple[str, ...], eval_batches) -> dict[str, float]:
  """Y-PSNR per task of the baseline on the held-out crops: MATLAB-bicubic upscaling for SR,
  the (noisy, rainy) input itself otherwise; what the model's validation is to beat."""
  psnr = {}
  for name in tasks:
    task, lq = tasks_lib.get(name), eval_batches[name]['lq']
    psnr[name] = _mean_psnr(metrics_lib.quantise(degrade.baseline(lq, task.scale)),
                            eval_batches[name]['hq'], task)
  return psnr


class NonFiniteError(errors.InputError):
  """Training diverged: too many non-finite steps in a row."""


def _check_finite(nonfinite_in_a_row, step: int, limit: int):
  count = int(nonfinite_in_a_row)
  if count >= limit:
    raise NonFiniteError(
        f'{count} non-finite losses or gradients in a row (up to step {step}); their updates '
        'were skipped and training stops. Lower the learning rate or check the data, then '
        'run again to resume from the last checkpoint.')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       model: ipt.IPT | None = None, init_params=None) -> TrainState:
  """Trains `model` (default: `build_model(config)`) and returns the final state.

  Resumes from the newest readable checkpoint in <workdir>/checkpoints. `init_params`
  (fine-tuning) are only used when there is no checkpoint yet. One run at a time per
  workdir (`claim`).
  """
  started = time.perf_counter()
  # TensorFlow (input pipeline, TensorBoard) is imported here only, so that the model and
  # the train step above run where TensorFlow is not installed.
  with quiet.tensorflow_start_up():
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
    from ipt_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    pipeline.start_tensorflow()
  import tqdm  # pylint: disable=g-import-not-at-top

  check_config(config)
  logging.info('Config:\n%s', config)
  logging.info('JAX %s on %s: process %d of %d, %d devices (%d local: %s).', jax.__version__,
               jax.default_backend(), jax.process_index(), jax.process_count(),
               jax.device_count(), jax.local_device_count(), jax.local_devices()[0].device_kind)
  model = model or build_model(config)
  data_tasks = tuple(tasks_lib.get(name).name for name in config.data.tasks)
  if data_tasks != model.tasks:  # Batches name their task by its place in data.tasks.
    raise errors.InputError(
        f'data.tasks is {data_tasks} but the model\'s tasks are {model.tasks}; list the same '
        'tasks in the same order.')
  mesh = parallel.make_mesh(config.mesh.fsdp)
  parallel.check_batch_size(config.data.batch_size, mesh)
  steps = optimizer.total_steps(config)
  schedule = optimizer.learning_rate(config, steps)
  tx = optimizer.make(config, model, schedule)
  abstract_state = abstract_train_state(model, tx, config, init_params)
  # Held-out data first: a bad val_source fails before anything is read or written.
  eval_batches = pipeline.make_eval_batches(config.data, patch_size=model.patch_size,
                                            num_examples=config.eval.num_examples,
                                            seed=config.seed)
  baseline = baseline_psnr(model.tasks, eval_batches)
  logging.info('Validation on %d held-out crops per task from %s; Y-PSNR of the baseline (%s): '
               '%s.', config.eval.num_examples, config.data.val_source, progress.BASELINES,
               ', '.join(f'{t} {v:.2f}' for t, v in baseline.items()))
  checkpoints = checkpoint.TrainCheckpoints(
      f'{workdir}/checkpoints', model, every=config.checkpoint_every,
      keep=config.keep_checkpoints)
  # A run that resumes never initialises (or compiles the initialisation of) a fresh state.
  state = (checkpoints.load_latest(abstract_state, state_shardings(mesh, abstract_state, config))
           or create_train_state(model, tx, mesh, config, params=init_params))
  start = int(state.step)
  logging.info('Training %s from step %d to %d on %d devices (mesh %s); %s parameters.',
               ', '.join(model.tasks), start, steps, mesh.size, dict(mesh.shape),
               f'{ipt.count_params(state.params):,}')

  # The training images are opened before anything is written: a bad source leaves no workdir.
  batches = pipeline.make_train_iterator(config.data, patch_size=model.patch_size,
                                         seed=config.seed, start_step=start,
                                         process_index=jax.process_index(),
                                         process_count=jax.process_count())
  # Before anything is written there: a second run on the workdir refuses here.
  workdir_claim = claim.Claim(workdir)
  # TensorBoard events, from process 0; the log gets the `progress` lines instead of clu's.
  writer = metric_writers.AsyncMultiWriter(
      [metric_writers.SummaryWriter(workdir)] if jax.process_index() == 0 else [])
  if start == 0:
    writer.write_hparams(_flat_hparams(config))
  train_steps = make_train_steps(model, tx, schedule, config, mesh, abstract_state)
  eval_steps = {t: make_eval_step(model, t) for t in range(len(model.tasks))}
  preemption = checkpoint.PreemptionWatcher()
  bar = tqdm.tqdm(total=steps, initial=start, unit='step', dynamic_ncols=True,
                  disable=jax.process_index() > 0 or not sys.stderr.isatty())
  window_start, window_steps, per_task = time.perf_counter(), 0, {}
  step, nonfinite_in_a_row, preempted = start, 0, False
  mark, validation = None, None  # (time, step) of the first log line; (step, Y-PSNR per task).
  try:
    while step < steps:
      batch = next(batches)
      task = int(batch['task'])
      state, step_metrics = train_steps[task](
          state, parallel.global_batch(
              mesh, {k: batch[k] for k in ('lq', 'hq', 'image_id')}))
      # The previous step's counter: reading it keeps the device busy with this step.
      _check_finite(nonfinite_in_a_row, step, config.max_nonfinite_steps)
      nonfinite_in_a_row = step_metrics['nonfinite_in_a_row']
      step += 1
      window_steps += 1
      per_task.setdefault(model.tasks[task], []).append(step_metrics['loss'])
      bar.update()

      if step % config.log_every == 0 or step == steps:
        logged = jax.device_get(step_metrics)
        now = time.perf_counter()
        elapsed = now - window_start
        scalars = {k: float(v) for k, v in logged.items()}
        losses = jax.device_get(per_task)  # {task: the loss of each of its steps}
        scalars.update({f'loss_{t}': float(np.mean(v)) for t, v in losses.items()})
        scalars['images_per_sec'] = window_steps * config.data.batch_size / elapsed
        scalars['step_time'] = elapsed / window_steps
        writer.write_scalars(step, scalars)
        bar.set_postfix(loss=f'{scalars["loss"]:.3f}')
        pace = progress.seconds_per_step(now, step, mark, scalars['step_time'])
        mark = mark or (now, step)
        shown = model.tasks if len(model.tasks) > 1 else ()  # Losses per task, when several.
        progress.log(progress.training_line(
            step, steps, loss=float(np.mean(sum(losses.values(), []))),
            task_losses={t: scalars[f'loss_{t}'] for t in shown if t in losses},
            learning_rate=scalars['learning_rate'], images_per_second=scalars['images_per_sec'],
            seconds_left=(steps - step) * pace, skipped=int(scalars['skipped_steps'])))
        window_start, window_steps, per_task = time.perf_counter(), 0, {}

      if step % config.eval_every == 0 or step == steps:
        scalars, images = evaluate(model, state.params, eval_steps, eval_batches, mesh)
        writer.write_scalars(step, scalars)
        writer.write_images(step, images)
        validation = step, {t: scalars[f'val/psnr_{t}'] for t in model.tasks}
        progress.log(progress.validation_line(step, steps, validation[1], baseline))

      preempted = preemption.reached(step)
      checkpoints.save(step, state, force=step == steps or preempted)
      if preempted:
        logging.warning('Pre-empted: saved step %d. Run the same command again to resume.', step)
        break
    _check_finite(nonfinite_in_a_row, step, config.max_nonfinite_steps)
  finally:
    preemption.close()
    checkpoints.close()
    writer.flush()
    bar.close()
    workdir_claim.release()
  if jax.process_index() == 0:
    print(progress.training_summary(
        tasks=model.tasks, first_step=start, step=step, total=steps,
        seconds=time.perf_counter() - started, preempted=preempted, validation=validation,
        baseline=baseline, workdir=workdir), flush=True)
  return state


def _flat_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as TensorBoard hyperparameters: flat names, scalar values."""
  flat = flax.traverse_util.flatten_dict(config.to_dict(), sep='.')
  return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()}
