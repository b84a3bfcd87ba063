"""Cloud TPU slices by accelerator type: their topology and each chip's published figures.

`get('v5litepod-16')` -> a `Slice`: the topology `jax.experimental.topologies` describes
without the hardware, and the chip's peak bfloat16 FLOP/s, HBM and interconnect bandwidth
from Google's Cloud TPU documentation (the page cited in each `Chip.source`).

An accelerator type is GENERATION-SIZE. Its size counts TensorCores for v4 and v5p (two per
chip, which JAX runs as one "megacore" device) and chips for v5e (`v5litepod`) and v6e.
"""
import dataclasses
import os

from ipt_jax import errors


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU chip, as its generation's Cloud TPU page states it.

  ici_gbytes_per_s is what one chip sends over the inter-chip interconnect per second, one
  way: half the bidirectional figure (v5e 400 GB/s, v5p 1,200, v6e 800). For v4, which
  publishes no per-chip figure, the all-reduce bandwidth per pod over its chips (1.1 PB/s /
  4,096); for v5e and v6e that quotient equals half the bidirectional figure too.
  """
  generation: str  # The topology's name prefix: 'v4', 'v5e', 'v5p', 'v6e'.
  type_prefix: str  # Of its accelerator types: 'v4', 'v5litepod', 'v5p', 'v6e'.
  cores_per_chip: int  # TensorCores per chip counted in the accelerator type's size.
  torus_dims: int  # 3: AxBxC slices of 4-chip hosts; 2: AxB, up to 8 chips on one host.
  peak_tflops: float  # Dense bfloat16, per chip.
  hbm_gib: float
  hbm_gbytes_per_s: float
  ici_gbytes_per_s: float
  source: str


CHIPS = (
    Chip('v4', 'v4', 2, 3, peak_tflops=275., hbm_gib=32., hbm_gbytes_per_s=1200.,
         ici_gbytes_per_s=1.1e6 / 4096, source='https://cloud.google.com/tpu/docs/v4'),
    Chip('v5e', 'v5litepod', 1, 2, peak_tflops=197., hbm_gib=16., hbm_gbytes_per_s=819.,
         ici_gbytes_per_s=200., source='https://cloud.google.com/tpu/docs/v5e'),
    Chip('v5p', 'v5p', 2, 3, peak_tflops=459., hbm_gib=95., hbm_gbytes_per_s=2765.,
         ici_gbytes_per_s=600., source='https://cloud.google.com/tpu/docs/v5p'),
    Chip('v6e', 'v6e', 1, 2, peak_tflops=918., hbm_gib=32., hbm_gbytes_per_s=1638.,
         ici_gbytes_per_s=400., source='https://cloud.google.com/tpu/docs/v6e'),
)

# Slice shapes by chip count (the Cloud TPU pages' tables).
_SHAPES = {
    2: {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16),
        256: (16, 16)},
    3: {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
        128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16),
        4096: (16, 16, 16)},
}


@dataclasses.dataclass(frozen=True)
class Slice:
  accelerator_type: str
  chip: Chip
  shape: tuple[int, ...]  # Chips along each torus dimension.

  @property
  def chips(self) -> int:
    return int(self.shape[0] * self.shape[1] * (self.shape[2] if len(self.shape) > 2 else 1))

  @property
  def topology_name(self) -> str:
    return f'{self.chip.generation}:{"x".join(map(str, self.shape))}'

  @property
  def chips_per_host_bounds(self) -> tuple[int, int, int]:
    """v5e and v6e slices of up to 8 chips are one host; every other host has 2x2 chips."""
    if self.chip.torus_dims == 2 and self.chips <= 8:
      return (*self.shape, 1)
    return (2, 2, 1)

  def devices(self):
    """The slice's JAX devices, described by libtpu without a TPU (one per chip)."""
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
    # libtpu as a compiler only: it looks for no TPU VM metadata and takes no lock on a TPU
    # (other processes may compile at the same time).
    os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
    os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
    chip_config = 'megacore' if self.chip.cores_per_chip == 2 else 'default'
    return topologies.get_topology_desc(
        platform='tpu', topology_name=self.topology_name, chip_config_name=chip_config,
        chips_per_host_bounds=self.chips_per_host_bounds, num_slices=1).devices


def known_types() -> list[str]:
  return [f'{chip.type_prefix}-{chips * chip.cores_per_chip}' for chip in CHIPS
          for chips in _SHAPES[chip.torus_dims]]


def get(accelerator_type: str) -> Slice:
  for chip in CHIPS:
    for chips, shape in _SHAPES[chip.torus_dims].items():
      if accelerator_type == f'{chip.type_prefix}-{chips * chip.cores_per_chip}':
        return Slice(accelerator_type, chip, shape)
  raise errors.FlagError(f'Unknown TPU accelerator type {accelerator_type!r}; known: '
                         f'{", ".join(known_types())}.')
