"""One run per workdir: a live claim refuses a second run in one line; a stale one (its process
ended, or another host stopped renewing it) is taken over with a warning."""
import json
import os
import re
import socket
import subprocess
import time

from absl import logging
import pytest

from ipt_jax import claim
from tests.conftest import run_command


@pytest.fixture
def live_pid():
  """A process of this host that runs for the test."""
  process = subprocess.Popen(['sleep', '300'])
  yield process.pid
  process.kill()
  process.wait()


def write_claim(workdir, *, host, pid, age_seconds=0.):
  workdir.mkdir(exist_ok=True)
  path = workdir / claim.FILE
  path.write_text(json.dumps({'host': host, 'pid': pid, 'since': '2026-12-07T01:02:03+00:00'}))
  os.utime(path, (time.time() - age_seconds,) * 2)
  return path


def test_a_run_claims_its_workdir_and_gives_it_back(tmp_path):
  held = claim.Claim(tmp_path / 'w')
  mine = json.loads((tmp_path / 'w' / claim.FILE).read_text())
  assert (mine['host'], mine['pid']) == (socket.gethostname(), os.getpid())
  held.release()
  assert os.listdir(tmp_path / 'w') == []


@pytest.mark.parametrize('host', ['this', 'another-host'])
def test_a_live_claim_refuses_in_one_line_naming_the_holder(tmp_path, live_pid, host):
  host = socket.gethostname() if host == 'this' else host
  path = write_claim(tmp_path, host=host, pid=live_pid, age_seconds=30)
  before = path.read_text()
  with pytest.raises(claim.WorkdirInUseError) as refused:
    claim.Claim(tmp_path)
  assert re.match(
      re.escape(f'{tmp_path} is in use by process {live_pid} on {host} since '
                f'2026-12-07T01:02:03+00:00 (its claim {path} was renewed ') + r'3\d s ago\)\.',
      str(refused.value)), refused.value  # 30 s, or a little more on a busy machine.
  assert 'delete the claim file' in str(refused.value)
  assert path.read_text() == before


def test_main_refuses_a_claimed_workdir_before_writing(tmp_path, live_pid):
  write_claim(tmp_path, host=socket.gethostname(), pid=live_pid)
  result = run_command('main', '--config=configs/quickstart.py', f'--workdir={tmp_path}',
                       "--config.data.tasks=('sr_x2',)")
  assert result.returncode == 1
  assert result.stderr.startswith(f'error: {tmp_path} is in use by process {live_pid} on ')
  assert os.listdir(tmp_path) == [claim.FILE]


@pytest.mark.parametrize('holder,why', [
    ('ended', 'its process {pid} on this host has ended'),
    ('silent', 'another-host has not renewed it for 12 minutes'),
])
def test_a_stale_claim_is_taken_over_with_a_warning(tmp_path, monkeypatch, holder, why):
  if holder == 'ended':
    ended = subprocess.Popen(['true'])
    ended.wait()
    pid, host, age = ended.pid, socket.gethostname(), 0.
  else:
    pid, host, age = 1, 'another-host', 12 * 60.
  write_claim(tmp_path, host=host, pid=pid, age_seconds=age)
  warnings = []
  monkeypatch.setattr(logging, 'warning', lambda *args: warnings.append(args[0] % args[1:]))
  held = claim.Claim(tmp_path)
  assert warnings == [f'Taking over the workdir claim {tmp_path / claim.FILE}: '
                      f'{why.format(pid=pid)}']
  assert json.loads((tmp_path / claim.FILE).read_text())['pid'] == os.getpid()
  held.release()


@pytest.mark.parametrize('age,taken', [(5, False), (120, True)])
def test_an_unreadable_claim_is_being_written_when_young_and_stale_when_old(tmp_path, age,
                                                                            taken):
  path = tmp_path / claim.FILE
  path.write_text('{"host": ')
  os.utime(path, (time.time() - age,) * 2)
  if taken:
    claim.Claim(tmp_path).release()
  else:
    with pytest.raises(claim.WorkdirInUseError, match='another run is claiming this workdir at '
                                                      'this moment'):
      claim.Claim(tmp_path)
