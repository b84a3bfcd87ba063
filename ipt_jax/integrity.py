"""Checksums of checkpoint files, so that damage is found before anything is loaded.

Orbax detects neither flipped bits (they load as wrong numbers) nor, in a useful way, missing
or truncated files (it fails deep inside TensorStore). Every checkpoint directory the project
writes therefore gets `checksums.json` once its save has committed: the size and SHA-256 of
every file in it. `verify` checks them and names the first damaged file. A directory without
the manifest (written by an older version, or killed between commit and manifest) loads
unverified.
"""
import hashlib
import json

from etils import epath
import jax
import jax.numpy as jnp

from ipt_jax import errors
from ipt_jax import files

MANIFEST = 'checksums.json'
_CHUNK = 1 << 22


class DamagedCheckpointError(errors.InputError):
  """A checkpoint's files are missing, truncated or changed since they were written."""


def _files(directory: epath.Path) -> list[str]:
  return sorted(str((root / name).relative_to(directory)) for root, _, names in directory.walk()
                for name in names if name != MANIFEST)


def _sha256(path: epath.Path) -> str:
  digest = hashlib.sha256()
  with path.open('rb') as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def write_manifest(directory) -> None:
  """Records the size and SHA-256 of every file under `directory` (a committed checkpoint)."""
  directory = epath.Path(directory)
  manifest = {name: [(directory / name).stat().length, _sha256(directory / name)]
              for name in _files(directory)}
  files.write_atomically(directory / MANIFEST,
                         lambda tmp: epath.Path(tmp).write_text(json.dumps(manifest, indent=0)))


def has_manifest(directory) -> bool:
  return (epath.Path(directory) / MANIFEST).exists()


def verify(directory) -> bool:
  """Checks every file against the manifest: True when verified, False when there is no
  manifest; a DamagedCheckpointError names the first missing, truncated or changed file."""
  directory = epath.Path(directory)
  if not has_manifest(directory):
    return False
  try:
    manifest = json.loads((directory / MANIFEST).read_text())
  except json.JSONDecodeError as e:
    raise DamagedCheckpointError(f'{directory} is damaged: {MANIFEST} is unreadable ({e}).')
  for name, (size, sha256) in manifest.items():
    path = directory / name
    if not path.exists():
      problem = 'missing'
    elif path.stat().length != size:
      problem = f'truncated or extended ({path.stat().length} bytes, {size} written)'
    elif _sha256(path) != sha256:
      problem = 'changed since it was written (checksum mismatch)'
    else:
      continue
    raise DamagedCheckpointError(f'{directory} is damaged: {name} is {problem}.')
  return True


@jax.jit
def _all_finite(tree):
  # One program for the whole tree: op by op would compile two programs per array shape.
  return jax.tree.map(lambda x: jnp.isfinite(x).all(), tree)


def check_finite(params, where) -> None:
  """Refuses parameters holding NaN or infinity, naming the first such array."""
  finite = jax.device_get(_all_finite(params))
  for path, ok in jax.tree_util.tree_flatten_with_path(finite)[0]:
    if not ok:
      name = '/'.join(getattr(k, 'key', str(k)) for k in path)
      raise DamagedCheckpointError(f'{where}: parameter {name} holds NaN or infinite values; '
                                   'use an earlier checkpoint.')
