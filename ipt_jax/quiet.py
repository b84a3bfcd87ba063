"""Quiet by default: library and native log noise kept out of what the commands print.

`configured(verbose=False)`, which `cli.run` wraps every command in unless `-v 1` (or more)
is given, for the time of the command:
  * TensorFlow's C++ log (TF_CPP_MIN_LOG_LEVEL) shows errors only, when the user has not set
    the variable (JAX sets it to 1 on import: that counts as not set);
  * the Python loggers of LIBRARY_LOGGERS show warnings and errors only, except those the user
    names in --logger_levels;
  * the INFO lines of ABSL_LOGGING_LIBRARIES, which log through absl's own logger and so cannot
    be set by name, are dropped.
`tensorflow_start_up()` drops TensorFlow's start-up lines that ignore TF_CPP_MIN_LOG_LEVEL.
This project's lines, every warning and error, and other libraries' INFO lines (clu's metric
lines, TensorFlow Datasets) are kept.
"""
import contextlib
import logging
import os
import re
import sys
import tempfile

from absl import flags
from absl import logging as absl_logging

TF_LOG_LEVEL = 'TF_CPP_MIN_LOG_LEVEL'
# TensorFlow's C++ log: errors only. JAX's own default, set when it is imported, is 1.
QUIET_TF_LOG_LEVEL, JAX_TF_LOG_LEVEL = '2', '1'
LIBRARY_LOGGERS = ('jax',)  # "Unable to initialize backend 'tpu'" and the like.
ABSL_LOGGING_LIBRARIES = ('orbax',)  # Dozens of lines per checkpoint.
# What TensorFlow's native code prints while it starts, whatever TF_CPP_MIN_LOG_LEVEL says.
TENSORFLOW_START_UP = re.compile('|'.join((
    r'^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR',
    r'\] oneDNN custom operations are on\.',
    r'\] oneDNN supports DT_UINT8 only on platforms with AVX-512\.',
)))
# What libtpu prints when it describes a TPU topology on a machine that is not a TPU VM.
LIBTPU_START_UP = re.compile('|'.join((
    r'could not determine TPU (accelerator type|worker hostnames)',
    r'^WARNING: Logging before InitGoogle\(\) is written to STDERR',
    r'^=== Source Location Trace: ===',
    r'^learning/.*libtpu_init_utils\.cc',
)))


class _LibraryInfo(logging.Filter):
  """Drops the INFO (and lower) records of code inside the given packages."""

  def __init__(self, packages):
    super().__init__()
    self._folders = tuple(f'{os.sep}{p}{os.sep}' for p in packages)

  def filter(self, record):
    return record.levelno >= logging.WARNING or not any(
        f in record.pathname for f in self._folders)


@contextlib.contextmanager
def configured(verbose: bool):
  """Library and native logs as the module docstring says while inside; as before after."""
  if verbose:
    yield
    return
  named = set(flags.FLAGS['logger_levels'].value)
  loggers = [logging.getLogger(n) for n in LIBRARY_LOGGERS if n not in named]
  levels = [logger.level for logger in loggers]
  tf_level = os.environ.get(TF_LOG_LEVEL)
  handler = absl_logging.get_absl_handler()
  library_info = _LibraryInfo(p for p in ABSL_LOGGING_LIBRARIES if p not in named)
  try:
    if tf_level in (None, JAX_TF_LOG_LEVEL):
      os.environ[TF_LOG_LEVEL] = QUIET_TF_LOG_LEVEL
    for logger in loggers:
      logger.setLevel(logging.WARNING)
    handler.addFilter(library_info)
    yield
  finally:
    handler.removeFilter(library_info)
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)
    _set_env(TF_LOG_LEVEL, tf_level)


def _set_env(name: str, value: str | None):
  if value is None:
    os.environ.pop(name, None)
  else:
    os.environ[name] = value


@contextlib.contextmanager
def tensorflow_start_up():
  """Drops TENSORFLOW_START_UP lines that native code writes to stderr inside the block, when
  TF_CPP_MIN_LOG_LEVEL hides TensorFlow's warnings; the other lines come out at its end."""
  if os.environ.get(TF_LOG_LEVEL) not in ('2', '3'):
    yield
    return
  with _native_lines_dropped(TENSORFLOW_START_UP):
    yield


def libtpu_start_up():
  """Drops LIBTPU_START_UP lines (libtpu looking for a TPU VM's metadata) inside the block."""
  return _native_lines_dropped(LIBTPU_START_UP)


@contextlib.contextmanager
def _native_lines_dropped(pattern: re.Pattern):
  """Native code writes to file descriptor 2 directly, out of reach of Python's logging: the
  block writes to a temporary file instead, and its lines but those matching `pattern` come
  out at its end."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      lines = captured.read().decode(errors='replace').splitlines(keepends=True)
      sys.stderr.write(''.join(l for l in lines if not pattern.search(l)))
      sys.stderr.flush()
