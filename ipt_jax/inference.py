"""Whole images through the fixed-size (48x48) IPT model, by overlapping tiles.

  image_model = inference.ImageModel(model, params, task, mode='official')
  output = image_model(image)  # [H, W, 3] in [0, 255] -> [H*s, W*s, 3], unclipped

Two tilings:
  'official'  exactly the official release's `forward_chop` (tiles every patch/4 = 12 px, averages
              of tile centres, borders from separately run strips): for the published protocol.
  'fast'      tiles `overlap` px apart from their neighbours (the paper's text: 10 px), the last row
              and column aligned with the image border, linear cross-fades in the overlaps; 7-10x
              fewer tiles than 'official' at the paper's overlap.

Both are written the same way: every tile's output is multiplied by a weight map and summed into
the output, which is then divided by the summed weights. A tiling is separable per axis except for
one quirk of the official code, so a weight map is a sum of a few outer products of per-axis
profiles (`_AxisTiling`), and the normaliser is one too: nothing image-sized is needed but the
output itself.

Tiles go through one jitted function in calls of `tile_batch` tiles. The rest of an image's
tiles go in calls of decreasing powers of two times the device count (a 72x72 image's 9 official
tiles: 8 + 1, not one call padded to 64), so no tile is computed twice and a (model, task)
compiles at most 1 + log2(tile_batch / devices) call shapes, whatever the image sizes
(`ImageModel.compile` compiles them all). Each call is split over the
local devices (a CPU split into one device per core, `parallel.initialize(cpu_devices=...)`, runs
every tile batch on all cores). Tiles are cut from the image batch by batch and their outputs
summed into a numpy array on the host, so memory is the output plus one batch. The model's dtype
is the compute dtype (pass a model with dtype=bfloat16 to run in bfloat16).
"""
from collections.abc import Iterator
import dataclasses
import functools
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ipt_jax import errors
from ipt_jax import parallel
from ipt_jax import tasks as tasks_lib

MODES = ('official', 'fast')
PAPER_OVERLAP = 10  # "48x48 patches with 10 pixels overlap" (Chen et al., Sec. 4).
TILE_BATCH = 64  # Tiles per model call by default.
_NORMALISE_ROWS = 512  # Output rows normalised at a time (bounds the normaliser's memory).


@dataclasses.dataclass(frozen=True)
class _AxisTiling:
  """The tiles along one axis of an image.

  Tile `a` reads input pixels [starts[a], starts[a] + patch) and its output is weighted, along
  this axis, by weights[k, a] (over its patch * scale output pixels) in term k: the 2-D weight of
  tile (a, b) is sum_k outer(rows.weights[k, a], cols.weights[k, b]).
  """
  starts: np.ndarray  # [num_tiles] int
  weights: np.ndarray  # [num_terms, num_tiles, patch * scale]

  def totals(self, scale: int) -> np.ndarray:
    """[num_terms, output length]: the weights of all tiles placed at their positions and summed."""
    size = self.weights.shape[-1]
    totals = np.zeros((self.weights.shape[0], int(self.starts[-1]) * scale + size))
    for start, weight in zip(self.starts, self.weights.transpose(1, 0, 2)):
      totals[:, start * scale:start * scale + size] += weight
    return totals


def _interval(first: int, size: int, low: int, high: int) -> np.ndarray:
  """[size] 0/1: which of the output pixels first..first+size-1 lie in [low, high)."""
  position = first + np.arange(size)
  return ((position >= low) & (position < high)).astype(np.float64)


def _official_axis(length: int, patch: int, scale: int, first_tile_alone: int) -> _AxisTiling:
  """One axis of the official forward_chop, as 0/1 weights (a pixel averages its tiles).

  The official code runs tiles every `stride` = patch/4 px from 0 (the main grid, ending
  `cut` = (length - patch) % stride px short of the border) and one more tile at length - patch
  (its bottom / right strip). Output pixel x (in output pixels) comes from:
    x < first_tile_alone:            the first tile alone;
    first_tile_alone <= x < seam:    the mean of the main-grid tiles whose centre (the tile without
                                     `stride` px on each side) contains x;
    seam <= x:                       the last tile (length - patch) alone,
  where the seam, at which its final concatenation switches to the border strip, is the middle
  (rounded up) of the (patch - cut) px shared by the border tile and the main grid.
  first_tile_alone (output px) is stride * scale, the first tile's own margin, except in the
  official top band (`_official_tiling`), where it is patch * scale.
  """
  stride = patch // 4  # Official: shave = patch / 2, stride = shave / 2.
  size = patch * scale
  num_grid = (length - patch) // stride + 1
  cut = (length - patch) % stride
  seam = (length - cut) * scale - (patch - cut) * scale // 2
  entries = {}  # start -> weights; the border tile may coincide with the last grid tile.
  for i in range(num_grid):
    first = i * stride * scale
    centre = _interval(first, size, first + stride * scale, first + size - stride * scale)
    alone = _interval(first, size, 0, first_tile_alone)
    own = np.maximum(centre, alone) if i == 0 else centre * (1 - alone)
    entries[i * stride] = own * _interval(first, size, 0, seam)
  border = (length - patch) * scale
  last = _interval(border, size, seam, length * scale)
  entries[length - patch] = entries.get(length - patch, 0) + last
  starts = np.array(sorted(entries))
  return _AxisTiling(starts, np.stack([entries[s] for s in starts])[None])


