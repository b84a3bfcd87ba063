"""A multi-process job that loses a process: every other process ends in one line with exit
status 75 (resubmit), and the resubmitted job resumes bitwise where it stopped.

Real 2-process jobs on this machine, as a launcher starts them (JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID). Each process is a supervisor (what the launcher started)
and its training child. The jobs take minutes, so but for the parsing tests and a process that
never comes, they run in .ci/run's fault stage (python -m pytest tests -q -m faults).
"""
import collections
import io
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from ipt_jax import supervise
from ipt_jax import weights
from tests.conftest import REPO
from tests.test_main import scalars
from tests.test_main import steps_saved

HEARTBEAT_SECONDS = 10
OVERRIDES = {'total_steps': 40, 'data.tasks': ('sr_x2',), 'data.batch_size': 2,
             'log_every': 1, 'checkpoint_every': 1, 'keep_checkpoints': 2, 'eval_every': 1000,
             'eval.num_examples': 2, 'heartbeat_timeout_seconds': HEARTBEAT_SECONDS}
# The line of a process whose job lost a process (the named one may be itself).
LOST_LINE = re.compile(r'error: process (\d) of 2 stopped (responding \(.+\)|\(killed by \w+\)); '
                       r'the job stops\. Resubmit it to resume from step (\d+)\.')
NOISE = ('Traceback', 'Fatal Python error', 'Aborted', 'Check failure', 'coordination_service',
         '[Gloo]')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class Job:
  """`python -m ipt_jax.main` as 2 processes on `workdir`; output lines collected as they come."""

  def __init__(self, workdir, overrides=None, addresses=None, processes=2):
    overrides = {**OVERRIDES, **(overrides or {})}
    address = f'127.0.0.1:{free_port()}'
    self.started = time.time()
    self.processes, self.lines, self.ended = [], [], {}
    for i in range(processes):
      env = {**os.environ, 'JAX_COORDINATOR_ADDRESS': (addresses or {}).get(i, address),
             'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': str(i)}
      process = subprocess.Popen(
          [sys.executable, '-m', 'ipt_jax.main', '--config=configs/quickstart.py',
           f'--workdir={workdir}', *(f'--config.{k}={v}' for k, v in overrides.items())],
          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      lines = []
      threading.Thread(target=lambda p=process, l=lines: l.extend(p.stdout), daemon=True).start()
      self.processes.append(process)
      self.lines.append(lines)

  def training_child(self, i: int) -> int:
    """The pid of process i's training child."""
    deadline = time.time() + 60
    while time.time() < deadline:
      found = subprocess.run(['pgrep', '-P', str(self.processes[i].pid)], capture_output=True,
                             text=True).stdout.split()
      if found:
        return int(found[0])
      time.sleep(0.05)
    raise AssertionError(f'process {i} started no training child')

  def steps_logged(self, i: int = 0) -> list[int]:
    total = OVERRIDES['total_steps']
    return [int(line.split('] step ')[1].split('/')[0]) for line in list(self.lines[i])
            if '] step ' in line and f'/{total} (' in line]

  def wait_for(self, condition, timeout=300):
    deadline = time.time() + timeout
    while not condition():
      assert all(p.poll() is None for p in self.processes), self.output()
      assert time.time() < deadline, f'waited {timeout} s in vain\n{self.output()}'
      time.sleep(0.05)

  def wait(self, processes=None, timeout=300) -> dict[int, float]:
    """Waits for `processes` (default all) to end; the seconds from start to each end."""
    processes = range(len(self.processes)) if processes is None else processes
    deadline = time.time() + timeout
    while any(i not in self.ended for i in processes):
      for i in processes:
        if i not in self.ended and self.processes[i].poll() is not None:
          self.ended[i] = time.time()
      assert time.time() < deadline, f'still running after {timeout} s\n{self.output()}'
      time.sleep(0.05)
    return self.ended

  def first_step(self, i: int = 0) -> int:
    [line] = [l for l in self.lines[i] if ' from step ' in l]
    return int(line.split(' from step ')[1].split()[0])

  def output(self, i: int | None = None) -> str:
    shown = range(len(self.lines)) if i is None else [i]
    return '\n'.join(f'--- process {j}:\n' + ''.join(self.lines[j][-30:]) for j in shown)

  def kill(self):
    for process in self.processes:
      if process.poll() is None:
        process.kill()  # The training child goes with it (PR_SET_PDEATHSIG).
      process.wait()


@pytest.fixture
def jobs():
  """Starts jobs (`jobs(workdir, ...)`) and kills whatever of them is left at the end."""
  started = []

  def start(*args, **kwargs):
    started.append(Job(*args, **kwargs))
    return started[-1]
  yield start
  for job in started:
    job.kill()


def lost_line(job: Job, i: int) -> re.Match:
  """Process i's last line, which must be the lost-process line and its only noise."""
  output = ''.join(job.lines[i])
  assert job.processes[i].returncode == supervise.RESTART, job.output(i)
  assert not [n for n in NOISE if n in output], job.output(i)
  match = LOST_LINE.fullmatch(job.lines[i][-1].strip())
  assert match, job.output(i)
  return match


def finish(workdir, jobs, overrides=None) -> Job:
  job = jobs(workdir, overrides)
  job.wait(timeout=300)
  assert [p.returncode for p in job.processes] == [0, 0], job.output()
  return job


def assert_same_run(workdir, uninterrupted):
  """The same losses at every step and the same final weights, bitwise."""
  assert scalars(workdir, 'loss') == scalars(uninterrupted, 'loss')
  _, params = weights.load(uninterrupted)
  _, resumed = weights.load(workdir)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed), jax.device_get(params))


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  """The workdir of the 2-process job run without interruption."""
  workdir = tmp_path_factory.mktemp('uninterrupted')
  job = Job(workdir)
  try:
    job.wait(timeout=300)
  finally:
    job.kill()
  assert [p.returncode for p in job.processes] == [0, 0], job.output()
  return workdir


