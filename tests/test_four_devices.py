"""Sharding over four devices (tests/four_devices.py, all in one process)."""
import os
import subprocess
import sys

import pytest

from tests import four_devices
from tests.conftest import REPO


@pytest.fixture(scope='module')
def output():
  flags = f'{os.environ.get("XLA_FLAGS", "")} --xla_force_host_platform_device_count=4'
  result = subprocess.run([sys.executable, '-m', 'tests.four_devices'], cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, 'XLA_FLAGS': flags})
  return result.stdout.split('\n'), result.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.parametrize('check', [c.__name__ for c in four_devices.CHECKS])
def test_on_four_devices(output, check):
  lines, stderr = output
  assert f'ok {check}' in lines, stderr
