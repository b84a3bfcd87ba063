"""A tiny run of the input-pipeline speed benchmark command."""
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_input_benchmark_command():
  result = subprocess.run(
      [sys.executable, '-m', 'ipt_jax.benchmark', '--what=input', '--num_images=6',
       '--batch_size=8', '--steps=3', '--warmup_steps=1'],
      cwd=REPO, capture_output=True, text=True, check=True, timeout=300)
  match = re.search(r'([\d.]+) samples/s in total, ([\d.]+) samples/s per core \((\d+) cores\)',
                    result.stdout)
  assert match, result.stdout + result.stderr
  total, per_core, cores = float(match[1]), float(match[2]), int(match[3])
  assert total > 0 and abs(per_core * cores - total) <= cores


def test_benchmark_module_imports_without_tensorflow():
  code = 'import sys, ipt_jax.benchmark; assert "tensorflow" not in sys.modules'
  subprocess.run([sys.executable, '-c', code], cwd=REPO, check=True)
