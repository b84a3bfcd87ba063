"""Devices, meshes and shardings: one place for everything multi-device and multi-host.

The mesh has two axes: `data` (batch parallel) and `fsdp` (the batch is split over it too,
and large parameters and their optimiser moments are sharded over it). With the default
fsdp=1 training is plain data parallelism with replicated parameters.
"""
import os

from absl import logging
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from ipt_jax import errors
from ipt_jax import quiet

BATCH_AXES = ('data', 'fsdp')

# Environment that tells a run it is one of several processes (see `initialize`).
_EXPLICIT_ENV = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')


def initialize(mode: str = 'auto', cpu_devices: int = 0, *, heartbeat_timeout_seconds: int = 100,
               startup_timeout_seconds: int = 300):
  """Before JAX starts: splits the CPU into `cpu_devices` devices, starts `jax.distributed`
  when this run spans several processes (`several_processes`), then JAX's backends.

  A process that sends no heartbeat for `heartbeat_timeout_seconds` counts as lost (and JAX
  ends the others); the processes wait `startup_timeout_seconds` for each other at the start.

  cpu_devices (0: JAX's default, one device): XLA:CPU leaves its threads idle for much of a
  train step on one device; with a device per core and the batch split over them by the
  data-parallel mesh, every core runs every op (BENCHMARKS.md). Accelerators are unaffected;
  XLA_FLAGS=--xla_force_host_platform_device_count wins over it.
  """
  if cpu_devices and 'host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
    try:
      jax.config.update('jax_num_cpu_devices', cpu_devices)
    except RuntimeError:  # JAX already started in this process (a caller's own use of it).
      logging.warning('JAX had started: cpu_devices=%d is not applied.', cpu_devices)
  distributed = several_processes(mode)
  if distributed:
    _start_distributed(heartbeat_timeout_seconds, startup_timeout_seconds)
  # With libtpu installed (the TPU compiler of the preflight) and no TPU, libtpu looks for a
  # TPU VM's metadata when the backends start, and says so in lines of its own.
  with quiet.libtpu_start_up():
    jax.devices()
  if distributed:
    logging.info('jax.distributed: process %d of %d, %d local / %d global devices.',
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())


def _start_distributed(heartbeat_timeout_seconds: int, startup_timeout_seconds: int):
  explicit = {name: os.environ.get(name) for name in _EXPLICIT_ENV}
  timeouts = dict(heartbeat_timeout_seconds=heartbeat_timeout_seconds,
                  initialization_timeout=startup_timeout_seconds)
  if explicit['JAX_COORDINATOR_ADDRESS']:
    missing = [name for name, value in explicit.items() if not value]
    if missing:
      raise errors.InputError(f'JAX_COORDINATOR_ADDRESS is set but {", ".join(missing)} is not: set all '
                              f'of {", ".join(_EXPLICIT_ENV)} on every process.')
    jax.distributed.initialize(explicit['JAX_COORDINATOR_ADDRESS'],
                               int(explicit['JAX_NUM_PROCESSES']),
                               int(explicit['JAX_PROCESS_ID']), **timeouts)
  else:
    jax.distributed.initialize(**timeouts)


def several_processes(mode: str) -> bool:
  """Whether this run is one of several processes, by `mode` and the environment.

  mode 'on': always (multi-host Cloud TPU slices: JAX reads the topology from the TPU VM).
  mode 'auto': when the environment shows several processes: explicit
    JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, a SLURM job step with
    SLURM_NTASKS > 1 or an Open MPI job with more than one rank (JAX detects the rest).
  mode 'off': never.
  """
  if mode not in ('auto', 'on', 'off'):
    raise errors.InputError(f"distributed must be 'auto', 'on' or 'off', got {mode!r}.")
  count = lambda name: int(os.environ.get(name, '1'))
  return mode == 'on' or (mode == 'auto' and (
      bool(os.environ.get('JAX_COORDINATOR_ADDRESS')) or count('SLURM_NTASKS') > 1
      or count('OMPI_COMM_WORLD_SIZE') > 1))


def make_mesh(fsdp: int = 1, devices=None) -> Mesh:
  """A ('data', 'fsdp') mesh over `devices` (default: every device of every process)."""
  devices = devices or jax.devices()
  if fsdp < 1 or len(devices) % fsdp:
    raise errors.InputError(f'mesh.fsdp={fsdp} must be a positive divisor of the {len(devices)} '
                            'devices.')
  # Auto axes: XLA propagates shardings through the model (no per-op annotations needed).
  return jax.make_mesh((len(devices) // fsdp, fsdp), BATCH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def check_batch_size(global_batch_size: int, mesh: Mesh):
  """The global batch must split evenly over every device of the mesh."""
  if global_batch_size % mesh.size:
    raise errors.InputError(f'The global batch size {global_batch_size} does not divide over '
                            f'{mesh.size} devices; choose a multiple of {mesh.size}.')


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over all devices."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_sharding(mesh: Mesh, shape: tuple[int, ...], size_mb: float,
                   min_size_mb: float) -> NamedSharding:
  """Shards an array of at least `min_size_mb` over `fsdp` along its largest divisible
  dimension; smaller ones stay replicated (sharding them saves little and costs latency)."""
  fsdp = mesh.shape['fsdp']
  if fsdp == 1 or size_mb < min_size_mb:
    return replicated(mesh)
  for dim in np.argsort(shape)[::-1]:
    if shape[dim] % fsdp == 0:
      spec = [None] * len(shape)
      spec[dim] = 'fsdp'
      return NamedSharding(mesh, P(*spec))
  return replicated(mesh)


def tree_shardings(mesh: Mesh, abstract_tree, min_size_mb: float):
  """`param_sharding` for every array of a pytree of shapes (params, optimiser state)."""
  return jax.tree.map(
      lambda x: param_sharding(mesh, tuple(x.shape), x.size * x.dtype.itemsize / 2**20,
                               min_size_mb), abstract_tree)


def global_batch(mesh: Mesh, host_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """Host-local numpy arrays (this process's share of the batch) -> global jax.Arrays."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in host_batch.items()}
