"""Benchmark tables with the official IPT evaluation protocol.

  python -m ipt_jax.evaluate --checkpoint=IPT_pretrain.pt --tasks=sr_x2,sr_x3,sr_x4 \
      --data_dir=benchmark --sets=Set5,Set14,B100,Urban100
  python -m ipt_jax.evaluate --model=bicubic --tasks=sr_x4 --data_dir=benchmark --sets=Set5,Set14
  python -m ipt_jax.evaluate --model=input --tasks=denoise_30 --data_dir=benchmark --sets=CBSD68

The protocol (docs/ipt_reference.md): outputs are quantised (clamped to [0, 255], rounded); PSNR
and SSIM are measured on Y of YCbCr, shaving `scale` px off every border for SR and nothing for
denoising and deraining; whole images go through the model by `--tiling=official` (the official
forward_chop; 'fast' for quicker, slightly different numbers). The inputs (`data.testsets`):
  * SR (EDSR layout): HR cropped to a multiple of the scale. `--lr=files` (the default) reads
    LR_bicubic/X<s>/<name>x<s>.png where present, as the official loader, and makes the others
    with MATLAB-bicubic of HR rounded to uint8; `--lr=generated` always makes them so. The
    bicubic baseline (`--model=bicubic`: MATLAB-bicubic up by the scale) uses the same inputs as
    the models; on Set5 and Set14 either choice moves it by less than 0.01 dB.
    `--model=input` scores the degraded input itself: the baseline of denoising and deraining.
  * Denoising (e.g. CBSD68, Urban100): clip(HR + sigma N(0, 1), 0, 255), noise seeded by image
    name and `--seed`. Deraining: Rain100L pairs rain-XXX.png / norain-XXX.png.
`--sets` defaults to the paper's sets of the task's kind.

While it works, each set gets a bar on a terminal and a line in the log (stderr): task, set,
images done, PSNR, seconds, and in a log file also one every 30 s during a long set. Then it
prints a markdown table (task x set: PSNR, SSIM, images/s of restoring alone, compilation
excluded) and writes `<output_dir>/results.json` (the settings, per-set and per-image numbers);
`--save_images` also writes the quantised outputs as `<output_dir>/<task>/<set>/<name>.png`.
Every file is written to a temporary name, then renamed. `--output_dir` defaults to
`eval/<model>_<tasks>[_fast][_x8][_bfloat16]` in the working directory, <model> being 'bicubic',
'input' or the checkpoint's name.
"""
from collections.abc import Callable, Sequence
import dataclasses
import functools
import json
import pathlib
import sys
import time

from absl import flags
import jax
import numpy as np
from PIL import Image
import tqdm

from ipt_jax import cli
from ipt_jax import errors
from ipt_jax import files
from ipt_jax import inference
from ipt_jax import metrics
from ipt_jax import parallel
from ipt_jax import progress
from ipt_jax import tasks as tasks_lib
from ipt_jax import weights
from ipt_jax.data import degrade
from ipt_jax.data import testsets

MODELS = ('ipt', 'bicubic', 'input')
LR_SOURCES = ('files', 'generated')
_LAYOUTS = {
    'sr': '<data_dir>/<Set>/HR/<name>.png, optionally with '
          '<data_dir>/<Set>/LR_bicubic/X<scale>/<name>x<scale>.png (the EDSR layout)',
    'denoise': '<data_dir>/<Set>/HR/<name>.png (clean images; the noise is added here)',
    'derain': '<data_dir>/<Set>/.../rain-XXX.png with norain-XXX.png beside it or one folder '
              'up (the Rain100L layout)',
}

CHECKPOINT = cli.checkpoint_flags()
TASKS = cli.tasks_flag()
INFERENCE = cli.inference_flags()
OUTPUT_DIR = cli.output_dir_flag()
SEED = cli.seed_flag()
MODEL = flags.DEFINE_enum('model', 'ipt', list(MODELS), "'ipt': the --checkpoint; 'bicubic': "
                          "the SR baseline; 'input': the degraded input itself, the baseline "
                          'of denoising and deraining (no checkpoint for either).')
DATA_DIR, SETS = cli.benchmark_set_flags()
LR = flags.DEFINE_enum('lr', 'files', list(LR_SOURCES), 'SR inputs: the LR_bicubic files where '
                       'present (the others generated), or all generated from HR.')
SAVE_IMAGES = flags.DEFINE_bool('save_images', False, 'Also write the quantised outputs as PNGs '
                                'under --output_dir.')

