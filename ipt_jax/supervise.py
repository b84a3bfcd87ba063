"""A multi-process job that loses a process ends in one line per process, and resumes exactly.

When a process of a multi-process JAX job dies or hangs, JAX's coordination service notices
(a missed heartbeat, a lost connection to the coordinator) and ends every other process with
SIGABRT, a C++ stack and screens of gRPC and Gloo errors, out of Python's reach. So a
multi-process training command (`ipt_jax.main`, `ipt_jax.finetune`) trains in a child process
and the process the launcher started supervises it:
  * the child's output passes through, but for the distributed runtime's native error records
    (logged at debug level: `-v 1` shows them);
  * SIGTERM and SIGINT are passed on (a pre-emption: every process saves one agreed step and
    exits 0);
  * when the child is lost, one line names the process that stopped and the step the job
    resumes from, and the exit status is RESTART: run the same command again. A process that
    never got in touch with the others (a wrong coordinator address, a process not started)
    is one line and exit status 1 after `startup_timeout_seconds`.
The child dies with its supervisor (PR_SET_PDEATHSIG), so a lost host leaves no orphan.
"""
import collections
from collections.abc import Callable
import ctypes
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

from absl import logging as absl_logging
import jax

from ipt_jax import checkpoint
from ipt_jax import errors
from ipt_jax import parallel

RESTART = 75  # EX_TEMPFAIL of sysexits.h: a temporary failure; the same command resumes.
_REPORT = 'IPT_JAX_SUPERVISOR_REPORT'  # In the child: the file it writes who it is to.
_SUPERVISOR = 'IPT_JAX_SUPERVISOR_PID'
# How long a child whose collective failed waits for JAX's verdict on the other processes,
# beyond the heartbeat timeout, before it reports the failure as a bug of its own.
_VERDICT_GRACE_SECONDS = 30
_FORWARDED = (signal.SIGTERM, signal.SIGINT)

# Native log records of the distributed runtime (absl/glog: severity, date, time, thread,
# source) and an abort's epilogue, each running until the next record starts; Gloo's lines.
_RUNTIME_RECORD = re.compile(
    r'^([IWEF]\d{4} [\d:.]+\s+\d+ (coordination_\w+|client|preemption_\w+|\w*grpc\w*|pair|'
    r'distributed\w*)\.(cc|h):\d+\]|Fatal Python error: |\*\*\* Check failure)')
_RUNTIME_LINE = re.compile(r'^\[Gloo\] ')
_RECORD_START = re.compile(r'^([IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\]|Traceback |error: )')
_NATIVE_LINES_KEPT = 500

# What JAX reports about a lost process, and which process that is (None: the one the report
# names; 0 when the coordination service, which process 0 runs, cannot be reached).
_LOST = (
    (re.compile(r'UNAVAILABLE: Task (\d+) heartbeat timeout'), None),
    (re.compile(r'UNAVAILABLE: The following tasks are unhealthy \(stopped sending '
                r'heartbeats\):\s*(\d+)'), None),
    (re.compile(r'UNAVAILABLE: Failed to send RPC to coordination service'), 0),
    (re.compile(r'DEADLINE_EXCEEDED: Deadline Exceeded\s*RPC: \S+/Heartbeat'), 0),
)
_STARTUP_TIMEOUT = re.compile(r'DEADLINE_EXCEEDED[^\n]*(\n[^\n]*){0,3}RegisterTask')


def run(config, workdir: str, train: Callable[[], object]):
  """Starts JAX as `config` says and calls `train`; with several processes, `train` runs in
  a child process (the same command) that this one supervises, and this exits with its
  verdict."""
  for name in ('heartbeat_timeout_seconds', 'startup_timeout_seconds'):
    if not (isinstance(config[name], int) and config[name] > 0):
      raise errors.InputError(f'config.{name} is {config[name]!r}; it must be a positive '
                              f'number of seconds (--config.{name}=...).')
  supervised = _REPORT in os.environ
  if not supervised and parallel.several_processes(config.distributed):
    sys.exit(supervise(workdir, config.startup_timeout_seconds))
  if supervised:
    _die_with_supervisor()
  parallel.initialize(config.distributed, config.mesh.cpu_devices,
                      heartbeat_timeout_seconds=config.heartbeat_timeout_seconds,
                      startup_timeout_seconds=config.startup_timeout_seconds)
  if not supervised:
    train()
    return
  absl_logging.get_absl_handler().addFilter(_SaveErrorsAtDebug())
  with open(os.environ[_REPORT], 'w') as f:
    json.dump({'process': jax.process_index(), 'processes': jax.process_count()}, f)
  try:
    train()
  except errors.InputError:
    raise
  except Exception:  # pylint: disable=broad-except
    # A failed collective: most likely another process is gone, and JAX ends this one once
    # the coordination service knows which. If it does not, the error is this run's own.
    absl_logging.debug('Waiting for the coordination service after:', exc_info=True)
    time.sleep(config.heartbeat_timeout_seconds + _VERDICT_GRACE_SECONDS)
    raise