@pytest.mark.slow
@pytest.mark.faults
@pytest.mark.parametrize('victim,target', [(1, 'child'), (0, 'child'), (1, 'supervisor')])
def test_a_killed_process_stops_the_others_in_one_line(tmp_path, jobs, victim, target):
  job = jobs(tmp_path)
  job.wait_for(lambda: len(job.steps_logged(victim)) >= 3)
  pid = job.training_child(victim) if target == 'child' else job.processes[victim].pid
  killed = time.time()
  os.kill(pid, signal.SIGKILL)
  ended = job.wait(timeout=120)
  other = 1 - victim
  assert ended[other] - killed < 120
  print(f'kill -9 of process {victim}\'s {target}: the other ended {ended[other] - killed:.1f} '
        f's later: {job.lines[other][-1].strip()}')
  process, what, step = lost_line(job, other).groups()
  assert int(process) == victim and what.startswith('responding')
  if target == 'child':  # Its supervisor says it was killed.
    assert lost_line(job, victim).groups() == (str(victim), '(killed by SIGKILL)', step)
  assert int(step) == max(steps_saved(tmp_path))
  # Resubmitted at once, it resumes from that step, taking over the claim of process 0's
  # training process when that was killed (ended by JAX, it may have given it back first).
  resumed = jobs(tmp_path)
  resumed.wait_for(lambda: resumed.steps_logged())
  assert resumed.first_step() == int(step)
  if victim == 0:
    assert 'Taking over the workdir claim' in ''.join(resumed.lines[0]), resumed.output(0)


@pytest.mark.slow
@pytest.mark.faults
@pytest.mark.parametrize('victim', [1, 0])
def test_a_hung_process_is_named_within_the_heartbeat_timeout(tmp_path, jobs, victim):
  job = jobs(tmp_path)
  job.wait_for(lambda: len(job.steps_logged(victim)) >= 3)
  os.kill(job.training_child(victim), signal.SIGSTOP)
  stopped = time.time()
  other = 1 - victim
  ended = job.wait([other], timeout=HEARTBEAT_SECONDS + 60)
  print(f'SIGSTOP of process {victim}: the other ended {ended[other] - stopped:.1f} s later: '
        f'{job.lines[other][-1].strip()}')
  process, what, step = lost_line(job, other).groups()
  assert int(process) == victim and what.startswith('responding'), job.output(other)
  # The launcher ends the job (the hung child goes with its supervisor); resubmitted at once,
  # the job takes over the claim and finishes.
  job.kill()
  resumed = finish(tmp_path, jobs)
  assert resumed.first_step() == int(step)
  if victim == 0:  # Its claim was left by a process that is gone now.
    assert 'Taking over the workdir claim' in ''.join(resumed.lines[0])


