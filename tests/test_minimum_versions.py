"""The version floors of setup.py and the constraints that CI proves them with agree:
constraints/minimum.txt pins every direct dependency exactly to its declared floor, and nothing
else; .ci/minimum_versions (run by .ci/run) uses the Python of python_requires. The run itself
(a fresh virtualenv, a training with a checkpoint save and resume, the model tests) is the CI
step .ci/minimum_versions: it takes minutes, not a unit test's seconds."""
import ast
import pathlib
import re

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parents[1]


def setup_keywords() -> dict:
  """The literal keyword arguments of the setuptools.setup(...) call in setup.py."""
  tree = ast.parse((ROOT / 'setup.py').read_text())
  (call,) = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and getattr(node.func, 'attr', None) == 'setup']
  keywords = {}
  for keyword in call.keywords:
    try:
      keywords[keyword.arg] = ast.literal_eval(keyword.value)
    except ValueError:
      pass  # long_description=open(...): not a literal.
  return keywords


def floors() -> dict[str, str]:
  """{name: floor} of install_requires, the torch extra and the test extra's pytest."""
  keywords = setup_keywords()
  extras = keywords['extras_require']
  lines = [*keywords['install_requires'], *extras['torch'],
           *[r for r in extras['test'] if Requirement(r).name == 'pytest']]
  result = {}
  for line in lines:
    requirement = Requirement(line)
    (specifier,) = requirement.specifier  # One bound, a floor: nothing caps the versions.
    assert specifier.operator == '>=', f'{line}: a floor is written NAME>=VERSION'
    result[canonicalize_name(requirement.name)] = specifier.version
  return result


def pins() -> dict[str, str]:
  result = {}
  for line in (ROOT / 'constraints' / 'minimum.txt').read_text().splitlines():
    line = line.split('#')[0].strip()
    if line:
      name, version = re.fullmatch(r'([A-Za-z0-9_.-]+)==(\S+)', line).groups()
      assert canonicalize_name(name) not in result, f'{name} is pinned twice'
      result[canonicalize_name(name)] = version
  return result


def test_every_direct_dependency_is_pinned_to_its_floor():
  assert pins() == floors()


def test_the_floors_run_uses_the_python_floor():
  (floor,) = re.fullmatch(r'>=(3\.\d+)', setup_keywords()['python_requires']).groups()
  script = (ROOT / '.ci' / 'minimum_versions').read_text()
  assert f'python=${{PYTHON:-python{floor}}}' in script
  assert 'constraints/minimum.txt' in script


def test_ci_runs_the_floors():
  lines = (ROOT / '.ci' / 'run').read_text().splitlines()
  assert '.ci/minimum_versions' in lines
  # After the main test run.
  assert lines.index('.ci/minimum_versions') > lines.index('python -m pytest tests -q')
