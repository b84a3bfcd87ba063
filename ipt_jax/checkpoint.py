"""Orbax checkpoints: params directories, training checkpoints, loading from any path.

Every checkpoint directory holds the model config beside the params, so a path alone is
enough to rebuild the model:
  <dir>/params          Flax params (orbax)
  <dir>/model           the IPT fields as JSON (`ipt.to_config`)
  <dir>/checksums.json  size and SHA-256 of every file, checked before loading (`integrity`)
A training run's `<workdir>/checkpoints/<step>` directories have this layout too, plus
<step>/train (step and optimiser state).
"""
import signal

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from ipt_jax import errors
from ipt_jax import files
from ipt_jax import integrity
from ipt_jax.models import ipt

PARAMS, MODEL = 'params', 'model'


def save_params(directory, model: ipt.IPT, params):
  """Writes params and the model config to a new `directory` (atomically: orbax renames)."""
  directory = files.absolute(directory)
  if directory.exists():
    raise errors.InputError(f'{directory} already exists; choose a new output directory.')
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    checkpointer.save(directory, ocp.args.Composite(**{
        PARAMS: ocp.args.StandardSave(params),
        MODEL: ocp.args.JsonSave(ipt.to_config(model))}))
  if jax.process_index() == 0:
    integrity.write_manifest(directory)


def abstract_params(model: ipt.IPT, sharding: jax.sharding.Sharding | None = None):
  """Shapes, dtypes and shardings of `model`'s params, the target to load them into."""
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
  shapes = jax.eval_shape(model.init_params, jax.random.key(0))
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def is_params_dir(path) -> bool:
  path = files.absolute(path)
  return (path / PARAMS).is_dir() and (path / MODEL).is_dir()


def step_dirs(root) -> list[epath.Path]:
  """Finished checkpoint step directories under `root`, newest first."""
  root = files.absolute(root)
  steps = [p for p in root.iterdir() if p.name.isdigit() and is_params_dir(p)]
  return sorted(steps, key=lambda p: int(p.name), reverse=True)


def read_model(directory) -> ipt.IPT:
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    config = checkpointer.restore(files.absolute(directory),
                                  ocp.args.Composite(**{MODEL: ocp.args.JsonRestore()}))[MODEL]
  return ipt.create(**config)


def load_params(directory, model: ipt.IPT, sharding: jax.sharding.Sharding | None = None):
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    restored = checkpointer.restore(files.absolute(directory), ocp.args.Composite(**{
        PARAMS: ocp.args.StandardRestore(abstract_params(model, sharding))}))
  return restored[PARAMS]


def find_params_dir(path) -> epath.Path:
  """The intact params directory that `path` names: itself, or the newest intact step of a
  training run (`path` a step, a `checkpoints` directory or a workdir; a damaged step is
  reported in one warning line and the one before it used)."""
  path = files.absolute(path)
  if not path.exists():
    raise errors.InputError(f'{path}: no such file or directory.')
  if is_params_dir(path):
    integrity.verify(path)
    return path
  if (path / 'checkpoints').is_dir():
    path = path / 'checkpoints'
  steps = step_dirs(path) if path.is_dir() else []
  if not steps:
    raise errors.InputError(
        f'{path}: not an IPT checkpoint. Expected an official .pt / .pth / .safetensors file, a '
        'params directory (params/ and model/, from ipt_jax.convert), a training checkpoint '
        'step, a checkpoints directory or a training workdir.')
  for step in steps:
    try:
      integrity.verify(step)
      return step
    except integrity.DamagedCheckpointError as e:
      logging.warning('%s Trying the step before it.', e)
  raise integrity.DamagedCheckpointError(
      f'{path}: every checkpoint step is damaged (see the warnings above).')


TRAIN = 'train'  # Item of a training step holding what resuming needs beyond params.
# Model fields a run may change when it resumes: how it computes, not what it learns.
_COMPUTE_FIELDS = ('dtype', 'attention_impl', 'dropout_rate', 'remat', 'scan_layers')


