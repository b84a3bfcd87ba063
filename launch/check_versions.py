"""Prints the versions of Python and of ipt_jax's dependencies in this environment, and fails when
one is below the floor that ipt_jax declares (setup.py: python_requires, install_requires).

  python launch/check_versions.py                                # the installed ipt_jax's floors
  python launch/check_versions.py --pins=constraints/minimum.txt # and exactly these NAME==VERSION

One line `HOST: Python 3.11.9, absl-py 2.3.1, ...` on stdout; then, for each requirement not met,
`HOST: error: ...` on stderr and exit status 1. `launch/tpu.sh setup` runs it on every TPU worker,
.ci/minimum_versions in the virtualenv with the floors. Standard library only (and `packaging`,
which pip and TensorFlow bring), so that it runs before anything is imported from the project.
"""
import argparse
import importlib.metadata as metadata
import platform
import socket
import sys

try:
  from packaging.requirements import Requirement
  from packaging.specifiers import SpecifierSet
except ImportError:  # A bare virtualenv: pip's own copy.
  from pip._vendor.packaging.requirements import Requirement  # type: ignore
  from pip._vendor.packaging.specifiers import SpecifierSet  # type: ignore

# Not requirements of ipt_jax, but what a report of the accelerator stack needs.
ALSO_SHOWN = ('jaxlib', 'libtpu', 'jax-cuda12-plugin', 'jax-cuda13-plugin')


def installed(name: str) -> str | None:
  try:
    return metadata.version(name)
  except metadata.PackageNotFoundError:
    return None


def check(package: str, pins: list[str]) -> tuple[list[str], list[str]]:
  """(name version, ...) shown and the errors, for `package`'s floors and the exact `pins`."""
  shown, errors = [f'Python {platform.python_version()}'], []
  version = installed(package)
  if version is None:
    return shown, [f'{package} is not installed in {sys.prefix}']
  requires_python = metadata.metadata(package).get('Requires-Python')
  if requires_python and platform.python_version() not in SpecifierSet(requires_python):
    errors.append(f'Python {platform.python_version()} is below the floor of {package} '
                  f'({requires_python})')
  names = []
  for line in metadata.requires(package) or []:
    requirement = Requirement(line)
    if requirement.marker and not requirement.marker.evaluate({'extra': ''}):
      continue  # An extra (torch, test): not needed to train.
    names.append(requirement.name)
    found = installed(requirement.name)
    if found is None:
      errors.append(f'{requirement.name} is not installed ({package} needs '
                    f'{requirement.specifier})')
    elif not requirement.specifier.contains(found, prereleases=True):
      errors.append(f'{requirement.name} {found} is below the floor of {package} '
                    f'({requirement.specifier})')
  for pin in pins:
    requirement = Requirement(pin)
    found = installed(requirement.name)
    if requirement.name not in names:
      names.append(requirement.name)
    if found is None or not requirement.specifier.contains(found, prereleases=True):
      errors.append(f'{requirement.name} {found or "(not installed)"} is not the pinned '
                    f'{requirement.specifier}')
  names += [name for name in ALSO_SHOWN if installed(name) and name not in names]
  shown += [f'{name} {installed(name) or "(not installed)"}' for name in names]
  return shown, errors


def read_pins(path: str) -> list[str]:
  """The NAME==VERSION lines of a constraints file (comments and blank lines skipped)."""
  with open(path, encoding='utf-8') as f:
    return [line.split('#')[0].strip() for line in f if line.split('#')[0].strip()]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
  parser.add_argument('--package', default='ipt_jax', help='whose floors (default ipt_jax)')
  parser.add_argument('--pins', help='a constraints file: each NAME==VERSION must be installed '
                      'at exactly that version')
  args = parser.parse_args(argv)
  host = socket.gethostname()
  shown, errors = check(args.package, read_pins(args.pins) if args.pins else [])
  print(f'{host}: {", ".join(shown)}', flush=True)
  for error in errors:
    print(f'{host}: error: {error}', file=sys.stderr)
  return 1 if errors else 0


if __name__ == '__main__':
  sys.exit(main())