# Restores one benchmark input: [h, w, 3] in [0, 255] -> [h*s, w*s, 3], not yet quantised.
Method = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Options:
  """What to evaluate and how; the command-line flags of the same names."""
  tasks: tuple[str, ...]
  data_dir: str
  sets: tuple[str, ...] | None = None  # None: testsets.DEFAULT_SETS of each task's kind.
  model: str = 'ipt'
  checkpoint: str | None = None
  checkpoint_tasks: tuple[str, ...] | None = None  # Head names of a PyTorch checkpoint.
  num_heads: int | None = None
  dtype: str = 'float32'
  tiling: str = 'official'
  overlap: int = inference.PAPER_OVERLAP
  tile_batch: int = inference.TILE_BATCH
  self_ensemble: bool = False
  lr: str = 'files'
  seed: int = 0
  output_dir: str | None = None  # None: default_output_dir(self).
  save_images: bool = False

  @property
  def resolved_output_dir(self) -> pathlib.Path:
    return pathlib.Path(self.output_dir) if self.output_dir else default_output_dir(self)

  def sets_for(self, task: tasks_lib.Task) -> tuple[str, ...]:
    return self.sets or testsets.DEFAULT_SETS[task.kind]


@dataclasses.dataclass(frozen=True)
class ImageScore:
  name: str
  psnr: float
  ssim: float
  seconds: float  # Restoring alone.


@dataclasses.dataclass(frozen=True)
class Skipped:
  """An image that could not be evaluated, and why."""
  name: str
  error: str


@dataclasses.dataclass(frozen=True)
class SetScore:
  """The scores of one task on one benchmark set (means over the images not skipped)."""
  task: str
  set_name: str
  images: tuple[ImageScore, ...]
  skipped: tuple[Skipped, ...] = ()

  def _mean(self, values) -> float:
    return float(np.mean(values)) if self.images else float('nan')

  @property
  def psnr(self) -> float:
    return self._mean([i.psnr for i in self.images])

  @property
  def ssim(self) -> float:
    return self._mean([i.ssim for i in self.images])

  @property
  def images_per_second(self) -> float:
    return len(self.images) / sum(i.seconds for i in self.images) if self.images else 0.

  def to_json(self) -> dict:
    return {'task': self.task, 'set': self.set_name, 'images': len(self.images),
            'psnr': self.psnr, 'ssim': self.ssim, 'images_per_second': self.images_per_second,
            'per_image': [dataclasses.asdict(i) for i in self.images],
            'skipped': [dataclasses.asdict(s) for s in self.skipped]}


def check_options(options: Options) -> list[tasks_lib.Task]:
  """The tasks to evaluate, after checking what can be checked before loading anything."""
  if options.model not in MODELS:
    raise errors.FlagError(f'Unknown --model={options.model!r}; use ipt (with --checkpoint), '
                           'bicubic (the SR baseline) or input (the denoising and deraining '
                           'baseline).')
  if options.lr not in LR_SOURCES:
    raise errors.FlagError(f'Unknown --lr={options.lr!r}; use one of {", ".join(LR_SOURCES)}.')
  if not options.tasks:
    raise errors.FlagError('Name the task(s) to evaluate, e.g. --tasks=sr_x4.')
  tasks = [tasks_lib.get(name) for name in options.tasks]
  if options.model == 'bicubic':
    not_sr = [t.name for t in tasks if t.kind != 'sr']
    if not_sr:
      raise errors.FlagError(f'--model=bicubic is the baseline of super-resolution tasks '
                             f'(sr_x2, sr_x3, sr_x4, ...), not of {", ".join(not_sr)}; '
                             'use --model=input for those.')
  elif options.model == 'input':
    sr = [t.name for t in tasks if t.kind == 'sr']
    if sr:
      raise errors.FlagError(f'--model=input is the baseline of denoising and deraining; the '
                             f'input of {", ".join(sr)} is smaller than its target: use '
                             '--model=bicubic.')
  elif not options.checkpoint:
    raise errors.FlagError('--checkpoint is required (or --model=bicubic / --model=input for '
                           'a baseline).')
  for task in tasks:
    for set_name in options.sets_for(task):
      check_set_folder(options.data_dir, set_name, task)
  return tasks


def check_set_folder(data_dir, set_name: str, task: tasks_lib.Task):
  folder = pathlib.Path(data_dir) / set_name
  if not folder.is_dir():
    raise errors.InputError(f'{folder}: no such benchmark set folder (--data_dir={data_dir}, '
                            f'set {set_name}); {task.name} expects {_LAYOUTS[task.kind]}.')


