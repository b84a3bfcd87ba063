"""What long-running commands say while they work, and what a training run says at its end.

The same lines come out on a terminal and in a log file (nohup, SLURM, a pipe): `log` writes
them above a tqdm bar, which only a terminal gets; loops without a bar log a line at least
every LOG_EVERY_SECONDS. The rest are pure functions that make the lines of training.
"""
import posixpath
import shlex
import sys

from absl import logging
import tqdm

LOG_EVERY_SECONDS = 30.
BASELINES = 'bicubic for SR, the input itself otherwise'


def log(message: str, *args):
  """absl's logging.info, written above a progress bar on a terminal rather than through it."""
  with tqdm.tqdm.external_write_mode(file=sys.stderr):
    logging.info(message, *args)


logging.ABSLLogger.register_frame_to_skip(__file__, 'log')  # Lines name log's caller.


def duration(seconds: float) -> str:
  """'45s', '12m05s', '3h07m', '2d04h'."""
  seconds = round(seconds)
  if seconds < 60:
    return f'{seconds}s'
  minutes, seconds = divmod(seconds, 60)
  if minutes < 60:
    return f'{minutes}m{seconds:02d}s'
  hours, minutes = divmod(minutes, 60)
  if hours < 24:
    return f'{hours}h{minutes:02d}m'
  days, hours = divmod(hours, 24)
  return f'{days}d{hours:02d}h'


def seconds_per_step(now: float, step: int, mark: tuple[float, int] | None,
                     window_seconds_per_step: float) -> float:
  """The mean wall time of a step since `mark` (time, step), validation and checkpoints
  included; before there is a mark (the first line, which pays for compiling), the window's."""
  if mark is None:
    return window_seconds_per_step
  return (now - mark[0]) / (step - mark[1])


def training_line(step: int, total: int, loss: float, task_losses: dict[str, float],
                  learning_rate: float, images_per_second: float, seconds_left: float,
                  skipped: int = 0) -> str:
  """step 100/4000 (2%): loss 12.3 (sr_x2 10.1, derain 14.6), lr 5e-05, 52.3 images/s, 1h02m left"""
  per_task = ', '.join(f'{t} {v:.4g}' for t, v in task_losses.items())
  line = (f'step {step}/{total} ({100 * step / total:.0f}%): loss {loss:.4g}'
          f'{f" ({per_task})" if per_task else ""}, lr {learning_rate:.3g}, '
          f'{images_per_second:.1f} images/s, {duration(seconds_left)} left')
  return line + (f', {skipped} non-finite steps skipped' if skipped else '')


def validation_line(step: int, total: int, psnr: dict[str, float],
                    baseline: dict[str, float]) -> str:
  """step 100/4000 validation Y-PSNR dB, model / baseline: sr_x2 30.12 / 29.40, ..."""
  pairs = ', '.join(f'{t} {v:.2f} / {baseline[t]:.2f}' for t, v in psnr.items())
  return f'step {step}/{total} validation Y-PSNR dB, model / baseline: {pairs}'


def next_commands(workdir: str, tasks: tuple[str, ...]) -> list[str]:
  """What to run on a finished run's checkpoints, with its paths filled in."""
  checkpoint = f'--checkpoint={shlex.quote(workdir)}'
  name = posixpath.basename(workdir.rstrip('/')) or 'ipt'
  commands = [
      f'python -m ipt_jax.evaluate {checkpoint} --tasks={",".join(tasks)} '
      '--data_dir=path/to/benchmark  # Set5, Set14, ... (docs/evaluation.md)',
      f'python -m ipt_jax.restore {checkpoint} --tasks={tasks[0]} --output_dir=restored '
      'photo.jpg',
      f'python -m ipt_jax.convert {checkpoint} --output={shlex.quote(name + ".safetensors")}',
  ]
  if len(tasks) > 1:  # Pre-training: fine-tune it.
    finetuned = shlex.quote(f'{workdir.rstrip("/")}_{tasks[0]}')
    commands.append(f'python -m ipt_jax.finetune --config=configs/finetune.py:{tasks[0]} '
                    f'--config.checkpoint={shlex.quote(workdir)} --workdir={finetuned}')
  return commands


def training_summary(*, tasks: tuple[str, ...], first_step: int, step: int, total: int,
                     seconds: float, preempted: bool, validation: tuple[int, dict] | None,
                     baseline: dict[str, float], workdir: str) -> str:
  """The end of a run: steps and time, validation beside the baseline, where the checkpoints
  and TensorBoard events are, and the next commands."""
  if preempted:
    lines = [f'Pre-empted at step {step} of {total} after {duration(seconds)} (steps '
             f'{first_step} to {step}); run the same command again to resume.']
  else:
    lines = [f'Training done: steps {first_step} to {step} of {total} in {duration(seconds)}.']
  if validation:
    at, psnr = validation
    width = max(map(len, ('task', *tasks)))
    lines += [f'Validation Y-PSNR at step {at} in dB (baseline: {BASELINES}):',
              f'  {"task":<{width}}  model  baseline    gain']
    lines += [f'  {t:<{width}}  {psnr[t]:5.2f}  {baseline[t]:8.2f}  {psnr[t] - baseline[t]:+6.2f}'
              for t in tasks]
  lines += [f'Checkpoints: {workdir.rstrip("/")}/checkpoints (newest: step {step})',
            f'TensorBoard events: {workdir} (tensorboard --logdir={shlex.quote(workdir)})',
            'Next:']
  lines += [f'  {command}' for command in next_commands(workdir, tasks)]
  return '\n'.join(lines)