def _official_tiling(height: int, width: int, patch: int,
                     scale: int) -> tuple[_AxisTiling, _AxisTiling]:
  """The official forward_chop as (rows, cols) weights, in two terms (top band, the rest).

  It is separable but for one thing: the official code writes its top strip, then its left strip
  over the top-left patch x patch block, then the averaged interior over everything but a
  stride-wide frame. So the top `stride` rows of that block keep the left strip's values, which
  there are the first tile's alone, where the top strip would have averaged two tiles.
  """
  top = patch // 4 * scale
  rows = _official_axis(height, patch, scale, top)
  cols = _official_axis(width, patch, scale, top)
  cols_in_top_band = _official_axis(width, patch, scale, patch * scale)
  row_in_top = np.stack([_interval(s * scale, patch * scale, 0, top) for s in rows.starts])
  # Term 0: the top band, where the first tile alone covers `patch` columns; term 1: the rest.
  return (_AxisTiling(rows.starts, np.concatenate([rows.weights * row_in_top,
                                                   rows.weights * (1 - row_in_top)])),
          _AxisTiling(cols.starts, np.concatenate([cols_in_top_band.weights, cols.weights])))


def _fast_axis(length: int, patch: int, scale: int, overlap: int) -> _AxisTiling:
  """Tiles `patch - overlap` px apart, the last one ending at the border; linear cross-fades.

  Each tile ramps its weight up over its overlap with the previous tile and down over its overlap
  with the next one (the last overlap is usually wider than `overlap`), so in an overlap of two
  tiles the weights sum to one; a side that faces the image border is not tapered.
  """
  starts = np.array(list(range(0, length - patch, patch - overlap)) + [length - patch])
  size = patch * scale
  centres = np.arange(size) + 0.5
  # Output pixels shared with the previous / next tile (0 at the image border).
  shared_before = np.concatenate([[0], starts[:-1] + patch - starts[1:]]) * scale
  shared_after = np.concatenate([shared_before[1:], [0]])
  weights = []
  for before, after in zip(shared_before, shared_after):
    weight = np.ones(size)
    if before > 0:
      weight = np.minimum(weight, centres / before)
    if after > 0:
      weight = np.minimum(weight, (size - centres) / after)
    weights.append(weight)
  return _AxisTiling(starts, np.stack(weights)[None])


def _tiling(height: int, width: int, patch: int, scale: int, mode: str,
            overlap: int) -> tuple[_AxisTiling, _AxisTiling]:
  if mode == 'official':
    return _official_tiling(height, width, patch, scale)
  return _fast_axis(height, patch, scale, overlap), _fast_axis(width, patch, scale, overlap)


def _check_options(mode: str, overlap: int, tile_batch: int, patch: int):
  if mode not in MODES:
    raise errors.InputError(f"Unknown tiling mode {mode!r}: use 'official' (the official forward_chop, "
                            "for published numbers) or 'fast' (fewer tiles, blended overlaps).")
  is_int = lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool)
  if not is_int(overlap) or not 0 <= overlap < patch:
    raise errors.InputError(f'overlap must be an integer number of pixels in [0, {patch - 1}], so that '
                            f'{patch}x{patch} tiles advance by a positive stride ({patch} - overlap); '
                            f'got {overlap!r}.')
  if not is_int(tile_batch) or tile_batch < 1:
    raise errors.InputError(f'tile_batch (tiles per model call) must be a positive integer, got '
                            f'{tile_batch!r}; lower it if the accelerator runs out of memory.')


