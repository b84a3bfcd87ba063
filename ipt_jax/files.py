"""Paths as users give them; files written whole or not at all, into folders checked first."""
from collections.abc import Callable
import os
import pathlib

from etils import epath
from PIL import Image

from ipt_jax import errors

# Temporary files are `.<name>.<pid>.<TMP>` beside their target until renamed.
TMP = 'ipt_jax-tmp'


def absolute(path) -> epath.Path:
  """`path` with `~` expanded and, when local, made absolute (orbax requires it); URLs such
  as gs://bucket/dir are kept as they are."""
  if '://' in os.fspath(path):
    return epath.Path(path)
  return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def write_atomically(path, write: Callable[[str], None]):
  """Calls write(temporary path) beside `path`, then renames it to `path`: never half-written."""
  path = pathlib.Path(path)
  temporary = path.with_name(f'.{path.name}.{os.getpid()}.{TMP}')
  try:
    write(os.fspath(temporary))
    os.replace(temporary, path)
  finally:
    temporary.unlink(missing_ok=True)


def write_png(path, image: Image.Image):
  """Saves `image` as a PNG at `path` atomically (its ICC profile, if any, included)."""
  write_atomically(path, lambda temporary: image.save(temporary, format='PNG'))


def prepare_output_dir(directory) -> pathlib.Path:
  """Creates `directory` if needed and checks it can be written to; removes temporary files
  that a killed run left there."""
  directory = pathlib.Path(directory)
  try:
    directory.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise errors.InputError(f'{directory}: cannot create the output folder ({e.strerror}); '
                            'choose another.') from e
  if not os.access(directory, os.W_OK | os.X_OK):
    raise errors.InputError(f'{directory}: the output folder is not writable; choose another.')
  for temporary in directory.glob(f'.*.{TMP}'):
    pid = temporary.name.split('.')[-2]
    if not (pid.isdigit() and is_running(int(pid))):
      temporary.unlink(missing_ok=True)
  return directory


def is_running(pid: int) -> bool:
  """Whether process `pid` exists on this host."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Someone else's process.
    return True
  return True
