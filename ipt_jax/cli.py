"""What the command-line entry points share: one flag vocabulary and one way to fail.

Every idea has one flag name, type and default across all commands; a command asks for the
flags it takes at module level (`checkpoint_flags()`, ...): they are defined once per process
and become key flags (its `--help`) of every module that asks. The training commands take the same ideas as config fields with the same leaf
names (`--checkpoint` / `config.checkpoint`, `--num_heads` / `config.model.num_heads`, ...).

`run(main)` is absl's `app.run` that prints an `errors.InputError` as one line
`error: <message>` and exits with its code (2 for flag misuse); anything else is a bug and
keeps its traceback. Library and native log noise is kept down unless `-v 1` or more is given
(`quiet`).
"""
from collections.abc import Callable
import dataclasses
import functools
import sys
from typing import TypeVar

from absl import app
from absl import flags
from ml_collections import config_flags

from ipt_jax import errors
from ipt_jax import inference
from ipt_jax import quiet

# Flags defined by the functions below belong to the module that calls them (its --help).
flags.disclaim_key_flags()

DTYPES = ('float32', 'bfloat16')
T = TypeVar('T')


def _shared(define: Callable[[], T]) -> Callable[[], T]:
  """`define` runs once per process; every module that calls the result gets its flags as key
  flags, so several commands imported into one process each list them."""
  defined = functools.cache(define)

  @functools.wraps(define)
  def holders() -> T:
    result = defined()
    if dataclasses.is_dataclass(result):
      listed = [getattr(result, field.name) for field in dataclasses.fields(result)]
    else:
      listed = result if isinstance(result, tuple) else [result]
    for holder in listed:
      flags.declare_key_flag(holder.name)
    return result
  return holders


@dataclasses.dataclass(frozen=True)
class CheckpointFlags:
  checkpoint: flags.FlagHolder
  checkpoint_tasks: flags.FlagHolder
  num_heads: flags.FlagHolder

  def load_args(self) -> dict:
    """Keyword arguments of `weights.load` besides the path."""
    return dict(checkpoint_tasks=self.checkpoint_tasks.value, num_heads=self.num_heads.value)


@dataclasses.dataclass(frozen=True)
class InferenceFlags:
  dtype: flags.FlagHolder
  tiling: flags.FlagHolder
  overlap: flags.FlagHolder
  tile_batch: flags.FlagHolder
  self_ensemble: flags.FlagHolder
  cpu_devices: flags.FlagHolder

  def image_model_args(self) -> dict:
    """Keyword arguments of `inference.ImageModel` besides model, params and task."""
    return dict(mode=self.tiling.value, overlap=self.overlap.value,
                tile_batch=self.tile_batch.value, self_ensemble=self.self_ensemble.value)


@_shared
def checkpoint_flags() -> CheckpointFlags:
  """--checkpoint, --checkpoint_tasks, --num_heads: the weights to load."""
  return CheckpointFlags(
      flags.DEFINE_string(
          'checkpoint', None, 'The weights: an official .pt / .pth / .safetensors file, a params '
          'directory (ipt_jax.convert), a training checkpoint step, checkpoints directory or '
          'workdir (its newest step).'),
      flags.DEFINE_list(
          'checkpoint_tasks', None, 'Task names of the heads of a PyTorch checkpoint, in head '
          'order; needed unless it has the six pre-training heads.'),
      flags.DEFINE_integer(
          'num_heads', None, 'Attention heads of a PyTorch checkpoint (not visible in its '
          'shapes; default 12, the paper\'s).', lower_bound=1))


@_shared
def tasks_flag() -> flags.FlagHolder:
  """--tasks: the task(s) to run, by name."""
  return flags.DEFINE_list('tasks', None, 'Task(s) to run, comma-separated, e.g. sr_x2 or '
                           'sr_x2,sr_x3,sr_x4; each one of the model\'s tasks.')