@pytest.mark.slow
@pytest.mark.faults
def test_pre_empting_every_process_saves_one_step_and_resumes_exactly(tmp_path, jobs,
                                                                      uninterrupted):
  job = jobs(tmp_path)
  job.wait_for(lambda: len(job.steps_logged()) >= 3)
  order = random.Random(0).sample(range(2), 2)
  for i in order:  # In any order, seconds apart, as a maintenance event sends them.
    os.kill(job.processes[i].pid, signal.SIGTERM)
    time.sleep(1.5)
  job.wait(timeout=120)
  assert [p.returncode for p in job.processes] == [0, 0], job.output()
  saved = [re.findall(r'Pre-empted: saved step (\d+)\.', ''.join(lines)) for lines in job.lines]
  assert saved[0] == saved[1] and len(saved[0]) == 1, job.output()
  assert max(steps_saved(tmp_path)) == int(saved[0][0]) < OVERRIDES['total_steps']
  resumed = finish(tmp_path, jobs)
  assert resumed.first_step() == int(saved[0][0])
  assert_same_run(tmp_path, uninterrupted)


KILLS = 10


@pytest.mark.slow
@pytest.mark.faults
def test_ten_kills_of_a_random_process_change_nothing(tmp_path, jobs, uninterrupted):
  rng = random.Random(0)
  lost = collections.Counter()
  for kill in range(KILLS):
    job = jobs(tmp_path)
    victim = rng.randrange(2)
    # Every third kill during the first compile; the others during training, saves included.
    if kill % 3 == 0:
      job.wait_for(lambda: any(' from step ' in l for l in job.lines[victim]))
    else:
      job.wait_for(lambda: job.steps_logged(victim))
      time.sleep(rng.uniform(0, 2))
    logged = max(job.steps_logged(victim) or [job.first_step(victim)])
    os.kill(job.training_child(victim), signal.SIGKILL)
    job.wait(timeout=120)
    _, _, step = lost_line(job, 1 - victim).groups()
    assert int(step) <= OVERRIDES['total_steps'] - 1, 'it ended before the kill'
    lost[logged - int(step)] += 1
  print(f'steps lost per kill (steps: kills): {dict(sorted(lost.items()))}')
  finish(tmp_path, jobs)
  assert_same_run(tmp_path, uninterrupted)


@pytest.mark.slow
def test_a_process_that_never_comes_is_one_line_after_the_startup_timeout(tmp_path, jobs):
  # Process 1 looks for the coordinator at a wrong address; process 0 waits for it in vain.
  job = jobs(tmp_path, {'startup_timeout_seconds': 5},
             addresses={1: f'127.0.0.1:{free_port()}'})
  ended = job.wait(timeout=120)
  for i in range(2):
    assert job.processes[i].returncode == 1, job.output(i)
    assert job.lines[i][-1].startswith(f'error: process {i} of 2 waited 5 s for the coordinator '
                                       'at 127.0.0.1:'), job.output(i)
    assert ended[i] - job.started < 60
  assert not (tmp_path / 'checkpoints').exists()