def evaluate_set(method: Method, entries: Sequence[testsets.Entry], task: tasks_lib.Task,
                 set_name: str, *, image_dir: pathlib.Path | None = None) -> SetScore:
  """Scores `method` on one set's images with the official protocol (quantised output, Y).

  An image that cannot be read or measured is reported in one line and skipped.
  """
  shave = metrics.border_shave(task)
  scores, skipped = [], []
  start = logged = time.perf_counter()
  bar = tqdm.tqdm(entries, desc=f'{task.name} {set_name}', unit='image', leave=False,
                  disable=None)
  for done, entry in enumerate(bar, 1):
    try:
      scores.append(_score(method, entry.read(), shave, image_dir))
    except errors.InputError as e:
      skipped.append(Skipped(entry.name, str(e)))
      tqdm.tqdm.write(f'error: {set_name} {entry.name}: {" ".join(str(e).split())}',
                      file=sys.stderr)
    so_far = SetScore(task.name, set_name, tuple(scores), tuple(skipped))
    bar.set_postfix(psnr=f'{so_far.psnr:.2f}')
    if (bar.disable and done < len(entries)
        and time.perf_counter() - logged >= progress.LOG_EVERY_SECONDS):
      logged = time.perf_counter()  # A log has no bar: a line now and then instead.
      progress.log(progress_line(so_far, len(entries), logged - start))
  score = SetScore(task.name, set_name, tuple(scores), tuple(skipped))
  progress.log(progress_line(score, len(entries), time.perf_counter() - start))
  return score


def progress_line(score: SetScore, total: int, seconds: float) -> str:
  """sr_x2 Set14: 7/14 images, PSNR 30.12 dB so far, 12.3 s (1 skipped)"""
  done = len(score.images) + len(score.skipped)
  return (f'{score.task} {score.set_name}: {done}/{total} images, PSNR {score.psnr:.2f} dB'
          f'{" so far" if done < total else ""}, {seconds:.1f} s'
          f'{f" ({len(score.skipped)} skipped)" if score.skipped else ""}')


def _score(method: Method, pair: testsets.Pair, shave: int,
           image_dir: pathlib.Path | None) -> ImageScore:
  start = time.perf_counter()
  output = metrics.quantise(method(pair.lq))
  seconds = time.perf_counter() - start
  score = ImageScore(pair.name, float(metrics.psnr_y(output, pair.hq, shave)),
                     float(metrics.ssim_y(output, pair.hq, shave)), seconds)
  if image_dir:
    files.write_png(image_dir / f'{pair.name}.png', Image.fromarray(output.astype(np.uint8)))
  return score


def methods(options: Options, tasks: Sequence[tasks_lib.Task]) -> tuple[list[Method], dict]:
  """The method restoring each task, and a description of the model for the report."""
  if options.model in ('bicubic', 'input'):  # check_options matched them to the tasks.
    return [functools.partial(degrade.baseline, scale=t.scale) for t in tasks], {
        'model': options.model}
  model, params = weights.load(options.checkpoint, checkpoint_tasks=options.checkpoint_tasks,
                               num_heads=options.num_heads, dtype=options.dtype)
  progress.log('Loaded %s; compiling it for %s (before timing starts).', options.checkpoint,
               ', '.join(t.name for t in tasks))
  image_models = [inference.image_model(model, params, t.name, mode=options.tiling,
                                        overlap=options.overlap, tile_batch=options.tile_batch,
                                        self_ensemble=options.self_ensemble) for t in tasks]
  for image_model in image_models:  # Compile now, so that the timings measure restoring alone.
    image_model.compile()
  return image_models, {'model': 'ipt', 'checkpoint': options.checkpoint,
                        'checkpoint_tasks': list(model.tasks), 'num_heads': model.num_heads}


def evaluate(options: Options) -> tuple[list[SetScore], dict]:
  """Every (task, set) score, and the settings they were measured with."""
  tasks = check_options(options)
  task_methods, model_settings = methods(options, tasks)
  scores = []
  for task, method in zip(tasks, task_methods):
    for set_name in options.sets_for(task):
      entries = testsets.entries(options.data_dir, set_name, task,
                                 generate_lr=options.lr == 'generated', seed=options.seed)
      image_dir = None
      if options.save_images:
        image_dir = files.prepare_output_dir(options.resolved_output_dir / task.name / set_name)
      scores.append(evaluate_set(method, entries, task, set_name, image_dir=image_dir))
  return scores, settings(options, model_settings)


