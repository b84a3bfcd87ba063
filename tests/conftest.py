"""Shared test set-up: cheaper compilation, commands run in this process, one trained
workdir for the whole session, paths to ../shared (skipped cleanly when absent)."""
import contextlib
import dataclasses
import importlib
import io
import os
import pathlib
import subprocess
import sys
from unittest import mock

import filelock
import numpy as np
import pytest

# Keep TensorFlow quiet in tests.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Tests compile many small programs and run each a few times. XLA's CPU backend compiles them
# faster without LLVM's optimisation passes (about 2x) and with its older, elemental fusion
# emitters (train steps about 1.5x). Its results are not bitwise the default's (within float32
# rounding): processes compared bitwise must all inherit the flags. Set once: xdist workers
# inherit them, and the flags are part of the compilation cache's keys.
TEST_XLA_FLAGS = ('--xla_backend_optimization_level=0', '--xla_cpu_use_fusion_emitters=false')
if TEST_XLA_FLAGS[0] not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = ' '.join([os.environ.get('XLA_FLAGS', ''), *TEST_XLA_FLAGS]).strip()
# Tests (and the programs they start) compile the same small models many times: reuse them,
# the quick ones too.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      str(pathlib.Path(__file__).resolve().parents[1] / '.cache' / 'jax'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'


def pytest_collection_modifyitems(items):
  """Files with slow tests first: the two xdist workers start the long ones early and finish
  together."""
  slow_files = {item.path for item in items if item.get_closest_marker('slow')}
  items.sort(key=lambda item: item.path not in slow_files)


def shared_path(*parts: str) -> pathlib.Path:
  """A path under ../shared, or skip the test when it is not there."""
  path = SHARED.joinpath(*parts)
  if not path.exists():
    pytest.skip(f'{path} is not available (../shared is only on developer and CI machines)')
  return path


# Python code that makes TensorFlow unimportable in the process running it: prepended to
# `python -c` programs that check what runs without TensorFlow (the GPU machines lack it).
BLOCK_TENSORFLOW = """
import importlib.abc, importlib.machinery, sys
class _BlockTensorFlow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  # Importing it fails as on a machine without it; probing it (importlib.util.find_spec, as
  # torch does) gets a spec with no origin instead of an error.
  def find_spec(self, name, path, target=None):
    if name.split('.')[0] in ('tensorflow', 'tensorflow_datasets'):
      return importlib.machinery.ModuleSpec(name, self)
  def create_module(self, spec):
    raise ModuleNotFoundError('blocked ' + spec.name, name=spec.name)
  def exec_module(self, module):
    pass
sys.meta_path.insert(0, _BlockTensorFlow())
"""


@dataclasses.dataclass
class Result:
  """What a command did: its exit status and what it printed."""
  returncode: int
  stdout: str
  stderr: str


def run_command(name: str, *args: str) -> Result:
  """`python -m ipt_jax.<name> <args>` from the repository root, in this process (seconds
  faster than a new one). Flags are restored afterwards; log records go to pytest's caplog,
  not to `stderr`. Flags that a command marks as required when run as a program are not
  required here: that case needs a real process (`subprocess.run`)."""
  from absl.testing import flagsaver  # pylint: disable=g-import-not-at-top
  from ipt_jax import cli  # pylint: disable=g-import-not-at-top
  main = importlib.import_module(f'ipt_jax.{name}').main
  stdout, stderr = io.StringIO(), io.StringIO()
  code = 0
  argv = [name, *args]
  # sys.argv too: config flags find their --config.FIELD overrides there.
  with flagsaver.flagsaver(), mock.patch.object(sys, 'argv', argv), contextlib.chdir(REPO), \
      contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
    try:
      cli.run(main, argv=argv)
    except SystemExit as e:
      code = e.code or 0
  return Result(code, stdout.getvalue(), stderr.getvalue())


def random_params(model, seed: int = 0) -> dict:
  """Parameters with the model's names, shapes and dtypes, drawn by numpy: for tests that save,
  load, convert or run them, where the values do not matter (initialising a model compiles for
  seconds, once per model)."""
  import jax  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init_params, jax.random.key(0))
  return jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(s.dtype), shapes)


# The session's trained workdir: the quickstart config on two tasks for 8 steps, every step
# logged, validated and checkpointed at steps 4 and 8.
TRAINED_STEPS = 8
TRAINED_TASKS = ('sr_x2', 'denoise_30')
TRAINED_OVERRIDES = {'total_steps': TRAINED_STEPS, 'data.batch_size': 4,
                     'data.tasks': TRAINED_TASKS, 'log_every': 1,
                     'eval_every': TRAINED_STEPS // 2, 'checkpoint_every': TRAINED_STEPS // 2,
                     'eval.num_examples': 4}
TRAINED_ARGS = ('--config=configs/quickstart.py',
                *(f'--config.{k}={v}' for k, v in TRAINED_OVERRIDES.items()))


def trained_config(**overrides):
  """The config of the trained run, for training in this process, with top-level `overrides`.
  A test that asks for the `trained_run` fixture first finds its programs compiled."""
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  config = quickstart.get_config()
  config.update_from_flattened_dict({**TRAINED_OVERRIDES, **overrides})
  return config


def user_env(**extra) -> dict:
  """The environment a user runs commands in: no TensorFlow log level set by this file."""
  env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
  return {**env, **extra}


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  workdir: pathlib.Path  # Read-only: tests that change a workdir make their own.
  stdout: str  # The summary.
  stderr: str  # The log.


@pytest.fixture(scope='session')
def trained_run(request, tmp_path_factory) -> TrainedRun:
  """`python -m ipt_jax.main` with TRAINED_ARGS, run once per test session and shared by the
  xdist workers (the first one to ask runs it, the others wait for it)."""
  root = tmp_path_factory.getbasetemp()
  if hasattr(request.config, 'workerinput'):  # An xdist worker: the session's folder.
    root = root.parent
  workdir = root / 'trained_run'
  with filelock.FileLock(root / 'trained_run.lock'):
    if not (root / 'trained_run.stderr').exists():
      result = subprocess.run([sys.executable, '-m', 'ipt_jax.main', *TRAINED_ARGS,
                               f'--workdir={workdir}'], cwd=REPO, capture_output=True,
                              text=True, env=user_env(), timeout=600)
      assert result.returncode == 0, result.stderr[-4000:]
      (root / 'trained_run.stdout').write_text(result.stdout)
      (root / 'trained_run.stderr').write_text(result.stderr)
  return TrainedRun(workdir, (root / 'trained_run.stdout').read_text(),
                    (root / 'trained_run.stderr').read_text())
