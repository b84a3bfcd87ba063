"""The shared command-line vocabulary and the one way every command fails."""
import ast
import importlib
import pathlib
import subprocess
import sys

from absl import flags
import pytest

from tests.conftest import REPO
from tests.conftest import run_command

COMMANDS = ('main', 'finetune', 'evaluate', 'restore', 'convert', 'benchmark', 'figures',
            'pack_imagenet', 'preflight')
# Flags of ipt_jax.cli: each must be the same everywhere it is taken.
SHARED = ('checkpoint', 'checkpoint_tasks', 'num_heads', 'tasks', 'dtype', 'tiling', 'overlap',
          'tile_batch', 'self_ensemble', 'output_dir', 'output', 'seed', 'config', 'workdir',
          'data_dir', 'sets')


def command(name, *args, **kwargs):
  return subprocess.run([sys.executable, '-m', f'ipt_jax.{name}', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300, **kwargs)


@pytest.fixture(scope='module')
def key_flags():
  """{command: {flag: (type, default)}} of the flags each command's --help lists."""
  out = {}
  for name in COMMANDS:
    module = importlib.import_module(f'ipt_jax.{name}')
    out[name] = {f.name: (f.flag_type(), f.default_as_str)
                 for f in flags.FLAGS.get_key_flags_for_module(module)}
  return out


def test_shared_flags_have_one_name_type_and_default_everywhere(key_flags):
  seen = {}
  for name, taken in key_flags.items():
    for flag in SHARED:
      if flag in taken:
        seen.setdefault(flag, {})[name] = taken[flag]
  for flag, by_command in seen.items():
    assert len(set(by_command.values())) == 1, (flag, by_command)
  # Who takes what (the README's table).
  takes = lambda flag: sorted(c for c in COMMANDS if flag in key_flags[c])
  assert takes('checkpoint') == ['convert', 'evaluate', 'figures', 'restore']
  assert takes('checkpoint_tasks') == ['convert', 'evaluate', 'figures', 'restore']
  assert takes('tasks') == ['benchmark', 'evaluate', 'figures', 'restore']
  assert takes('tiling') == ['benchmark', 'evaluate', 'restore']
  assert takes('dtype') == ['benchmark', 'evaluate', 'restore']
  assert takes('config') == ['benchmark', 'finetune', 'main', 'preflight']
  assert takes('workdir') == ['finetune', 'main']
  assert takes('output') == ['convert', 'figures']
  assert takes('data_dir') == ['evaluate', 'figures']
  for old in ('input', 'task', 'init'):
    assert not any(old in taken for taken in key_flags.values()), old


@pytest.mark.slow
def test_a_bug_inside_a_command_keeps_its_traceback(tmp_path):
  # A KeyError raised where the command loads its weights: not bad input, so not one line.
  program = ('import sys; from ipt_jax import convert, weights\n'
             'def broken(*args, **kwargs): raise KeyError("a bug")\n'
             'weights.load = broken\n'
             f'sys.argv = ["convert", "--checkpoint={tmp_path}", "--output={tmp_path / "out"}"]\n'
             'from ipt_jax import cli; cli.run(convert.main)\n')
  result = subprocess.run([sys.executable, '-c', program], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode != 0
  assert 'Traceback (most recent call last)' in result.stderr
  assert "KeyError: 'a bug'" in result.stderr
  assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('name,args,status,message', [
    # An unknown flag, a bad value, a misused argument: flag misuse, status 2.
    ('restore', ['--nosuchflag', 'x.png'], 2, 'error: Unknown command line flag'),
    ('evaluate', ['--tasks=sr_x2', '--data_dir=.', '--tile_batch=0'], 2,
     'error: flag --tile_batch=0: 0 is not a positive integer'),
    ('evaluate', ['--tasks=sr_x2', '--data_dir=.', '--tiling=exact'], 2,
     "error: flag --tiling=exact: value should be one of"),
    ('main', ['--config=configs/quickstart.py', '--workdir=w', 'extra'], 2,
     'error: unexpected arguments extra'),
    ('restore', ['--checkpoint=c.pt', '--tasks=sr_x2', '--output_dir=o'], 2,
     'error: no images given'),
    ('benchmark', ['--what=train', '--tasks=sr_x2'], 2, 'error: --what=train needs --config'),
    # Bad input: status 1.
    ('convert', ['--checkpoint=nothing.pt', '--output=x'], 1, 'error: nothing.pt: no such file.'),
    ('evaluate', ['--tasks=sr_x5', '--model=bicubic', '--data_dir=.'], 1,
     "error: Task 'sr_x5': the IPT upsampler supports scales 2, 3 and powers of 2"),
    ('evaluate', ['--tasks=sr_x2', '--model=bicubic', '--data_dir=nowhere'], 1,
     'error: nowhere/Set5: no such benchmark set folder'),
    ('main', ['--config=configs/quickstart.py', '--workdir=w', '--config.model.preset=huge'], 1,
     "error: Unknown model preset 'huge'"),
])
def test_bad_input_is_one_line(name, args, status, message):
  result = run_command(name, *args)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == status, result.stderr[-2000:]
  assert lines and lines[-1].startswith(message), result.stderr[-2000:]
  assert 'Traceback' not in result.stderr


@pytest.mark.slow
def test_a_missing_required_flag_is_one_line_and_status_2():
  # A real process: commands mark their required flags when run as a program.
  result = command('convert', '--output=x')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      'error: flag --checkpoint=None: Flag --checkpoint must have a value other than None. '
      '(see --help)')


def _imports(path: pathlib.Path) -> set[str]:
  """ipt_jax modules that the module at `path` imports, anywhere in it."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('ipt_jax'):
      found.update(f'{node.module}.{a.name}' for a in node.names)
      found.add(node.module)
    elif isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.startswith('ipt_jax'))
  return found


def test_the_package_import_graph_has_no_cycles():
  package = REPO / 'ipt_jax'
  modules = {'.'.join(p.relative_to(REPO).with_suffix('').parts): p
             for p in package.rglob('*.py') if p.name != '__init__.py'}
  graph = {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}
  visiting, done = set(), set()

  def visit(module, path):
    assert module not in visiting, f'import cycle: {" -> ".join(path + [module])}'
    if module in done:
      return
    visiting.add(module)
    for dep in graph[module]:
      visit(dep, path + [module])
    visiting.discard(module)
    done.add(module)

  for module in graph:
    visit(module, [])
  # Library modules never import a command.
  commands = {f'ipt_jax.{c}' for c in COMMANDS}
  for module, deps in graph.items():
    assert not deps & commands, (module, deps & commands)


def test_the_repository_is_self_contained():
  hits = subprocess.run(['grep', '-rn', r'\.\./shared', 'README.md', 'BENCHMARKS.md', 'docs',
                         'ipt_jax', 'launch', 'configs'], cwd=REPO, capture_output=True,
                        text=True)
  assert hits.stdout == ''


def test_configs_are_data():
  for path in (REPO / 'configs').glob('*.py'):
    assert not {i for i in _imports(path)}, f'{path.name} imports a library module'
