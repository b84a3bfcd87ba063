"""Shared test fixtures: paths to ../shared (skipped cleanly when absent)."""
import os
import pathlib

import pytest

# Keep TensorFlow quiet in tests.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Tests (and the programs they start) compile the same small models many times: reuse them.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      str(pathlib.Path(__file__).resolve().parents[1] / '.cache' / 'jax'))

SHARED = pathlib.Path(__file__).resolve().parents[2] / 'shared'


def shared_path(*parts: str) -> pathlib.Path:
  """A path under ../shared, or skip the test when it is not there."""
  path = SHARED.joinpath(*parts)
  if not path.exists():
    pytest.skip(f'{path} is not available (../shared is only on developer and CI machines)')
  return path


# Python code that makes TensorFlow unimportable in the process running it: prepended to
# `python -c` programs that check what runs without TensorFlow (the GPU machines lack it).
BLOCK_TENSORFLOW = """
import importlib.abc, sys
class _BlockTensorFlow(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name.split('.')[0] in ('tensorflow', 'tensorflow_datasets'):
      raise ImportError('blocked ' + name)
sys.meta_path.insert(0, _BlockTensorFlow())
"""