def num_tiles(height: int, width: int, *, mode: str = 'official', overlap: int = PAPER_OVERLAP,
              self_ensemble: bool = False, patch: int = 48) -> int:
  """How many patch x patch tiles the model runs on for a height x width image."""
  _check_options(mode, overlap, 1, patch)
  rows, cols = _tiling(max(height, patch), max(width, patch), patch, 1, mode, overlap)
  return len(rows.starts) * len(cols.starts) * (8 if self_ensemble else 1)


@functools.partial(jax.jit, static_argnames=('model', 'task'))
def _apply_tiles(params, tiles: jax.Array, *, model, task: int) -> jax.Array:
  """[B, patch, patch, 3] float32 -> [B, patch*s, patch*s, 3] in at least float32."""
  # Pixels stay in float32 (or the model's wider dtype): bfloat16 cannot hold 0..255 exactly.
  dtype = jnp.promote_types(model.dtype, jnp.float32)
  out = model.apply({'params': params}, tiles.astype(dtype), task=task)
  return out.astype(jnp.promote_types(out.dtype, jnp.float32))


def _dihedral(image: np.ndarray, index: int) -> np.ndarray:
  """The official forward_x8 transform `index`: bit 0 flips left-right, bit 1 up-down, bit 2
  transposes, in that order."""
  if index & 1:
    image = image[:, ::-1]
  if index & 2:
    image = image[::-1]
  return image.transpose(1, 0, 2) if index & 4 else image


def _inverse_dihedral(image: np.ndarray, index: int) -> np.ndarray:
  if index & 4:
    image = image.transpose(1, 0, 2)
  if index & 2:
    image = image[::-1]
  return image[:, ::-1] if index & 1 else image


