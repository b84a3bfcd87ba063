"""What the command-line entry points share: expected failures printed as one line with exit
code 1, and files written whole or not at all."""
from collections.abc import Callable
import os
import pathlib
import sys

import logging

from absl import app
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

# Errors that mean "bad input or environment", reported without a traceback.
EXPECTED_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
                   ImportError, KeyError)


def run(main: Callable[[list[str]], None]):
  """absl's app.run(main), printing expected errors in one line and exiting non-zero."""
  def guarded(argv):
    absl_logging.get_absl_handler().addFilter(_OwnInfoOnly())
    try:
      main(argv)
    except EXPECTED_ERRORS as e:
      message = ' '.join(str(e).split()) or type(e).__name__
      print(f'error: {message}', file=sys.stderr)
      sys.exit(1)
  app.run(guarded)


def define_training_flags(config_help: str):
  """--config (an ml_collections file, fields overridable) and --workdir, both required."""
  config_flags.DEFINE_config_file('config', None, config_help, lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory (local or gs://) for checkpoints and '
                      'TensorBoard events; running again resumes from it.')
  flags.mark_flags_as_required(['config', 'workdir'])


def check_no_arguments(argv: list[str]):
  """Entry points take flags only."""
  if len(argv) > 1:
    raise ValueError(f'Unexpected arguments: {" ".join(argv[1:])} (flags are --name=value).')


class _OwnInfoOnly(logging.Filter):
  """Keeps this project's INFO lines and everyone's warnings (orbax and jax log a lot)."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or '/ipt_jax/' in record.pathname


def write_atomically(path, write: Callable[[str], None]):
  """Calls write(temporary path) beside `path`, then renames it to `path`: never half-written."""
  path = pathlib.Path(path)
  temporary = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
  try:
    write(os.fspath(temporary))
    os.replace(temporary, path)
  finally:
    temporary.unlink(missing_ok=True)