@_shared
def inference_flags() -> InferenceFlags:
  """--dtype, --tiling, --overlap, --tile_batch, --self_ensemble, --cpu_devices: how whole
  images run."""
  return InferenceFlags(
      dtype_flag(),
      flags.DEFINE_enum(
          'tiling', 'official', list(inference.MODES), "'official': the official forward_chop (the "
          "published protocol); 'fast': tiles --overlap px apart with blended seams, several "
          'times fewer and a little different.'),
      flags.DEFINE_integer('overlap', inference.PAPER_OVERLAP, "Overlap of 'fast' tiles in pixels.",
                           lower_bound=0),
      flags.DEFINE_integer('tile_batch', inference.TILE_BATCH, 'Tiles per model call; lower it '
                           'if memory runs out.', lower_bound=1),
      flags.DEFINE_bool('self_ensemble', False, 'Average the 8 flips / transposes (8x slower).'),
      flags.DEFINE_integer('cpu_devices', 0, 'On a CPU: run as this many devices, each batch of '
                           'tiles split over them (one per core is fastest); 0: one device.',
                           lower_bound=0))


@_shared
def dtype_flag() -> flags.FlagHolder:
  return flags.DEFINE_enum('dtype', 'float32', list(DTYPES), 'Compute dtype of the model '
                           '(parameters stay float32); bfloat16 for accelerators.')


@_shared
def benchmark_set_flags() -> tuple[flags.FlagHolder, flags.FlagHolder]:
  """--data_dir, --sets: benchmark sets in the EDSR layout."""
  return (flags.DEFINE_string('data_dir', None, 'Folder holding the benchmark sets '
                              '(<data_dir>/<Set>/HR/*.png, ...).'),
          flags.DEFINE_list('sets', None, 'Benchmark sets; default: Set5,Set14,B100,Urban100 '
                            'for SR, CBSD68,Urban100 for denoising, Rain100L for deraining.'))


@_shared
def output_flag() -> flags.FlagHolder:
  return flags.DEFINE_string('output', None, 'The file to write (convert: a .pt / .pth / '
                             '.safetensors name in the official layout, or a new directory name '
                             'for Flax params; figures: a .png).')


@_shared
def output_dir_flag() -> flags.FlagHolder:
  return flags.DEFINE_string('output_dir', None, 'Folder for the outputs (created if needed).')


@_shared
def seed_flag() -> flags.FlagHolder:
  return flags.DEFINE_integer('seed', 0, 'Random seed.')


@_shared
def config_flag() -> flags.FlagHolder:
  """--config: an ml_collections config file, every field overridable as --config.FIELD=VALUE."""
  return config_flags.DEFINE_config_file(
      'config', None, 'Configuration file: configs/pretrain.py, configs/quickstart.py, '
      'configs/finetune.py:<task>, ...; override any field with --config.FIELD=VALUE.',
      lock_config=True)


@_shared
def workdir_flag() -> flags.FlagHolder:
  return flags.DEFINE_string('workdir', None, 'Directory (local or gs://) for checkpoints and '
                             'TensorBoard events; running again resumes from it.')


def run(main: Callable[[list[str]], None], argv: list[str] | None = None):
  """absl's app.run(main) on `argv` (default sys.argv); bad input and bad flags are one line
  and a non-zero exit status."""
  def guarded(argv):
    try:
      with quiet.configured(verbose=flags.FLAGS.verbosity > 0):
        main(argv)
    except errors.InputError as e:
      _fail(str(e), e.exit_code)
  app.run(guarded, argv=argv, flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(f'{e} (see --help)', errors.FlagError.exit_code)


def _fail(message: str, exit_code: int):
  print(f'error: {" ".join(message.split())}', file=sys.stderr)
  sys.exit(exit_code)


def check_no_arguments(argv: list[str]):
  """Entry points that take flags only."""
  if len(argv) > 1:
    raise errors.FlagError(f'unexpected arguments {" ".join(argv[1:])}: this command takes '
                           'flags only (--name=value).')
