"""Paths as users give them; files written whole or not at all, into folders checked first."""
from collections.abc import Callable
import contextlib
import errno
import os
import shutil
import pathlib

from etils import epath
from PIL import Image

from ipt_jax import errors

# What the operating system says of a full disk.
NO_SPACE = os.strerror(errno.ENOSPC)
# Room left beside what is written: its small files (model config, checksums, metadata).
_SPACE_MARGIN_BYTES = 1_000_000
# Temporary files are `.<name>.<pid>.<TMP>` beside their target until renamed.
TMP = 'ipt_jax-tmp'


def absolute(path) -> epath.Path:
  """`path` with `~` expanded and, when local, made absolute (orbax requires it); URLs such
  as gs://bucket/dir are kept as they are."""
  if '://' in os.fspath(path):
    return epath.Path(path)
  return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def write_atomically(path, write: Callable[[str], None]):
  """Calls write(temporary path) beside `path`, then renames it to `path`: never half-written.
  A full disk is a DiskFullError."""
  path = pathlib.Path(path)
  temporary = path.with_name(f'.{path.name}.{os.getpid()}.{TMP}')
  try:
    with on_disk_full(lambda: errors.DiskFullError(
        f'{path}: the disk is full, so it was not written; free some space or choose another '
        'output folder.')):
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


def is_disk_full(error: BaseException | None) -> bool:
  """Whether `error`, or an error it was raised from, is 'No space left on device'."""
  while error is not None:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC or NO_SPACE in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


@contextlib.contextmanager
def on_disk_full(error: Callable[[], errors.DiskFullError]):
  """Inside, an error caused by a full disk (at any depth of its causes, e.g. from orbax's
  threads) is replaced by `error()`, one line for the user; a DiskFullError passes as it is."""
  try:
    yield
  except errors.DiskFullError:
    raise
  except Exception as e:  # pylint: disable=broad-exception-caught
    if not is_disk_full(e):
      raise
    raise error() from None


def free_bytes(path) -> int | None:
  """Free space of the local disk that holds `path` (or would: its nearest existing folder);
  None for URLs."""
  if '://' in os.fspath(path):
    return None
  path = pathlib.Path(absolute(path))
  existing = next(p for p in (path, *path.parents) if p.exists())
  return shutil.disk_usage(existing).free


def check_space(path, need_bytes: int, what: str):
  """An InputError unless the local disk holding `path` has room for `need_bytes` (and a
  margin); `what` names what needs it, e.g. 'the checkpoint of step 4'."""
  free = free_bytes(path)
  if free is not None and free < 1.1 * need_bytes + _SPACE_MARGIN_BYTES:
    raise errors.DiskFullError(f'{what} needs about {need_bytes / 1e6:.1f} MB and the disk has '
                               f'{free / 1e6:.1f} MB free')