class TrainCheckpoints:
  """A training run's checkpoints: <workdir>/checkpoints/<step>/{params, model, train}.

  Saves asynchronously every `every` steps (and when forced), keeps the newest `keep`, and
  loads the newest readable step; works on local and gs:// paths.
  """

  def __init__(self, directory, model: ipt.IPT, *, every: int, keep: int):
    self._model_config = ipt.to_config(model)
    self._manager = ocp.CheckpointManager(
        files.absolute(directory),
        options=ocp.CheckpointManagerOptions(
            # Every `every` steps (and when forced: at the end, on pre-emption), no more.
            save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(every),
            # The directory is made by the first save: a run that fails to start leaves none.
            max_to_keep=keep, enable_async_checkpointing=True, create=False,
            # A save that did not finish (a full disk, a killed run) is a temporary folder.
            cleanup_tmp_directories=True),
        item_names=(PARAMS, MODEL, TRAIN))

  def save(self, step: int, state, *, force: bool = False) -> bool:
    """Starts saving `state` (a train.TrainState) as `step` when due or forced."""
    if not (force or self._manager.should_save(step)):
      return False
    with files.on_disk_full(self._filled_up):
      self._write_manifests()  # Of the earlier saves, now that they have committed.
      self._check_space(step, state)
      return self._manager.save(step, force=force, args=ocp.args.Composite(**{
          PARAMS: ocp.args.StandardSave(state.params),
          MODEL: ocp.args.JsonSave(self._model_config),
          TRAIN: ocp.args.StandardSave({'step': state.step, 'opt_state': state.opt_state})}))

  def _check_space(self, step: int, state):
    """Refuses to start a save that a local disk cannot hold (one process): a disk that
    fills up during a save is reported by orbax's and TensorStore's threads at length."""
    if jax.process_count() > 1:
      return
    need = sum(x.nbytes for x in jax.tree.leaves((state.params, state.opt_state)))
    try:
      files.check_space(self._manager.directory, need, f'the checkpoint of step {step}')
    except errors.DiskFullError as e:
      raise self._disk_full_error(str(e)) from None

  def _filled_up(self) -> errors.DiskFullError:
    """A full disk during a save (here or in orbax's background threads, reported at the next
    wait); the unfinished step is a temporary folder that the next run removes."""
    return self._disk_full_error('the disk filled up during a save')

  def _disk_full_error(self, why: str) -> errors.DiskFullError:
    self._manager.reload()
    steps = self._manager.all_steps()
    newest = f'the newest intact step is {max(steps)}' if steps else 'no step is saved yet'
    return errors.DiskFullError(
        f'{self._manager.directory}: not enough disk space: {why}; {newest}. Free some space '
        '(or lower --config.keep_checkpoints) and run the same command again to resume.')

  def _write_manifests(self):
    """Checksums for every committed step that has none yet (waits for a pending save)."""
    self._manager.wait_until_finished()
    if jax.process_index() == 0:
      for step in self._manager.all_steps():
        if not integrity.has_manifest(self._step_dir(step)):
          integrity.write_manifest(self._step_dir(step))

  def _step_dir(self, step: int) -> epath.Path:
    return epath.Path(self._manager.directory) / str(step)

  def _newest_intact_step(self) -> int | None:
    """The newest step whose files are intact; damaged ones are set aside as
    `damaged_<step>` with one warning line each."""
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        integrity.verify(self._step_dir(step))
        return step
      except integrity.DamagedCheckpointError as e:
        logging.warning('%s Set aside as damaged_%d; using the step before it.', e, step)
        if jax.process_index() == 0:
          self._step_dir(step).rename(self._step_dir(step).parent / f'damaged_{step}')
        multihost_utils.sync_global_devices('ipt_jax: damaged checkpoint set aside')
        self._manager.reload()
    return None

  def load_latest(self, abstract_state, shardings):
    """The newest intact state (shaped and sharded as given), or None when there is none.

    A step saved by another model config is an error naming the differing fields: resuming
    it would mix two runs, and starting over would hide the user's checkpoints.
    """
    step = self._newest_intact_step()
    if step is None:
      return None
    self._check_model_config(step)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          abstract_state, shardings)
    restored = self._manager.restore(step, args=ocp.args.Composite(**{
        PARAMS: ocp.args.StandardRestore(target.params),
        TRAIN: ocp.args.StandardRestore({'step': target.step, 'opt_state': target.opt_state})}))
    integrity.check_finite(restored[PARAMS], self._step_dir(step))
    logging.info('Loaded checkpoint step %d from %s.', step, self._manager.directory)
    return abstract_state.replace(params=restored[PARAMS], **restored[TRAIN])

  def _check_model_config(self, step: int):
    saved = self._manager.restore(step, args=ocp.args.Composite(**{
        MODEL: ocp.args.JsonRestore()}))[MODEL]
    differing = [f'{k}: saved {saved.get(k)!r}, now {v!r}'
                 for k, v in self._model_config.items()
                 if k not in _COMPUTE_FIELDS
                 and _comparable(saved.get(k), k) != _comparable(v, k)]
    if differing:
      raise errors.InputError(
          f'{self._manager.directory}/{step} was saved by another model config '
          f'({"; ".join(differing)}); run with the config it was trained with to resume, or '
          'give a new --workdir to start afresh.')

  def close(self):
    """Waits for pending saves, writes their checksums and releases the manager."""
    with files.on_disk_full(self._filled_up):
      self._write_manifests()
    self._manager.close()


def _comparable(value, field: str):
  # Parameters are saved by task name, so a run may list its tasks in another order.
  return sorted(value) if field == 'tasks' and value is not None else value


class PreemptionWatcher:
  """Tells the training loop when to save and stop: on SIGTERM, or on a TPU pre-emption notice.

  With several processes, JAX's distributed runtime receives the notice (SIGTERM included)
  and all processes agree on the step; a single process handles SIGTERM itself.
  """

  def __init__(self):
    self._signalled = False
    self._previous_handler = None
    if jax.process_count() == 1:
      self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

  def close(self):
    """Puts back the SIGTERM handler that was there before the run."""
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None

  def _on_sigterm(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM: saving a checkpoint at the end of this step.')
    self._signalled = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled
