"""The README's figures, regenerated from training runs.

  python -m ipt_jax.figures --figure=crops --checkpoint=runs/sr_x2 --tasks=sr_x2 \
      --data_dir=path/to/benchmark --sets=Set5,Set14 --output=docs/sr_x2_crops.png
  python -m ipt_jax.figures --figure=curves --workdirs=runs/sr_x2,runs/denoise_30 \
      --output=docs/validation_curves.png
  python -m ipt_jax.figures --figure=curves --x_axis=step \
      --workdirs=runs/mini_finetune_sr_x2,runs/mini_scratch_sr_x2 --output=docs/transfer.png

`crops`: for the first image of each set, a crop of the baseline (bicubic for SR, the noisy or
rainy input otherwise) | the model | the ground truth, each captioned with its whole-image
Y-PSNR under the official protocol (`ipt_jax.evaluate`, official tiling). `curves`: validation
Y-PSNR of each run against its training time or step (`--x_axis`), a panel per task, from the
TensorBoard events in its workdir.
Needs matplotlib: pip install -e ".[notebook]".
"""
import pathlib

from absl import flags
import numpy as np

from ipt_jax import cli
from ipt_jax import errors
from ipt_jax import files
from ipt_jax import inference
from ipt_jax import metrics
from ipt_jax import tasks as tasks_lib
from ipt_jax import weights
from ipt_jax.data import testsets
from ipt_jax.data import degrade

CHECKPOINT = cli.checkpoint_flags()
TASKS = cli.tasks_flag()
FIGURE = flags.DEFINE_enum('figure', None, ['crops', 'curves'], 'Which figure to draw.')
DATA_DIR, SETS = cli.benchmark_set_flags()  # crops: the first image of each set is shown.
CROP = flags.DEFINE_integer('crop', 96, 'crops: side of the shown crop, in output pixels.')
WORKDIRS = flags.DEFINE_list('workdirs', None, 'curves: training workdirs, one curve each.')
X_AXIS = flags.DEFINE_enum('x_axis', 'minutes', ['minutes', 'step'],
                           'curves: training time or training step on the horizontal axis.')
OUTPUT = cli.output_flag()


def _pyplot():
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise errors.InputError('figures need matplotlib: pip install -e ".[notebook]"') from e
  matplotlib.use('Agg')
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  return pyplot


def _centre(image: np.ndarray, side: int) -> np.ndarray:
  top, left = [max((n - side) // 2, 0) for n in image.shape[:2]]
  return image[top:top + side, left:left + side]


def crops_figure(output, checkpoint, task_name: str, data_dir, sets, side: int, **load_args):
  """Rows: the first image of each set; columns: baseline | model | ground truth."""
  pyplot = _pyplot()
  task = tasks_lib.get(task_name)
  model, params = weights.load(checkpoint, **load_args)
  image_model = inference.image_model(model, params, task_name)
  shave = metrics.border_shave(task)
  sets = sets or testsets.DEFAULT_SETS[task.kind]
  fig, axes = pyplot.subplots(len(sets), 3, figsize=(9, 3.2 * len(sets)), squeeze=False)
  for row, set_name in zip(axes, sets):
    pair = testsets.entries(data_dir, set_name, task)[0].read()
    panels = [('bicubic' if task.kind == 'sr' else 'input',
               degrade.baseline(pair.lq, task.scale)),
              ('IPT', image_model(pair.lq))]
    for ax, (label, image) in zip(row, panels + [('ground truth', pair.hq)]):
      image = metrics.quantise(image)
      caption = f'{set_name} {pair.name}: {label}'
      if label != 'ground truth':
        caption += f' {metrics.psnr_y(image, pair.hq, shave):.2f} dB'
      ax.imshow(_centre(image, side).astype(np.uint8))
      ax.set_title(caption, fontsize=9)
      ax.axis('off')
  fig.suptitle(f'{task_name}: whole-image Y-PSNR, official protocol')
  fig.tight_layout()
  _save(fig, output)


def validation_curves(workdir) -> dict[str, dict[str, np.ndarray]]:
  """{tag: {'step', 'minutes' (since the run's first event), 'value'}} of the val/ scalars
  of a workdir."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  points, start, scalars = {}, None, set()
  for path in sorted(pathlib.Path(workdir).glob('events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      start = event.wall_time if start is None else min(start, event.wall_time)
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == 'scalars':  # Only on a tag's first event.
          scalars.add(value.tag)
        if value.tag.startswith('val/') and value.tag in scalars:
          points.setdefault(value.tag, []).append(
              (event.wall_time, event.step, float(tf.make_ndarray(value.tensor))))
  if not points:
    raise errors.InputError(f'{workdir}: no validation scalars in its TensorBoard events; is it '
                            'a training workdir that reached its first validation?')
  curves = {}
  for tag, series in points.items():
    times, steps, values = map(np.array, zip(*sorted(series)))
    curves[tag] = {'step': steps, 'minutes': (times - start) / 60, 'value': values}
  return curves


def curves_figure(output, workdirs, x_axis: str = 'minutes'):
  """One panel per validated task, a curve per workdir that validated it, against `x_axis`
  ('minutes' of training or 'step')."""
  pyplot = _pyplot()
  runs = {workdir: validation_curves(workdir) for workdir in workdirs}
  tags = sorted({tag for curves in runs.values() for tag in curves})
  fig, axes = pyplot.subplots(1, len(tags), figsize=(6.5 * len(tags), 4.2), squeeze=False)
  for ax, tag in zip(axes[0], tags):
    for workdir, curves in runs.items():
      if tag in curves:
        ax.plot(curves[tag][x_axis], curves[tag]['value'], marker='o', markersize=3,
                label=pathlib.Path(workdir).name)
    ax.set_title(tag[4:])
    ax.set_xlabel('training time (minutes, 2 CPU cores)' if x_axis == 'minutes' else
                  'training step')
    ax.set_ylabel('validation Y-PSNR (dB)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  _save(fig, output)


def _save(fig, output):
  files.prepare_output_dir(pathlib.Path(output).parent)
  files.write_atomically(output, lambda tmp: fig.savefig(tmp, dpi=100, format='png'))


def main(argv):
  cli.check_no_arguments(argv)
  if FIGURE.value == 'crops':
    if not CHECKPOINT.checkpoint.value or not TASKS.value or not DATA_DIR.value:
      raise errors.FlagError('--figure=crops needs --checkpoint, --tasks (one) and --data_dir.')
    crops_figure(OUTPUT.value, CHECKPOINT.checkpoint.value, TASKS.value[0], DATA_DIR.value,
                 SETS.value, CROP.value, **CHECKPOINT.load_args())
  else:
    if not WORKDIRS.value:
      raise errors.FlagError('--figure=curves needs --workdirs.')
    curves_figure(OUTPUT.value, WORKDIRS.value, X_AXIS.value)
  print(f'Wrote {OUTPUT.value}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['figure', 'output'])
  cli.run(main)