class ImageModel:
  """`model` (an `ipt.IPT`) applied to whole images of any size, in tiles, for one task.

  Args:
    model: the model; its dtype is the compute dtype.
    params: its parameters.
    task: index of the task in model.tasks.
    mode: 'official' (forward_chop) or 'fast' (see the module docstring).
    overlap: 'fast' only: pixels shared by neighbouring tiles, in [0, patch).
    tile_batch: tiles per model call, rounded up to a multiple of the number of devices (an
      image's last tiles: smaller calls, see above).
    self_ensemble: average the 8 flips / transposes of the whole image, each restored and
      transformed back, as the official forward_x8 (whole-image, so that 'official' stays exact).
    devices: the devices that share each batch of tiles (default: all of this process's).
  """

  def __init__(self, model, params, task: int, *, mode: str = 'official',
               overlap: int = PAPER_OVERLAP, tile_batch: int = TILE_BATCH,
               self_ensemble: bool = False, devices=None):
    _check_options(mode, overlap, tile_batch, model.patch_size)
    mesh = parallel.make_mesh(devices=list(devices or jax.local_devices()))
    self._tile_sharding = parallel.batch_sharding(mesh)
    self.model = model
    self.params = jax.device_put(params, parallel.replicated(mesh))
    self.task = task
    self.mode = mode
    self.overlap = overlap
    self.tile_batch = -(-tile_batch // mesh.size) * mesh.size  # An equal share per device.
    self.call_sizes = _call_sizes(self.tile_batch, mesh.size)
    self.self_ensemble = self_ensemble
    self.scale = model.scale(task)
    self.patch = model.patch_size

  def num_tiles(self, height: int, width: int) -> int:
    """Model evaluations (tiles) for one height x width image."""
    return num_tiles(height, width, mode=self.mode, overlap=self.overlap,
                     self_ensemble=self.self_ensemble, patch=self.patch)

  def compile(self):
    """Compiles the model for every call shape now (one call each on blank tiles)."""
    for size in self.call_sizes:
      jax.block_until_ready(self._apply(np.zeros((size, self.patch, self.patch, 3), np.float32)))

  def _apply(self, tiles: np.ndarray) -> jax.Array:
    return _apply_tiles(self.params, jax.device_put(tiles, self._tile_sharding),
                        model=self.model, task=self.task)

  def __call__(self, image: Any) -> np.ndarray:
    """[H, W, 3] (float or uint8, in [0, 255]) -> [H*s, W*s, 3], unclipped and unrounded.

    float32, or float64 when the model computes in float64 (with jax_enable_x64).
    """
    image = _as_image(image)
    if not self.self_ensemble:
      return self._restore(image)
    total = self._restore(image)
    for i in range(1, 8):
      total += _inverse_dihedral(self._restore(_dihedral(image, i)), i)
    total /= 8
    return total

  def _restore(self, image: np.ndarray) -> np.ndarray:
    """One image; smaller than a tile in a dimension: reflect-padded and cropped back."""
    height, width = image.shape[:2]
    # numpy repeats the reflection when the pad is wider than the image (and repeats a 1 px one).
    padded = np.pad(image, ((0, max(self.patch - height, 0)), (0, max(self.patch - width, 0)),
                            (0, 0)), mode='reflect')
    rows, cols = _tiling(*padded.shape[:2], self.patch, self.scale, self.mode, self.overlap)
    output = self._weighted_sum(padded, rows, cols)
    _normalise(output, rows.totals(self.scale), cols.totals(self.scale))
    if padded.shape != image.shape:
      output = output[:height * self.scale, :width * self.scale].copy()
    return output

  def _weighted_sum(self, image: np.ndarray, rows: _AxisTiling, cols: _AxisTiling) -> np.ndarray:
    """sum over tiles of weight * model(tile), placed at the tiles' output positions."""
    out_size = self.patch * self.scale  # Of a tile's output.
    dtype = jax.dtypes.canonicalize_dtype(jnp.promote_types(self.model.dtype, jnp.float32))
    output = np.zeros((image.shape[0] * self.scale, image.shape[1] * self.scale, 3), dtype)

    def add(tiles, outputs):
      for (a, b), tile_output in zip(tiles, np.asarray(outputs)):
        weight = np.einsum('ki,kj->ij', rows.weights[:, a], cols.weights[:, b])
        top, left = rows.starts[a] * self.scale, cols.starts[b] * self.scale
        output[top:top + out_size, left:left + out_size] += (
            weight.astype(dtype)[..., None] * tile_output)

    pending = None
    tiles = list(itertools.product(range(len(rows.starts)), range(len(cols.starts))))
    for call_tiles, call_size in _calls(tiles, self.call_sizes):
      batch = np.zeros((call_size, self.patch, self.patch, 3), np.float32)
      for k, (a, b) in enumerate(call_tiles):
        batch[k] = image[rows.starts[a]:rows.starts[a] + self.patch,
                         cols.starts[b]:cols.starts[b] + self.patch]
      outputs = self._apply(batch)
      # The device runs this call while the host adds up the previous one.
      if pending:
        add(*pending)
      pending = call_tiles, outputs
    add(*pending)
    return output


def image_model(model, params, task_name: str, **options) -> ImageModel:
  """An ImageModel for the model's task called `task_name` (an error lists the model's tasks)."""
  return ImageModel(model, params, tasks_lib.index(task_name, model.tasks), **options)


def _call_sizes(tile_batch: int, devices: int) -> list[int]:
  """The tiles per call, smallest first: devices x 1, 2, 4, ... below tile_batch, then it."""
  sizes = [devices]
  while sizes[-1] * 2 < tile_batch:
    sizes.append(sizes[-1] * 2)
  return sizes + [tile_batch] if sizes[-1] < tile_batch else sizes


def _calls(tiles: list, sizes: list[int]) -> Iterator[tuple[list, int]]:
  """(tiles, call size): each call the largest size that the tiles left fill (the last one,
  fewer than the smallest size, padded to it)."""
  while tiles:
    size = next((size for size in reversed(sizes) if size <= len(tiles)), sizes[0])
    yield tiles[:size], size
    tiles = tiles[size:]


def _normalise(output: np.ndarray, row_totals: np.ndarray, col_totals: np.ndarray):
  """output /= the summed tile weights (sum_k outer(row_totals[k], col_totals[k])), in place."""
  for top in range(0, output.shape[0], _NORMALISE_ROWS):
    rows = slice(top, top + _NORMALISE_ROWS)
    norm = np.einsum('kr,kc->rc', row_totals[:, rows], col_totals)
    output[rows] /= norm.astype(output.dtype)[..., None]


def _as_image(image: Any) -> np.ndarray:
  """`image` as a [H, W, 3] float32 numpy array, or a ValueError that says what to do."""
  shape = tuple(np.shape(image))
  if len(shape) != 3 or shape[-1] != 3:
    raise ValueError(f'Expected one RGB image of shape [height, width, 3], got shape {shape}. '
                     'Restore a batch image by image; convert grayscale or RGBA images to RGB first.')
  if 0 in shape:
    raise ValueError(f'The image is empty (shape {shape}).')
  return np.asarray(image, np.float32)
