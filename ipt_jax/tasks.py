"""The image restoration tasks IPT is trained on.

A task is a name in configs and command lines (``sr_x2``) and an index into the
model's heads, tails and task embeddings. The six pre-training tasks come in the
canonical order of the official release; other tasks of the same kinds
(``sr_x8``, ``denoise_15``) can be named for fine-tuning.
"""
import dataclasses
import re

from ipt_jax import errors


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  kind: str  # 'sr', 'denoise' or 'derain'.
  scale: int = 1  # Output size / input size.
  sigma: float = 0.  # Noise standard deviation on the [0, 255] scale.


# The official order of the six-task model's heads, tails and task embeddings (the MindSpore
# release's task_id; docs/ipt_reference.md, "Tasks").
PRETRAIN_TASKS = (
    Task('sr_x2', 'sr', scale=2),
    Task('sr_x3', 'sr', scale=3),
    Task('sr_x4', 'sr', scale=4),
    Task('derain', 'derain'),
    Task('denoise_30', 'denoise', sigma=30.),
    Task('denoise_50', 'denoise', sigma=50.),
)
PRETRAIN_NAMES = tuple(t.name for t in PRETRAIN_TASKS)

_PATTERNS = (
    (re.compile(r'sr_x(\d+)'), lambda m: Task(m[0], 'sr', scale=int(m[1]))),
    (re.compile(r'denoise_(\d+)'), lambda m: Task(m[0], 'denoise', sigma=float(m[1]))),
    (re.compile(r'derain'), lambda m: Task(m[0], 'derain')),
)


def get(name: str) -> Task:
  """The task called `name`: one of PRETRAIN_NAMES, or `sr_x<s>` / `denoise_<sigma>`."""
  for pattern, make in _PATTERNS:
    match = pattern.fullmatch(str(name))
    if match:
      task = make(match)
      if task.kind == 'sr' and not _is_supported_scale(task.scale):
        raise errors.InputError(f'Task {name!r}: the IPT upsampler supports scales 2, 3 and powers '
                                f'of 2 (2, 4, 8, ...), not {task.scale}.')
      if task.kind == 'denoise' and task.sigma <= 0:
        raise errors.InputError(f'Task {name!r}: the noise level must be positive.')
      return task
  raise errors.InputError(f'Unknown task {name!r}. Valid names: {", ".join(PRETRAIN_NAMES)}, '
                          'or sr_x<scale> / denoise_<sigma> for other scales and noise levels.')


def index(name: str, names: tuple[str, ...] = PRETRAIN_NAMES) -> int:
  """Position of task `name` in `names` (a model's tasks), with a clear error."""
  get(name)
  if name not in names:
    raise errors.InputError(f'Task {name!r} is not one of this model\'s tasks: {", ".join(names)}.')
  return names.index(name)


def _is_supported_scale(scale: int) -> bool:
  return scale == 3 or (scale >= 2 and scale & (scale - 1) == 0)