def supervise(workdir: str, startup_timeout_seconds: int) -> int:
  """Runs this command again as a child process and returns the exit status that says how it
  ended (see the module docstring)."""
  spec = sys.modules['__main__'].__spec__  # None when started as a script, not with -m.
  program = ['-m', spec.name] if spec else [sys.argv[0]]
  with tempfile.TemporaryDirectory(prefix='ipt_jax_supervisor') as folder:
    report = os.path.join(folder, 'report.json')
    child = subprocess.Popen(
        [sys.executable, '-u', *program, *sys.argv[1:]], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, errors='replace',
        env={**os.environ, _REPORT: report, _SUPERVISOR: str(os.getpid())})
    handlers = {s: signal.signal(s, lambda signum, _: child.send_signal(signum))
                for s in _FORWARDED}
    native = collections.deque(maxlen=_NATIVE_LINES_KEPT)
    stdout = threading.Thread(target=relay, args=(child.stdout, sys.stdout, native))
    try:
      stdout.start()
      relay(child.stderr, sys.stderr, native)
      stdout.join()
      status = child.wait()
    finally:
      for s, handler in handlers.items():
        signal.signal(s, handler)
    who = _read_json(report)
  if status >= 0:  # It ended by itself: done, pre-empted, or it said why (one line, a bug).
    return status
  line, code = verdict(-status, ''.join(native), who, workdir, startup_timeout_seconds)
  print(f'error: {line}', file=sys.stderr, flush=True)
  return code


def relay(lines, out, native: collections.deque):
  """Writes `lines` to `out`, but for the distributed runtime's records: those go to the debug
  log and to `native`."""
  in_record = False
  for line in lines:
    if _RUNTIME_RECORD.match(line):
      in_record = True
    elif _RECORD_START.match(line):
      in_record = False
    if in_record or _RUNTIME_LINE.match(line):
      native.append(line)
      absl_logging.debug('child: %s', line.rstrip('\n'))
    else:
      out.write(line)
      out.flush()


def verdict(signum: int, native: str, who: dict | None, workdir: str,
            startup_timeout_seconds: int) -> tuple[str, int]:
  """The line and exit status for a child ended by signal `signum`, from what the
  distributed runtime printed (`native`) and who the child was (None: it never started)."""
  if who is None and _STARTUP_TIMEOUT.search(native):
    return _startup_line(startup_timeout_seconds), 1
  this = who['process'] if who else _env_int('JAX_PROCESS_ID')
  count = who['processes'] if who else _env_int('JAX_NUM_PROCESSES')
  lost = lost_process(native)
  if lost:
    stopped, what = f'process {lost[0]}', f'stopped responding ({lost[1]})'
  else:  # Nothing from JAX: this very process was killed.
    stopped = 'process' if this is None else f'process {this}'
    what = f'stopped (killed by {signal.Signals(signum).name})'
  of = '' if count is None else f' of {count}'
  return (f'{stopped}{of} {what}; the job stops. Resubmit it to resume from step '
          f'{newest_intact_step(workdir)}.'), RESTART


def lost_process(native: str) -> tuple[int, str] | None:
  """(the process JAX reports lost, its report), or None when it reported none."""
  for pattern, process in _LOST:
    match = pattern.search(native)
    if match:
      return (int(match.group(1)) if process is None else process,
              ' '.join(match.group(0).split()))
  return None


def newest_intact_step(workdir: str) -> int:
  """The step a resubmitted job resumes from: the newest intact checkpoint, 0 if none."""
  try:
    return int(checkpoint.find_params_dir(f'{workdir}/checkpoints').name)
  except errors.InputError:
    return 0


def _startup_line(timeout: int) -> str:
  process, count = os.environ.get('JAX_PROCESS_ID'), os.environ.get('JAX_NUM_PROCESSES')
  this = f'process {process} of {count}' if process and count else 'this process'
  address = os.environ.get('JAX_COORDINATOR_ADDRESS')
  coordinator = f'the coordinator at {address}' if address else 'the coordinator'
  return (f'{this} waited {timeout} s for {coordinator} and the job\'s other processes, in '
          'vain (DEADLINE_EXCEEDED: RegisterTask). Check that every process of the job was '
          'started, each with its own process id, and that the coordinator address names '
          'process 0\'s host and a port the others can reach; if hosts start slowly, raise '
          '--config.startup_timeout_seconds.')


class _SaveErrorsAtDebug(logging.Filter):
  """Orbax's background save thread logs a failed save as an error with its traceback, then
  raises it in the main thread: a lost process fails every save in flight, so here that
  record goes to the debug log and the raise reports it."""

  def filter(self, record):
    if record.levelno >= logging.ERROR and f'{os.sep}orbax{os.sep}' in record.pathname:
      absl_logging.debug('orbax: %s', record.getMessage())
      return False
    return True


def _die_with_supervisor():
  """This child gets SIGKILL when its supervisor ends (Linux; elsewhere it may outlive it)."""
  if sys.platform.startswith('linux'):
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  if os.getppid() != int(os.environ[_SUPERVISOR]):  # It ended before prctl took effect.
    os._exit(RESTART)


def _env_int(name: str) -> int | None:
  value = os.environ.get(name, '')
  return int(value) if value.isdigit() else None


def _read_json(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None
