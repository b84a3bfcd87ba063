"""Killed again and again at random moments (kill -9, often during a checkpoint save), a
training resumes each time, loses at most the steps since its last finished save, and ends
bitwise where an uninterrupted run ends.

About 7 minutes on 2 cores, so not in the default test command: .ci/run runs it as a stage of
its own (python -m pytest tests -q -m faults)."""
import random
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from ipt_jax import train
from ipt_jax import weights
from tests.conftest import REPO
from tests.test_main import scalars

KILLS = 20
# One task, a checkpoint after every step (so that kills land in saves), validation at the end.
OVERRIDES = {'total_steps': 80, 'data.tasks': ('sr_x2',), 'data.batch_size': 2,
             'log_every': 1, 'checkpoint_every': 1, 'keep_checkpoints': 2,
             'eval_every': 1000, 'eval.num_examples': 2}


def config():
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  config = quickstart.get_config()
  config.update_from_flattened_dict(OVERRIDES)
  return config


class Run:
  """python -m ipt_jax.main on a workdir, its output lines collected as they come."""

  def __init__(self, workdir):
    self.process = subprocess.Popen(
        [sys.executable, '-m', 'ipt_jax.main', '--config=configs/quickstart.py',
         f'--workdir={workdir}', *(f'--config.{k}={v}' for k, v in OVERRIDES.items())],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    self.lines = []
    self._reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout))
    self._reader.start()

  def steps_logged(self) -> list[int]:
    total = OVERRIDES['total_steps']
    return [int(line.split('] step ')[1].split('/')[0]) for line in list(self.lines)
            if f'/{total} (' in line and '] step ' in line]

  def first_step(self) -> int:
    """The step it resumed from (0 for a fresh start)."""
    [line] = [l for l in self.lines if ' from step ' in l]
    return int(line.split(' from step ')[1].split()[0])

  def wait(self, timeout=600) -> int:
    self.process.wait(timeout)
    self._reader.join()
    return self.process.returncode


@pytest.mark.slow
@pytest.mark.faults
def test_twenty_kills_lose_at_most_a_save_each_and_change_nothing(tmp_path):
  rng = random.Random(0)
  workdir = tmp_path / 'killed'
  logged = 0  # The last step a killed run logged.
  for kill in range(KILLS):
    run = Run(workdir)
    deadline = time.time() + 300
    while not run.steps_logged():  # Started and training: kill it a random moment later.
      assert run.process.poll() is None, ''.join(run.lines)[-4000:]
      assert time.time() < deadline, 'no step logged in 5 minutes'
      time.sleep(0.05)
    time.sleep(rng.uniform(0, 1.5))
    run.process.kill()
    run.wait()
    # Each start resumes from the last save that finished: at most the save in flight and
    # the step after it are lost (a checkpoint every step).
    assert run.first_step() >= logged - 2, (kill, run.first_step(), logged)
    assert run.steps_logged()[-1] < OVERRIDES['total_steps'], 'it ended before the kill'
    logged = run.steps_logged()[-1]
  run = Run(workdir)
  assert run.wait() == 0, ''.join(run.lines)[-4000:]
  assert run.first_step() >= logged - 2

  # An uninterrupted run of the same config, here: the same losses and weights, bitwise.
  uninterrupted = tmp_path / 'uninterrupted'
  train.train_and_evaluate(config(), str(uninterrupted))
  assert scalars(workdir, 'loss') == scalars(uninterrupted, 'loss')
  _, params = weights.load(uninterrupted)
  _, resumed = weights.load(workdir)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed), jax.device_get(params))