# What JAX 0.10.2's runtime printed in the jobs above (abridged), and what the line says.
REPORTS = {
    'heartbeat': ('E1207 22:32:07.997150    9864 coordination_service.cc:1549] [4098] Use error '
                  'polling to propagate the following error to all tasks: INTERNAL: Barrier '
                  'failed because: task is set to ERROR: UNAVAILABLE: Task 1 heartbeat timeout. '
                  'This indicates that the remote task has failed\n',
                  (1, 'UNAVAILABLE: Task 1 heartbeat timeout')),
    'unhealthy': ('F1207 22:28:12.225292    9508 client.h:80] Terminating process because the JAX '
                  'distributed service detected fatal errors. absl::Status: UNAVAILABLE: The '
                  'following tasks are unhealthy (stopped sending heartbeats):\n1\nThe tasks '
                  'have crashed.\n*** Check failure stack trace: ***\n    @ 0x7f2748b40634\n',
                  (1, 'UNAVAILABLE: The following tasks are unhealthy (stopped sending '
                      'heartbeats): 1')),
    'coordinator gone': ('F1207 22:30:06.119565    9745 client.h:80] Terminating process ... '
                         'absl::Status: UNAVAILABLE: Failed to send RPC to coordination service. '
                         'Either the leader task was preempted\n',
                         (0, 'UNAVAILABLE: Failed to send RPC to coordination service')),
    'coordinator hung': ('F1207 22:43:32.623029   12147 client.h:80] Terminating process ... '
                         'absl::Status: DEADLINE_EXCEEDED: Deadline Exceeded\n\nRPC: '
                         '/xla.coordination.CoordinationService/Heartbeat\n',
                         (0, 'DEADLINE_EXCEEDED: Deadline Exceeded RPC: '
                             '/xla.coordination.CoordinationService/Heartbeat')),
    'nothing': ('Fatal Python error: Aborted\n', None),
}


@pytest.mark.parametrize('name', REPORTS)
def test_the_lost_process_is_read_from_what_jax_reports(name):
  native, expected = REPORTS[name]
  assert supervise.lost_process(native) == expected


def test_the_runtime_records_are_kept_out_of_the_output():
  lines = [
      'I1207 22:35:45.500289 1401 train.py:306] step 1/60 (2%): loss 68.14\n',
      '[Gloo] Rank 0 is connected to 1 peer ranks. Expected number of connected peer ranks is : 1\n',
      'E1207 22:32:07.997112    9864 coordination_service.cc:1520] Shutdown barrier has failed:\n',
      "Barrier result: 'INTERNAL: Barrier failed'\n",
      '1\n',
      'W1207 22:45:12.728129 1399 multihost.py:436] Reached preemption sync point, step=7\n',
      'F1207 22:43:32.623029   12147 client.h:80] Terminating process\n',
      '*** Check failure stack trace: ***\n',
      '    @     0x7f2748b40634  absl::log_internal::LogMessage::SendToLog()\n',
      'Fatal Python error: Aborted\n',
      '\n',
      'Thread 0x00007fd94ffd26c0 (most recent call first):\n',
      '  File "threading.py", line 1139 in _wait_for_tstate_lock\n',
  ]
  out, native = io.StringIO(), collections.deque()
  supervise.relay(lines, out, native)
  assert out.getvalue() == lines[0] + lines[5]
  assert ''.join(native) == ''.join(lines[1:5] + lines[6:])


@pytest.mark.parametrize('signum,native,who,expected,status', [
    (signal.SIGABRT, REPORTS['unhealthy'][0], {'process': 0, 'processes': 2},
     'process 1 of 2 stopped responding (UNAVAILABLE: The following tasks are unhealthy '
     '(stopped sending heartbeats): 1); the job stops. Resubmit it to resume from step 0.', 75),
    (signal.SIGKILL, '', {'process': 1, 'processes': 4},
     'process 1 of 4 stopped (killed by SIGKILL); the job stops. Resubmit it to resume from step '
     '0.', 75),
    (signal.SIGKILL, '', None,
     'process stopped (killed by SIGKILL); the job stops. Resubmit it to resume from step 0.', 75),
    (signal.SIGABRT, 'F1207 client.h:80] absl::Status: DEADLINE_EXCEEDED: Deadline Exceeded\n\n'
     'RPC: /xla.coordination.CoordinationService/RegisterTask\n', None,
     "this process waited 7 s for the coordinator and the job's other processes, in vain", 1),
])
def test_the_line_and_exit_status_of_a_lost_child(tmp_path, monkeypatch, signum, native, who,
                                                  expected, status):
  for name in ('JAX_PROCESS_ID', 'JAX_NUM_PROCESSES', 'JAX_COORDINATOR_ADDRESS'):
    monkeypatch.delenv(name, raising=False)
  line, code = supervise.verdict(signum, native, who, str(tmp_path), 7)
  assert line.startswith(expected) and code == status
