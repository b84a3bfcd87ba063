"""Orbax checkpoints: params directories, training checkpoints, loading from any path.

Every checkpoint directory holds the model config beside the params, so a path alone is
enough to rebuild the model:
  <dir>/params   Flax params (orbax)
  <dir>/model    the IPT fields as JSON (`ipt.to_config`)
A training run's `<workdir>/checkpoints/<step>` directories have this layout too.
"""
from collections.abc import Sequence
import os
import signal

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from ipt_jax.models import ipt

PARAMS, MODEL = 'params', 'model'
TORCH_SUFFIXES = ('.pt', '.pth', '.safetensors')


def save_params(directory, model: ipt.IPT, params):
  """Writes params and the model config to a new `directory` (atomically: orbax renames)."""
  directory = epath.Path(directory)
  if directory.exists():
    raise FileExistsError(f'{directory} already exists; choose a new output directory.')
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    checkpointer.save(directory, ocp.args.Composite(**{
        PARAMS: ocp.args.StandardSave(params),
        MODEL: ocp.args.JsonSave(ipt.to_config(model))}))


def abstract_params(model: ipt.IPT, sharding: jax.sharding.Sharding | None = None):
  """Shapes, dtypes and shardings of `model`'s params, a restore target."""
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
  shapes = jax.eval_shape(model.init_params, jax.random.key(0))
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def is_params_dir(path) -> bool:
  path = epath.Path(path)
  return (path / PARAMS).is_dir() and (path / MODEL).is_dir()


def step_dirs(root) -> list[epath.Path]:
  """Finished checkpoint step directories under `root`, newest first."""
  root = epath.Path(root)
  steps = [p for p in root.iterdir() if p.name.isdigit() and is_params_dir(p)]
  return sorted(steps, key=lambda p: int(p.name), reverse=True)


def read_model(directory, **overrides) -> ipt.IPT:
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    config = checkpointer.restore(epath.Path(directory),
                                  ocp.args.Composite(**{MODEL: ocp.args.JsonRestore()}))[MODEL]
  return ipt.from_config(config, **overrides)


def restore_params(directory, model: ipt.IPT, sharding: jax.sharding.Sharding | None = None):
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    restored = checkpointer.restore(epath.Path(directory), ocp.args.Composite(**{
        PARAMS: ocp.args.StandardRestore(abstract_params(model, sharding))}))
  return restored[PARAMS]


def load_params(path, *, tasks: Sequence[str] | None = None,
                sharding: jax.sharding.Sharding | None = None,
                **model_overrides) -> tuple[ipt.IPT, dict]:
  """(model, params) from any checkpoint path.

  `path` is one of: an official PyTorch .pt / .pth or a .safetensors file (`tasks` and
  `num_heads` as in `convert.from_torch`), a params directory written by
  `python -m ipt_jax.convert`, one training checkpoint step, a training run's
  `checkpoints` directory or its workdir (the newest readable step is used).
  `model_overrides` replace model fields that do not change parameters (e.g. dtype).
  """
  path = epath.Path(path)
  if path.suffix in TORCH_SUFFIXES:
    from ipt_jax import convert  # pylint: disable=g-import-not-at-top  (convert imports this module)
    model, params = convert.from_torch(os.fspath(path), tasks, **model_overrides)
    return model, jax.device_put(params, sharding)
  for candidate in _candidate_dirs(path):
    try:
      model = read_model(candidate, **model_overrides)
      return model, restore_params(candidate, model, sharding)
    except Exception as e:  # A damaged step: fall back to the previous one.
      logging.warning('Could not read checkpoint %s (%s); trying an older one.', candidate, e)
  raise ValueError(f'No readable IPT checkpoint at {path}: expected a .pt/.safetensors file, a '
                   'params directory (from ipt_jax.convert), a checkpoint step, a checkpoints '
                   'directory or a training workdir.')


def _candidate_dirs(path: epath.Path) -> list[epath.Path]:
  if not path.exists():
    raise FileNotFoundError(f'Checkpoint path {path} does not exist.')
  if is_params_dir(path):
    return [path]
  if (path / 'checkpoints').is_dir():
    path = path / 'checkpoints'
  return step_dirs(path) if path.is_dir() else []


TRAIN = 'train'  # Item of a training step holding what resuming needs beyond params.


class TrainCheckpoints:
  """A training run's checkpoints: <workdir>/checkpoints/<step>/{params, model, train}.

  Saves asynchronously every `every` steps (and when forced), keeps the newest `keep`, and
  restores the newest readable step; works on local and gs:// paths.
  """

  def __init__(self, directory, model: ipt.IPT, *, every: int, keep: int):
    self._model_config = ipt.to_config(model)
    self._manager = ocp.CheckpointManager(
        epath.Path(directory),
        options=ocp.CheckpointManagerOptions(
            # Every `every` steps (and when forced: at the end, on pre-emption), no more.
            save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(every),
            max_to_keep=keep, enable_async_checkpointing=True),
        item_names=(PARAMS, MODEL, TRAIN))

  def save(self, step: int, state, *, force: bool = False) -> bool:
    """Starts saving `state` (a train.TrainState) as `step` when due or forced."""
    return self._manager.save(step, force=force, args=ocp.args.Composite(**{
        PARAMS: ocp.args.StandardSave(state.params),
        MODEL: ocp.args.JsonSave(self._model_config),
        TRAIN: ocp.args.StandardSave({'step': state.step, 'opt_state': state.opt_state})}))

  def restore_latest(self, abstract_state, shardings):
    """The newest readable state (shaped and sharded as given), or None when there is none.

    A step that cannot be read (damaged, half-copied) is reported, moved aside as
    `unreadable_<step>` and the previous one is tried.
    """
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          abstract_state, shardings)
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(**{
            PARAMS: ocp.args.StandardRestore(target.params),
            TRAIN: ocp.args.StandardRestore({'step': target.step,
                                             'opt_state': target.opt_state})}))
      except Exception as e:  # Any damage: fall back to the previous step.
        logging.warning('Checkpoint step %d in %s is unreadable (%s: %s); using the previous '
                        'one.', step, self._manager.directory, type(e).__name__, e)
        self._set_aside(step)
        continue
      logging.info('Restored checkpoint step %d from %s.', step, self._manager.directory)
      return abstract_state.replace(params=restored[PARAMS], **restored[TRAIN])
    return None

  def _set_aside(self, step: int):
    if jax.process_index() == 0:
      source = epath.Path(self._manager.directory) / str(step)
      source.rename(source.parent / f'unreadable_{step}')
    self._manager.reload()

  def close(self):
    """Waits for pending saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()


class PreemptionWatcher:
  """Tells the training loop when to save and stop: on SIGTERM, or on a TPU pre-emption notice.

  With several processes, JAX's distributed runtime receives the notice (SIGTERM included)
  and all processes agree on the step; a single process handles SIGTERM itself.
  """

  def __init__(self):
    self._signalled = False
    if jax.process_count() == 1:
      signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM: saving a checkpoint at the end of this step.')
    self._signalled = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled
