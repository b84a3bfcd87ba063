"""The TPU preflight: HLO accounting on CPU programs, accelerator types, and real compiles of a
small IPT for a 4-chip v5e slice with libtpu (skipped without it); no TPU is needed."""
import functools
import importlib.util
import json
import re
from unittest import mock

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import pytest

from configs import quickstart
from ipt_jax import errors
from ipt_jax import hlo
from ipt_jax import preflight
from ipt_jax import tpus
from tests import conftest

needs_libtpu = pytest.mark.skipif(importlib.util.find_spec('libtpu') is None,
                                  reason='libtpu (pip install "jax[tpu]") is not installed')
V5E_4 = 'v5litepod-4'


def _analyse(fn, *args):
  return hlo.analyse(jax.jit(fn).lower(*args).compile().as_text(), jax.device_count())


def test_flops_count_every_trip_of_a_loop():
  def layers(w, x):
    return jax.lax.scan(lambda x, wi: (jnp.tanh(x @ wi), None), x, w)[0].sum()

  analysis = _analyse(layers, jnp.ones((5, 64, 64)), jnp.ones((16, 64)))
  assert analysis.loop_trips == [5]
  # XLA's own count takes the loop body once.
  assert analysis.flops == 5 * 2 * 16 * 64 * 64


def test_convolution_flops_count_the_taps_that_land_on_the_input():
  def conv(x, k, padding):
    return jax.lax.conv_general_dilated(x, k, (1, 1), padding,
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC')).sum()

  x, k = jnp.ones((2, 10, 12, 4)), jnp.ones((3, 3, 4, 8))
  valid = _analyse(functools.partial(conv, padding='VALID'), x, k)
  assert valid.flops == 2 * 2 * 8 * 10 * 8 * 3 * 3 * 4
  same = _analyse(functools.partial(conv, padding='SAME'), x, k)
  taps = (3 * 10 - 2) * (3 * 12 - 2)  # The border outputs' windows hang over the padding.
  assert same.flops == 2 * 2 * 8 * 4 * taps


# A loop of 3 trips, each an all-reduce of 1 KiB over 4 devices, then an all-gather of 256 B
# over pairs and a collective-permute, in the three ways HLO writes replica groups.
LOOP_OF_COLLECTIVES = """HloModule collectives

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %sum = f32[] add(%a, %b)
}

%body (state: (s32[], f32[256])) -> (s32[], f32[256]) {
  %state = (s32[], f32[256]) parameter(0)
  %i = s32[] get-tuple-element(%state), index=0
  %x = f32[256]{0} get-tuple-element(%state), index=1
  %reduced = f32[256]{0} all-reduce(%x), replica_groups={{0,1,2,3}}, to_apply=%add
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  ROOT %out = (s32[], f32[256]) tuple(%next, %reduced)
}

%condition (state: (s32[], f32[256])) -> pred[] {
  %state = (s32[], f32[256]) parameter(0)
  %i = s32[] get-tuple-element(%state), index=0
  %trips = s32[] constant(3)
  ROOT %less = pred[] compare(%i, %trips), direction=LT
}

ENTRY %main (x: f32[256]) -> f32[128] {
  %x = f32[256]{0} parameter(0)
  %zero = s32[] constant(0)
  %start = (s32[], f32[256]) tuple(%zero, %x)
  %loop = (s32[], f32[256]) while(%start), condition=%condition, body=%body
  %y = f32[256]{0} get-tuple-element(%loop), index=1
  %half = f32[64]{0} slice(%y), slice={[0:64]}
  %gathered = f32[128]{0} all-gather(%half), replica_groups=[2,2]<=[4], dimensions={0}
  ROOT %moved = f32[128]{0} collective-permute(%gathered), source_target_pairs={{0,1},{1,0}}
}
"""


def test_collectives_count_every_trip_and_their_ring_traffic():
  analysis = hlo.analyse(LOOP_OF_COLLECTIVES, num_devices=4)
  assert analysis.loop_trips == [3]
  reduce, gather = analysis.collectives['all-reduce'], analysis.collectives['all-gather']
  assert (reduce.count, reduce.operand_bytes) == (3, 3 * 1024)
  assert reduce.traffic_bytes == 3 * 2 * 3 / 4 * 1024  # 2 (n - 1) / n of it, n = 4.
  assert reduce.operand_bytes_by_group == [[4, 3 * 1024]]
  assert (gather.count, gather.operand_bytes, gather.traffic_bytes) == (1, 256, 256)  # n = 2.
  assert analysis.collectives['collective-permute'].traffic_bytes == 512
  # Each kernel reads its operands and writes its result: per trip the all-reduce and the
  # counter's add (3 scalars), then the slice (the 256 bytes it keeps), gather and permute.
  assert analysis.memory_bytes == 3 * (2 * 1024 + 12) + 2 * 256 + (256 + 512) + (512 + 512)


def test_shape_bytes():
  assert hlo.shape_bytes('bf16[8,72]{1,0:T(8,128)(2,1)}') == 8 * 72 * 2
  assert hlo.shape_bytes('(f32[3]{0}, s32[], pred[2,2])') == 12 + 4 + 4


@pytest.mark.parametrize('name, topology, chips, hosts', [
    ('v4-8', 'v4:2x2x1', 4, (2, 2, 1)), ('v4-32', 'v4:2x2x4', 16, (2, 2, 1)),
    ('v5litepod-8', 'v5e:2x4', 8, (2, 4, 1)), ('v5litepod-256', 'v5e:16x16', 256, (2, 2, 1)),
    ('v5p-32', 'v5p:2x2x4', 16, (2, 2, 1)), ('v6e-8', 'v6e:2x4', 8, (2, 4, 1))])
def test_accelerator_types(name, topology, chips, hosts):
  tpu = tpus.get(name)
  assert (tpu.topology_name, tpu.chips, tpu.chips_per_host_bounds) == (topology, chips, hosts)


def test_unknown_accelerator_type_lists_the_known_ones():
  with pytest.raises(errors.FlagError, match=r"Unknown TPU accelerator type 'v5e-16'; known: "
                     r'v4-8, v4-16, .*v5litepod-16, .*v6e-256\.'):
    tpus.get('v5e-16')


def test_largest_batch_compiles_around_the_prediction():
  """Memory 1 + b GiB: with 8.5 usable, 7 fits and 8 does not; the search compiles 7 and 8."""
  compiled = []

  def figures(batch):
    hbm = 1. + batch
    return preflight.Figures(compile_s=0., fits=hbm <= 8.5, hbm_gib=hbm, arguments_gib=1.,
                             temporaries_gib=batch, code_gib=0., flops=0., memory_bytes=0.,
                             collectives={})

  def compile_batches(batches):
    compiled.extend(batches)
    return {b: figures(b) for b in batches}

  config = quickstart.get_config()
  assert preflight.largest_batch(compile_batches, {2: figures(2)}, 4, config, 8.5, 64) == 7
  assert compiled == [7, 8]


def test_batches_whose_contrastive_groups_straddle_chips_are_not_searched():
  config = quickstart.get_config()
  config.loss.contrastive_group = 64
  valid = [b for b in range(1, 130) if preflight.valid_batch(b, 16, config)]
  # Up to 64 in all, one group; then groups of 64 within a chip or over whole chips.
  assert valid == [1, 2, 3, 4, 8, 16, 32, 64, 128]
  config.loss.contrastive_weight = 0.
  assert preflight.valid_batch(20, 16, config)


def _tiny_config(batch: int):
  """A one-layer tiny IPT for one task: its train step compiles for a TPU in seconds."""
  config = quickstart.get_config()
  config.data.tasks = ('sr_x2',)
  config.data.batch_size = batch
  config.model.num_layers = 1
  config.model.dtype = 'bfloat16'
  config.eval.num_examples = 4
  return config


@pytest.mark.slow
@needs_libtpu
def test_train_step_compiles_for_a_v5e_slice():
  compiler = preflight.make_compiler(_tiny_config(batch=8), V5E_4)
  try:
    compiled = compiler.lower(preflight.Program('train', 0, 8, 1)).compile()
    figures = compiler.figures_of(preflight.compiler_output(compiled, 0.))
  finally:
    compiler.close()
  assert compiler.usable_gib == 15.75  # What libtpu lets a v5e program use of its 16 GiB.
  # Parameters and two Adam moments (float32, replicated on every chip) and the chip's share of
  # the batch; under 2x that: TPU layouts pad small arrays to (8, 128) tiles.
  params = sum(x.size for x in jax.tree.leaves(compiler.abstract_state.params)) * 4
  batch = 2 * (48 * 48 * 3 * 4 + 96 * 96 * 3 + 4)
  assert 3 * params + batch < figures.arguments_gib * 2**30 < 2 * (3 * params + batch)
  assert 0 < figures.temporaries_gib < 1 and figures.fits
  assert figures.flops > preflight._model_flops(compiler.model, 0, 2)
  assert 'all-reduce' in figures.collectives  # The gradients, over the 4 chips.
  state_shardings, batch_shardings = compiled.input_shardings[0]
  assert all(s.is_fully_replicated for s in jax.tree.leaves(state_shardings))
  lq = batch_shardings['lq']
  assert lq.spec == P(('data', 'fsdp')) and lq.mesh.devices.size == 4
  assert lq.mesh.devices.flat[0].device_kind == 'TPU v5 lite'


@pytest.mark.slow
@needs_libtpu
def test_batch_too_large_exits_1_with_the_batch_that_fits(tmp_path):
  """16,384 images per chip need 173 GiB of temporaries: the compiler refuses the program, the
  report says so, and one line names a batch that fits, found by compiling (the search capped
  at 4 per chip)."""
  result = conftest.run_command(
      'preflight', '--config=configs/quickstart.py', f'--topology={V5E_4}',
      '--config.data.tasks=("sr_x2",)', '--config.model.dtype=bfloat16',
      '--config.eval.num_examples=4', '--config.data.batch_size=65536',
      '--config.loss.contrastive_weight=0', '--config.mesh.fsdp=4', '--max_batch_per_chip=4',
      f'--output_dir={tmp_path}', '--cache_dir=')
  assert result.returncode == 1, result.stderr
  assert 'sr_x2 train step: batch 65536 (16384 per chip)' in result.stdout
  assert 'DOES NOT FIT' in result.stdout and 'RESOURCE_EXHAUSTED' in result.stdout
  assert result.stderr.count('\n') == 1
  assert re.fullmatch(
      r'error: the config does not fit v5litepod-4: the sr_x2 train step needs [0-9.]+ GiB per '
      r'chip of 15.75 at a global batch of 65536. It fits at --config.data.batch_size=16 '
      r'--config.mesh.fsdp=4 \(4 per chip\).\n', result.stderr)
  report = json.loads((tmp_path / 'preflight.json').read_text())[V5E_4]
  assert report['summary']['largest_batch_per_chip'] == 4


def test_without_libtpu_one_line_says_how_to_install_it():
  find_spec = importlib.util.find_spec
  with mock.patch.object(importlib.util, 'find_spec',
                         lambda name, *a: None if name == 'libtpu' else find_spec(name, *a)):
    result = conftest.run_command('preflight', '--config=configs/quickstart.py',
                                  f'--topology={V5E_4}')
  assert result.returncode == 1
  assert result.stderr == ('error: the TPU compiler (libtpu) is not installed: pip install '
                           f'"jax[tpu]=={jax.__version__}" (it compiles for TPUs on any '
                           'machine).\n')


def test_unknown_topology_fails_before_compiling(tmp_path):
  result = conftest.run_command('preflight', '--config=configs/quickstart.py',
                                f'--topology={V5E_4},v5e-16', f'--output_dir={tmp_path}')
  assert result.returncode == 2
  assert result.stderr.startswith("error: Unknown TPU accelerator type 'v5e-16'; known: v4-8,")
  assert not list(tmp_path.iterdir())
