"""Real ImageNet photographs through the official archive layout and the real TFDS builder."""
import hashlib
import pathlib
import tarfile

import pytest

from configs import mini_pretrain
from ipt_jax import errors
from ipt_jax import pack_imagenet
from ipt_jax import train
from ipt_jax.data import sources
from tests.conftest import shared_path

NUM_TRAIN, NUM_VAL = 20, 2


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """22 photographs of 22 classes packed (20 train, 2 validation) and prepared by TFDS."""
  sample = sorted(shared_path('data', 'train', 'imagenet_sample').glob('*.JPEG'))
  images = tmp_path_factory.mktemp('images')
  for photo in sample[:NUM_TRAIN + NUM_VAL]:
    (images / photo.name).symlink_to(photo)
  manual_dir, data_dir = images.parent / 'pack', images.parent / 'tfds'
  counts = pack_imagenet.pack(images, manual_dir, val_images=NUM_VAL)
  splits = pack_imagenet.prepare(manual_dir, data_dir)
  return manual_dir, data_dir, counts, splits


def test_archives_have_the_official_layout_and_tfds_reads_both_splits(prepared):
  manual_dir, _, counts, splits = prepared
  assert counts == (NUM_TRAIN, NUM_VAL)
  assert splits == {'train': NUM_TRAIN, 'validation': NUM_VAL}
  with tarfile.open(manual_dir / pack_imagenet.TRAIN_ARCHIVE) as outer:
    class_tars = outer.getnames()
    first = tarfile.open(fileobj=outer.extractfile(class_tars[0]))
    assert first.getnames() == [f'{class_tars[0][:-4]}_0.JPEG']
  assert all(pack_imagenet.synset_of(pathlib.Path(n[:-4] + '_x.JPEG')) for n in class_tars)
  with tarfile.open(manual_dir / pack_imagenet.VAL_ARCHIVE) as val:
    assert val.getnames() == ['ILSVRC2012_val_00000001.JPEG', 'ILSVRC2012_val_00000002.JPEG']


def _hashes(source: sources.ImageSource) -> list[str]:
  records = source.records([0, 0], 0).as_numpy_iterator()
  return [hashlib.sha1(r['encoded']).hexdigest() for r in records]


@pytest.mark.slow
def test_two_hosts_read_disjoint_halves_that_cover_the_split(prepared):
  _, data_dir, _, _ = prepared
  hosts = [_hashes(sources.open_source('tfds:imagenet2012', min_size=1, data_dir=str(data_dir),
                                       process_index=i, process_count=2)) for i in range(2)]
  assert [len(h) for h in hosts] == [NUM_TRAIN // 2] * 2
  assert not set(hosts[0]) & set(hosts[1])
  everything = _hashes(sources.open_source('tfds:imagenet2012', min_size=1,
                                           data_dir=str(data_dir)))
  assert set(hosts[0]) | set(hosts[1]) == set(everything)
  validation = _hashes(sources.open_source('tfds:imagenet2012:validation', min_size=1,
                                           data_dir=str(data_dir)))
  assert len(validation) == NUM_VAL and not set(validation) & set(everything)
  official = _hashes(sources.open_source('tfds:imagenet2012:train+validation', min_size=1,
                                         data_dir=str(data_dir)))  # As the official code.
  assert sorted(official) == sorted(everything + validation)


@pytest.mark.slow
def test_mini_pretraining_runs_from_the_prepared_split(prepared, tmp_path):
  _, data_dir, _, _ = prepared
  config = mini_pretrain.get_config()
  assert (config.data.source, config.data.val_source) == ('tfds:imagenet2012:train',
                                                          'tfds:imagenet2012:validation')
  config.data.data_dir = str(data_dir)
  config.data.batch_size = 2
  config.data.shuffle_buffer = 8
  config.data.tasks = ('sr_x4',)  # The largest crop; one train step to compile.
  config.model.update(preset='tiny', num_layers=1)
  config.total_steps = 2
  config.eval.num_examples = 2
  state = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert int(state.step) == 2
  assert (tmp_path / 'run' / 'checkpoints' / '2').is_dir()


def test_bad_inputs_get_one_clear_error_and_nothing_is_overwritten(tmp_path):
  with pytest.raises(errors.InputError, match='no such folder'):
    pack_imagenet.pack(tmp_path / 'missing', tmp_path / 'out', val_images=0)
  (tmp_path / 'photos').mkdir()
  with pytest.raises(errors.InputError, match='no .JPEG'):
    pack_imagenet.pack(tmp_path / 'photos', tmp_path / 'out', val_images=0)
  (tmp_path / 'photos' / 'holiday.jpg').write_bytes(b'\xff\xd8')
  with pytest.raises(errors.InputError, match='no ImageNet class in the name'):
    pack_imagenet.pack(tmp_path / 'photos', tmp_path / 'out', val_images=0)
  (tmp_path / 'photos' / 'holiday.jpg').rename(tmp_path / 'photos' / 'n01440764_a.jpg')
  with pytest.raises(errors.InputError, match='--val_images=1: choose from 0 to 0'):
    pack_imagenet.pack(tmp_path / 'photos', tmp_path / 'out', val_images=1)
  assert not (tmp_path / 'out').exists()  # Nothing is written before the images are checked.
  (tmp_path / 'out').mkdir()
  (tmp_path / 'out' / pack_imagenet.TRAIN_ARCHIVE).write_bytes(b'mine')
  with pytest.raises(errors.InputError, match='exists; remove it'):
    pack_imagenet.pack(tmp_path / 'photos', tmp_path / 'out', val_images=0)
  assert (tmp_path / 'out' / pack_imagenet.TRAIN_ARCHIVE).read_bytes() == b'mine'
  assert not (tmp_path / 'out' / pack_imagenet.VAL_ARCHIVE).exists()


def test_synset_comes_from_the_name_or_the_folder():
  assert pack_imagenet.synset_of(pathlib.Path('x/n01440764_tench.JPEG')) == 'n01440764'
  assert pack_imagenet.synset_of(pathlib.Path('n01443537/anything.jpg')) == 'n01443537'
  assert pack_imagenet.synset_of(pathlib.Path('photos/cat.jpg')) is None


def test_validation_images_are_spread_over_the_list_and_disjoint():
  train_images, val = pack_imagenet.split_validation(list(range(10)), 3)
  assert len(val) == 3 and len(train_images) == 7 and not set(val) & set(train_images)
  assert val == [2, 5, 8]
