"""Packs a folder of ImageNet JPEGs into the official release's archives, for the real TFDS builder.

  python -m ipt_jax.pack_imagenet --images=<folder> --output_dir=imagenet_pack \
      --tfds_data_dir=tfds_data

The `imagenet2012` builder of TensorFlow Datasets reads the two archives of the ILSVRC-2012
release from its manual_dir: `ILSVRC2012_img_train.tar`, one `<synset>.tar` per class each
holding `<synset>_<n>.JPEG` files, and `ILSVRC2012_img_val.tar`, flat `ILSVRC2012_val_<8
digits>.JPEG` files. This command writes both from any ImageNet images whose class is known
from the file name (`n01440764_tench.JPEG`, `n01440764_10026.JPEG`) or the folder
(`n01440764/<any>.JPEG`): a subset for a machine without the 150 GB, or for checking a new
TFDS / TensorFlow release against the real builder. `--val_images` of them, evenly spread
over the sorted list, go to the validation archive instead of the training one, so the two
splits are disjoint. (The builder labels validation images from its own list by position:
labels are not used by IPT.) With `--tfds_data_dir`, the builder then prepares the archives into
that TFDS data directory, as `tfds build imagenet2012 --manual_dir=<output_dir> --data_dir=...`
does (the `tfds` command itself needs apache_beam since TFDS 4.9.9).
"""
import io
import os
import pathlib
import re
import tarfile

from absl import flags

from ipt_jax import cli
from ipt_jax import errors
from ipt_jax import files
from ipt_jax import quiet

TRAIN_ARCHIVE = 'ILSVRC2012_img_train.tar'
VAL_ARCHIVE = 'ILSVRC2012_img_val.tar'
_SYNSET = re.compile(r'n\d{8}')
_JPEG_SUFFIXES = ('.jpeg', '.jpg')

_IMAGES = flags.DEFINE_string('images', None, 'Folder of ImageNet JPEGs (searched recursively), '
                              'each named <synset>_<anything>.JPEG or inside a <synset> folder.')
_VAL_IMAGES = flags.DEFINE_integer('val_images', 10, 'Images held out for the validation split.')
_TFDS_DATA_DIR = flags.DEFINE_string(
    'tfds_data_dir', None, 'Also prepare the archives with the TFDS imagenet2012 builder into '
    'this TFDS data directory (config.data.data_dir of the training run).')
_OUTPUT = cli.output_dir_flag()


def synset_of(path: pathlib.Path) -> str | None:
  """The ImageNet class (WordNet id) of an image: its file name's prefix or its folder."""
  for name in (path.name.split('_')[0], path.parent.name):
    if _SYNSET.fullmatch(name):
      return name
  return None


def find_images(folder) -> dict[pathlib.Path, str]:
  """Every JPEG under `folder` with its synset, in sorted order; refuses one without a class."""
  folder = pathlib.Path(folder).expanduser()
  if not folder.is_dir():
    raise errors.InputError(f'{folder}: no such folder; --images names a folder of ImageNet '
                            'JPEGs.')
  images = sorted(p for p in folder.rglob('*') if p.suffix.lower() in _JPEG_SUFFIXES)
  if not images:
    raise errors.InputError(f'{folder}: no .JPEG / .jpg files found; --images names a folder '
                            'of ImageNet JPEGs.')
  unlabelled = [p for p in images if synset_of(p) is None]
  if unlabelled:
    raise errors.InputError(
        f'{unlabelled[0]} (and {len(unlabelled) - 1} more): no ImageNet class in the name; name '
        'files <synset>_<anything>.JPEG (e.g. n01440764_tench.JPEG) or put them in <synset> '
        'folders.')
  return {p: synset_of(p) for p in images}


