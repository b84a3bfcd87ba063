"""One run per workdir: a claim file naming the run that holds it.

Before a training run writes into its workdir, process 0 creates <workdir>/claim.json
(host, process id, start time), renews it every RENEW_SECONDS while the run lasts and removes
it at the end. A second run on the same workdir (a job resubmitted while the first still
runs) refuses with one line naming the holder. A claim is stale, and taken over with a
warning, when its process is gone (a claim from this host) or when it has not been renewed
for STALE_SECONDS (another host's, which may have died). A multi-host job holds one claim,
process 0's. To take over a live claim, delete the file.
"""
import datetime
import json
import os
import socket
import threading
import time

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np

from ipt_jax import errors
from ipt_jax import files

FILE = 'claim.json'
RENEW_SECONDS = 60
STALE_SECONDS = 600


class WorkdirInUseError(errors.InputError):
  """Another run holds the workdir."""


class Claim:
  """This run's claim on `workdir`: taken on construction (or WorkdirInUseError), given back
  by `release()`."""

  def __init__(self, workdir):
    self._path = files.absolute(workdir) / FILE
    self._mine = {'host': socket.gethostname(), 'pid': os.getpid(),
                  'since': datetime.datetime.now().astimezone().isoformat(timespec='seconds')}
    refusal = _take(self._path, self._mine) if jax.process_index() == 0 else ''
    if jax.process_count() > 1:  # All processes refuse together.
      if multihost_utils.broadcast_one_to_all(np.int32(bool(refusal))) and not refusal:
        refusal = f'{self._path.parent} is in use by another run (the log of process 0 names it).'
    if refusal:
      raise WorkdirInUseError(refusal)
    self._stop = threading.Event()
    self._renewer = None
    if jax.process_index() == 0:
      self._renewer = threading.Thread(target=self._renew, daemon=True, name='claim_renewer')
      self._renewer.start()

  def _renew(self):
    while not self._stop.wait(RENEW_SECONDS):
      try:
        _touch(self._path)
      except OSError as e:  # Renewal is best effort: a missed one only ages the claim.
        logging.warning('Could not renew the workdir claim %s: %s', self._path, e)

  def release(self):
    """Stops renewing and removes the claim file, if it is still this run's."""
    if self._renewer is None:
      return
    self._stop.set()
    self._renewer.join()
    self._renewer = None
    if _read(self._path) == self._mine:
      self._path.unlink(missing_ok=True)


def _take(path: epath.Path, mine: dict) -> str:
  """Creates the claim file; '' when it is ours now, else why not (one sentence)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  for _ in range(2):
    if _create_exclusively(path, json.dumps(mine)):
      return ''
    holder, age = _read(path), _age_seconds(path)
    stale = _why_stale(holder, age)
    if not stale and not _is_claim(holder):
      return f'{path}: another run is claiming this workdir at this moment; check what runs on it.'
    if not stale:
      return (f'{path.parent} is in use by process {holder["pid"]} on {holder["host"]} since '
              f'{holder["since"]} (its claim {path} was renewed {age:.0f} s ago). Two runs on '
              'one workdir would write the same checkpoints: wait for that run to end or stop '
              'it. If it is gone (its host died), delete the claim file, or run again once it '
              f'is {STALE_SECONDS // 60} minutes old.')
    logging.warning('Taking over the workdir claim %s: %s', path, stale)
    path.unlink(missing_ok=True)
  return f'{path}: another run keeps claiming this workdir; check what runs on it.'


def _why_stale(holder: dict | None, age: float) -> str:
  """Why the claim of `holder`, renewed `age` seconds ago, no longer holds; '' if it does."""
  if not _is_claim(holder):
    return 'it is unreadable' if age > RENEW_SECONDS else ''  # Else: being written now.
  if holder['host'] == socket.gethostname():
    running = isinstance(holder['pid'], int) and files.is_running(holder['pid'])
    return '' if running else f'its process {holder["pid"]} on this host has ended'
  if age > STALE_SECONDS:
    return f'{holder["host"]} has not renewed it for {age / 60:.0f} minutes'
  return ''


def _is_claim(holder) -> bool:
  return isinstance(holder, dict) and {'host', 'pid', 'since'} <= holder.keys()


def _create_exclusively(path: epath.Path, text: str) -> bool:
  """Writes `text` to `path` unless it exists; False if it did. Atomic on local disks (a
  hard link to a written file); on buckets, a check then a write."""
  if '://' in os.fspath(path):
    if path.exists():
      return False
    path.write_text(text)
    return True
  temporary = path.with_name(f'.{path.name}.{os.getpid()}.{files.TMP}')
  temporary.write_text(text)
  try:
    os.link(temporary, path)
    return True
  except FileExistsError:
    return False
  finally:
    temporary.unlink(missing_ok=True)


def _read(path: epath.Path) -> dict | None:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def _age_seconds(path: epath.Path) -> float:
  try:
    return max(0., time.time() - path.stat().mtime)
  except OSError:
    return 0.


def _touch(path: epath.Path):
  if '://' in os.fspath(path):
    path.write_text(path.read_text())
  else:
    os.utime(path)
