"""The speed benchmark commands, run tiny on the CPU, and the analytic FLOP count."""
import os
import re
import subprocess
import sys

import pytest

from ipt_jax import benchmark
from ipt_jax.models import ipt
from tests.conftest import BLOCK_TENSORFLOW
from tests.conftest import REPO
from tests.conftest import run_command


# Runs the benchmark module as a program with TensorFlow made unimportable.
WITHOUT_TENSORFLOW = BLOCK_TENSORFLOW + '''
import runpy
sys.argv = ['benchmark'] + sys.argv[1:]
runpy.run_module('ipt_jax.benchmark', run_name='__main__')
'''


def run(*args):
  result = subprocess.run([sys.executable, '-c', WITHOUT_TENSORFLOW, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_paper_forward_flops_match_the_published_count():
  model = ipt.create('paper')
  assert round(ipt.forward_flops(model, 0) / 1e9, 1) == 66.6
  assert ipt.forward_flops(model, 2) > ipt.forward_flops(model, 0) > (
      ipt.forward_flops(model, 3))


@pytest.mark.slow
@pytest.mark.parametrize('args,unit', [
    (('--what=train', '--config=configs/pretrain.py', '--batch=2', '--steps=2', '--warmup_steps=1',
      '--remat', '--scan_layers'), 'step'),
    (('--what=infer', '--tile_batch=8', '--steps=1', '--warmup_steps=0', '--image_size=60'), 'image'),
])
def test_train_and_infer_benchmarks_run_without_tensorflow(args, unit):
  out = run(*args, '--preset=tiny', '--tasks=sr_x2', '--dtype=float32')
  assert re.search(rf'[\d,.]+ images/s, [\d.]+ ms per {unit}', out), out
  assert re.search(r'TFLOP/s achieved', out), out
  assert re.search(r'initialise [\d.]+ s, compile [\d.]+ s', out), out
  assert ('remat, scan_layers):' in out) == ('--remat' in args), out


# A checkout of https://github.com/huawei-noah/Pretrained-IPT, to compare with the official model.
OFFICIAL = os.environ.get('PRETRAINED_IPT_DIR', '')


@pytest.mark.skipif(not os.path.isfile(os.path.join(OFFICIAL, 'model', 'ipt.py')),
                    reason='set PRETRAINED_IPT_DIR to a checkout of huawei-noah/Pretrained-IPT')
@pytest.mark.parametrize('args,unit,same', [
    (('--what=train', '--config=configs/pretrain.py', '--tasks=sr_x3', '--batch=2'), 'step',
     'outputs differ by at most'),
    # The official tiling here, forward_chop there: the same image.
    (('--what=infer', '--tasks=sr_x2', '--image_size=61', '--tile_batch=8'), 'image',
     'restored images differ by at most'),
])
def test_side_by_side_with_the_official_model(args, unit, same):
  pytest.importorskip('torch')
  out = run(*args, '--preset=tiny', '--steps=1', '--rounds=2', '--warmup_steps=0',
            f'--compare_official={OFFICIAL}')
  # The same weights in both: the outputs agree to float32 rounding.
  match = re.search(rf'{same} ([\d.e+-]+)', out)
  assert match and float(match[1]) < 0.05, out
  for side in ('ipt-jax', 'official PyTorch'):
    assert re.search(rf'{side} +[\d.]+ s \([\d.]+ s\) per {unit}', out), out
  assert re.search(r'speed ratio ipt-jax / official: [\d.]+', out), out


def test_compare_official_needs_a_checkout(tmp_path):
  result = run_command('benchmark', '--what=train', '--config=configs/pretrain.py',
                       '--preset=tiny', '--tasks=sr_x2', '--batch=2',
                       f'--compare_official={tmp_path}')
  assert result.returncode == 1 and 'no model/ipt.py there' in result.stderr, result.stderr


def test_compare_official_is_refused_for_the_input_benchmark(tmp_path):
  result = run_command('benchmark', '--what=input', '--config=configs/pretrain.py',
                       f'--compare_official={tmp_path}')
  assert result.returncode == 2, result.stderr
  assert '--compare_official goes with --what=train or --what=infer' in result.stderr


def test_input_benchmark_command():
  result = run_command('benchmark', '--what=input', '--config=configs/pretrain.py',
                       '--num_images=6', '--batch=8', '--steps=3', '--warmup_steps=1')
  assert result.returncode == 0, result.stderr
  match = re.search(r'([\d.]+) samples/s in total, ([\d.]+) samples/s per core \((\d+) cores\)',
                    result.stdout)
  assert match, result.stdout + result.stderr
  total, per_core, cores = float(match[1]), float(match[2]), int(match[3])
  assert total > 0 and abs(per_core * cores - total) <= cores
