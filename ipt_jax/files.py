"""Files written whole or not at all."""
from collections.abc import Callable
import os
import pathlib

from PIL import Image


def write_atomically(path, write: Callable[[str], None]):
  """Calls write(temporary path) beside `path`, then renames it to `path`: never half-written."""
  path = pathlib.Path(path)
  temporary = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
  try:
    write(os.fspath(temporary))
    os.replace(temporary, path)
  finally:
    temporary.unlink(missing_ok=True)


def write_png(path, image: Image.Image):
  """Saves `image` as a PNG at `path` atomically (its ICC profile, if any, included)."""
  write_atomically(path, lambda temporary: image.save(temporary, format='PNG'))
