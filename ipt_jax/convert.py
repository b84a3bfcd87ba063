"""Converts checkpoints between the official PyTorch IPT layout and Flax params, exactly.

  python -m ipt_jax.convert --checkpoint=IPT_pretrain.pt --output=DIR       # -> params DIR
  python -m ipt_jax.convert --checkpoint=DIR --output=model.pt              # or .safetensors
  python -m ipt_jax.convert --checkpoint=<workdir> --output=model.pt        # newest step

`--checkpoint` is any checkpoint path (`ipt_jax.weights`); an `--output` ending in .pt, .pth or
.safetensors gets the official state_dict (`ipt_jax.torch_layout`), any other name a params
directory. Reading .pt needs torch (`pip install ipt_jax[torch]`); .safetensors only needs
safetensors.
"""
from collections.abc import Sequence
import pathlib

from absl import flags
from etils import epath
import jax

from ipt_jax import checkpoint
from ipt_jax import cli
from ipt_jax import errors
from ipt_jax import files
from ipt_jax import torch_layout
from ipt_jax import weights
from ipt_jax.models import ipt

_FREE_SOME_SPACE = 'Free some space or choose another output.'

CHECKPOINT = cli.checkpoint_flags()
OUTPUT = cli.output_flag()


def convert(checkpoint_path, output_path, *, checkpoint_tasks: Sequence[str] | None = None,
            num_heads: int | None = None) -> ipt.IPT:
  """Writes the checkpoint at `checkpoint_path` to `output_path`; returns its model."""
  if epath.Path(output_path).exists():
    raise errors.InputError(f'{output_path} already exists; choose a new output name.')
  if '://' not in str(output_path):  # A local folder: check it before loading anything.
    files.prepare_output_dir(pathlib.Path(output_path).parent)
  model, params = weights.load(checkpoint_path, checkpoint_tasks=checkpoint_tasks,
                               num_heads=num_heads)
  try:
    files.check_space(output_path, sum(x.nbytes for x in jax.tree.leaves(params)),
                      f'{output_path}: the converted checkpoint')
  except errors.DiskFullError as e:
    raise errors.DiskFullError(f'{e}; nothing was written. {_FREE_SOME_SPACE}') from None
  with files.on_disk_full(lambda: _partial_write_removed(output_path)):
    if epath.Path(output_path).suffix in torch_layout.SUFFIXES:
      torch_layout.write_state_dict(torch_layout.to_torch(params, model, as_numpy=True),
                                    output_path, torch_layout.metadata(model))
    else:
      checkpoint.save_params(output_path, model, params)
  return model


def _partial_write_removed(output_path) -> errors.DiskFullError:
  """Removes what a params save wrote before the disk filled up (orbax's temporary folder),
  and says so."""
  for partial in epath.Path(output_path).parent.glob(f'{epath.Path(output_path).name}.orbax-*'):
    partial.rmtree()
  return errors.DiskFullError(f'{output_path}: the disk filled up while it was written; '
                              f'nothing was written. {_FREE_SOME_SPACE}')


def main(argv):
  cli.check_no_arguments(argv)
  model = convert(CHECKPOINT.checkpoint.value, OUTPUT.value, **CHECKPOINT.load_args())
  print(f'Wrote {OUTPUT.value}: IPT with tasks {", ".join(model.tasks)}, '
        f'{model.num_layers}+{model.num_layers} layers, n_feats {model.n_feats}.')


if __name__ == '__main__':
  flags.mark_flags_as_required(['checkpoint', 'output'])
  cli.run(main)