def split_validation(images: list, count: int) -> tuple[list, list]:
  """(train, validation): `count` images evenly spread over `images` are held out."""
  if not 0 <= count < len(images):
    raise errors.InputError(f'--val_images={count}: choose from 0 to {len(images) - 1} (there '
                            f'are {len(images)} images; the rest train).')
  held_out = {round((i + 0.5) * len(images) / count) for i in range(count)} if count else set()
  return ([p for i, p in enumerate(images) if i not in held_out],
          [p for i, p in enumerate(images) if i in held_out])


def _add(archive: tarfile.TarFile, name: str, data: bytes):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  archive.addfile(info, io.BytesIO(data))


def write_train_archive(path, images: dict[pathlib.Path, str]):
  """ILSVRC2012_img_train.tar: a <synset>.tar per class of <synset>_<n>.JPEG files."""
  by_synset = {}
  for image, synset in images.items():
    by_synset.setdefault(synset, []).append(image)

  def write(temporary):
    with tarfile.open(temporary, 'w') as outer:
      for synset, members in sorted(by_synset.items()):
        inner = io.BytesIO()
        with tarfile.open(fileobj=inner, mode='w') as class_tar:
          for n, image in enumerate(members):
            _add(class_tar, f'{synset}_{n}.JPEG', image.read_bytes())
        _add(outer, f'{synset}.tar', inner.getvalue())
  files.write_atomically(path, write)


def write_val_archive(path, images: list[pathlib.Path]):
  """ILSVRC2012_img_val.tar: ILSVRC2012_val_00000001.JPEG, ... in the order given."""
  def write(temporary):
    with tarfile.open(temporary, 'w') as archive:
      for n, image in enumerate(images, start=1):
        _add(archive, f'ILSVRC2012_val_{n:08d}.JPEG', image.read_bytes())
  files.write_atomically(path, write)


def pack(images_folder, output, val_images: int) -> tuple[int, int]:
  """Writes both archives into `output`; returns the (train, validation) image counts."""
  images = find_images(images_folder)
  train, validation = split_validation(list(images), val_images)
  output = files.prepare_output_dir(pathlib.Path(output).expanduser())
  existing = [name for name in (TRAIN_ARCHIVE, VAL_ARCHIVE) if (output / name).exists()]
  if existing:
    raise errors.InputError(f'{output / existing[0]} exists; remove it or choose another '
                            '--output_dir.')
  write_train_archive(output / TRAIN_ARCHIVE, {p: images[p] for p in train})
  write_val_archive(output / VAL_ARCHIVE, validation)
  return len(train), len(validation)


def prepare(manual_dir, data_dir) -> dict[str, int]:
  """Runs the real TFDS imagenet2012 builder on the archives in `manual_dir`; returns the
  number of examples per split."""
  with quiet.tensorflow_start_up():
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder('imagenet2012', data_dir=os.fspath(pathlib.Path(data_dir).expanduser()))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=os.fspath(pathlib.Path(manual_dir).expanduser().absolute())))
  return {name: split.num_examples for name, split in builder.info.splits.items()}


def main(argv):
  cli.check_no_arguments(argv)
  train, validation = pack(_IMAGES.value, _OUTPUT.value, _VAL_IMAGES.value)
  print(f'Packed {train} training and {validation} validation images into {_OUTPUT.value}.',
        flush=True)
  if _TFDS_DATA_DIR.value is None:
    print(f'Prepare them with --tfds_data_dir, or tfds build imagenet2012 --manual_dir='
          f'{_OUTPUT.value} --data_dir=<tfds data dir>.', flush=True)
    return
  splits = prepare(_OUTPUT.value, _TFDS_DATA_DIR.value)
  counts = ', '.join(f'{name} {count}' for name, count in splits.items())
  print(f'Prepared imagenet2012 in {_TFDS_DATA_DIR.value} ({counts}); train with '
        f'--config.data.data_dir={_TFDS_DATA_DIR.value}.', flush=True)


if __name__ == '__main__':
  flags.mark_flags_as_required(['images', 'output_dir'])
  cli.run(main)