def settings(options: Options, model_settings: dict) -> dict:
  """What the numbers depend on, for the JSON report."""
  applied = {**model_settings, 'tasks': list(options.tasks), 'data_dir': options.data_dir,
             'sets': {t: list(options.sets_for(tasks_lib.get(t))) for t in options.tasks},
             'lr': options.lr, 'seed': options.seed,
             'protocol': 'quantised output; Y-PSNR and SSIM (Gaussian 11x11, sigma 1.5); '
                         'shave = scale for SR, 0 for denoising and deraining'}
  if options.model == 'ipt':
    applied.update(dtype=options.dtype, tiling=options.tiling, tile_batch=options.tile_batch,
                   self_ensemble=options.self_ensemble, device=jax.devices()[0].device_kind,
                   devices=jax.local_device_count())
    if options.tiling == 'fast':
      applied['overlap'] = options.overlap
  return applied


def default_output_dir(options: Options) -> pathlib.Path:
  """eval/<model>_<tasks>[_fast][_x8][_bfloat16], in the working directory."""
  parts = [_checkpoint_name(options.checkpoint) if options.model == 'ipt' else options.model,
           '+'.join(options.tasks)]
  if options.model == 'ipt':
    parts += (['fast'] if options.tiling == 'fast' else []) + (
        ['x8'] if options.self_ensemble else []) + (
            [options.dtype] if options.dtype != 'float32' else [])
  return pathlib.Path('eval') / '_'.join(parts)


def _checkpoint_name(path: str) -> str:
  """IPT_sr_x2.pt -> IPT_sr_x2; <workdir>/checkpoints/5000 -> <workdir>_5000."""
  parts = [p for p in pathlib.PurePath(path).parts if p not in ('checkpoints', '/')] or ['ipt']
  name = pathlib.PurePath(parts[-1]).stem
  return f'{parts[-2]}_{name}' if name.isdigit() and len(parts) > 1 else name


def markdown_table(scores: Sequence[SetScore]) -> str:
  skipped = any(s.skipped for s in scores)
  lines = ['| task | set | images | PSNR (dB) | SSIM | images/s |' + (' skipped |' if skipped else ''),
           '| --- | --- | ---: | ---: | ---: | ---: |' + (' ---: |' if skipped else '')]
  lines += [f'| {s.task} | {s.set_name} | {len(s.images)} | {s.psnr:.2f} | {s.ssim:.4f} | '
            f'{s.images_per_second:.3g} |' + (f' {len(s.skipped)} |' if skipped else '')
            for s in scores]
  return '\n'.join(lines)


def write_report(path, scores: Sequence[SetScore], applied_settings: dict):
  report = {'settings': applied_settings, 'results': [s.to_json() for s in scores]}
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  files.write_atomically(
      path, lambda temporary: pathlib.Path(temporary).write_text(json.dumps(report, indent=1)))


def main(argv):
  cli.check_no_arguments(argv)
  parallel.initialize('off', INFERENCE.cpu_devices.value)  # Before JAX starts.
  options = Options(
      tasks=tuple(TASKS.value or ()), data_dir=DATA_DIR.value,
      sets=tuple(SETS.value) if SETS.value else None, model=MODEL.value,
      checkpoint=CHECKPOINT.checkpoint.value,
      checkpoint_tasks=CHECKPOINT.checkpoint_tasks.value, num_heads=CHECKPOINT.num_heads.value,
      dtype=INFERENCE.dtype.value, tiling=INFERENCE.tiling.value,
      overlap=INFERENCE.overlap.value, tile_batch=INFERENCE.tile_batch.value,
      self_ensemble=INFERENCE.self_ensemble.value, lr=LR.value, seed=SEED.value,
      output_dir=OUTPUT_DIR.value, save_images=SAVE_IMAGES.value)
  files.prepare_output_dir(options.resolved_output_dir)  # Before minutes of work, not after.
  scores, applied = evaluate(options)
  applied['command'] = ' '.join(['python -m ipt_jax.evaluate'] + sys.argv[1:])
  print(markdown_table(scores))
  report_path = options.resolved_output_dir / 'results.json'
  write_report(report_path, scores, applied)
  print(f'\nWrote {report_path}')
  skipped = sum(len(s.skipped) for s in scores)
  if skipped:
    raise errors.InputError(f'{skipped} image(s) could not be evaluated (see above); the others '
                            f'are in the table and {report_path}.')


if __name__ == '__main__':
  flags.mark_flags_as_required(['tasks', 'data_dir'])
  cli.run(main)
