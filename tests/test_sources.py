"""Tests of dataset sources and TF-free preparation (supersub_jax.data.sources / prepare).

CIFAR-100 and ImageNet are tested end to end without network or TensorFlow: fake archives in
the original formats (cifar-100-binary.tar.gz, ILSVRC2012 tars) are prepared by
`prepare.prepare` into array_record and read back by the *stock* TFDS builders.
(`tfds.testing.mock_data` is not used: its fake data source must encode images with TensorFlow
as soon as a decoder such as `SkipDecoding` is passed, which the label scan does.)
"""

import dataclasses
import io
import os
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from hypothesis import given, settings
from hypothesis import strategies as st

from supersub_jax.data.fake_imagenet import imagenet_wnids, write_fake_imagenet
from supersub_jax import hierarchy as hierarchy_lib
from supersub_jax.data import builders, label_cache, prepare, sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ------------------------------------------------------------------------------ relabel


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 5), min_size=1, max_size=6), data=st.data())
def test_relabel_keeps_exactly_the_hierarchy_classes(sizes, data):
  full = hierarchy_lib.synthetic(sizes)
  # A hierarchy over a random subset of the source classes (as mixed_10 is of ImageNet).
  keep_super = data.draw(st.lists(st.booleans(), min_size=len(sizes), max_size=len(sizes)))
  if not any(keep_super):
    keep_super[0] = True
  supers, label = [], 0
  for sup, keep in zip(full.superclasses, keep_super):
    if keep:
      subs = tuple(hierarchy_lib.Subclass(label + j, s.source_index, '', s.name)
                   for j, s in enumerate(sup.subclasses))
      label += len(subs)
      supers.append(hierarchy_lib.Superclass(sup.name, '', subs))
  h = hierarchy_lib.Hierarchy('subset', tuple(supers), full.num_source_classes)
  source_labels = np.array(data.draw(st.lists(st.integers(0, full.num_source_classes - 1),
                                               max_size=50)), np.int64)
  out = sources.relabel(source_labels, h)
  np.testing.assert_array_equal(out.record, np.flatnonzero(h.source_to_label[source_labels] >= 0))
  np.testing.assert_array_equal(out.subclass, h.source_to_label[source_labels[out.record]])
  np.testing.assert_array_equal(out.superclass, h.label_to_superclass[out.subclass])
  np.testing.assert_array_equal(out.local, h.label_to_local[out.subclass])
  assert all(a.dtype == np.int32 for a in (out.subclass, out.superclass, out.local))


def test_relabel_rejects_labels_of_another_dataset():
  with pytest.raises(ValueError, match='outside .0, 7.*does not belong to this dataset'):
    sources.relabel(np.array([0, 7]), hierarchy_lib.synthetic((4, 3)))


# ------------------------------------------------------------------------------ synthetic


SYNTH = dict(image_size=16, train_per_class=3, validation_per_class=2, test_per_class=2)


@pytest.fixture(scope='module')
def synthetic_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('synth')


def test_synthetic_source(synthetic_dir):
  h = hierarchy_lib.synthetic((3, 2))
  source = sources.load_source('synthetic', 'train', h, synthetic_dir, **SYNTH)
  assert len(source) == 5 * 3
  raw = tfds.data_source(f'supersub_synthetic/{prepare_config_name(h)}', split='train',
                         data_dir=os.fspath(synthetic_dir))
  for i in range(len(source)):
    ex = source[i]
    assert ex['image'].shape == (16, 16, 3) and ex['image'].dtype == np.uint8
    assert ex['subclass'].dtype == np.int32
    assert ex['subclass'] == raw[i]['label'] and ex['superclass'] == raw[i]['superclass']
    assert ex['local'] == h.label_to_local[ex['subclass']]
    np.testing.assert_array_equal(ex['image'], raw[i]['image'])
  view = sources.load_source('synthetic', 'train', h, synthetic_dir, superclass=1, **SYNTH)
  assert len(view) == 2 * 3
  assert {int(view[i]['superclass']) for i in range(len(view))} == {1}
  assert sorted(int(view[i]['local']) for i in range(len(view))) == [0, 0, 0, 1, 1, 1]


def prepare_config_name(h):
  from supersub_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  return synthetic.config_name(sizes=tuple(h.sizes), seed=0, specificity=0, **SYNTH)


def test_synthetic_errors(synthetic_dir):
  h = hierarchy_lib.synthetic((3, 2))
  with pytest.raises(ValueError, match=r'sizes=\(2, 2\) disagrees'):
    sources.load_source('synthetic', 'train', h, synthetic_dir, sizes=(2, 2), **SYNTH)
  with pytest.raises(ValueError, match='superclass=2 is outside'):
    sources.load_source('synthetic', 'train', h, synthetic_dir, superclass=2, **SYNTH)
  with pytest.raises(sources.DatasetNotPreparedError, match="split 'train_extra'"):
    sources.load_source('synthetic', 'train_extra', h, synthetic_dir, **SYNTH)
  with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
    sources.load_source('mnist', 'train', h, synthetic_dir)


def test_a_damaged_record_names_its_file_and_the_rebuild_and_a_damaged_label_cache_is_rebuilt(tmp_path):
  h = hierarchy_lib.synthetic((3, 2))
  source = sources.load_source('synthetic', 'train', h, tmp_path, **SYNTH)
  [record_file] = [os.path.join(r, n) for r, _, ns in os.walk(tmp_path) for n in ns if '-train.array_record' in n]
  [cache] = [os.path.join(r, n) for r, _, ns in os.walk(tmp_path) for n in ns if n == 'train.npz']
  with open(cache, 'r+b') as f:  # cut short, as a kill during a copy leaves it
    f.truncate(os.path.getsize(cache) // 2)
  source = sources.load_source('synthetic', 'train', h, tmp_path, **SYNTH)
  assert sorted(np.load(cache)) == ['label', 'superclass']  # rebuilt
  with open(record_file, 'r+b') as f:  # a flipped byte in the first record's chunk
    f.seek(100)
    byte = f.read(1)
    f.seek(100)
    f.write(bytes([byte[0] ^ 0xFF]))
  rebuild = (f'delete {os.path.dirname(record_file)}, then run: python -m tools.prepare '
             f'--dataset=synthetic --data_dir={tmp_path} --image_size=16 --train_per_class=3 '
             '--validation_per_class=2 --test_per_class=2 --seed=0 --sizes=3,2 --specificity=0')
  with pytest.raises(sources.DataCorruptError) as info:
    [source[i] for i in range(len(source))]
  assert str(info.value).startswith(f'{record_file} is damaged: record 0 of synthetic/train cannot be read (Runtime')
  assert str(info.value).endswith(rebuild)
  os.remove(cache)  # the label scan reads every record: it names the damaged file the same way
  with pytest.raises(sources.DataCorruptError, match='records 0-14 of supersub_synthetic/train') as info:
    sources.load_source('synthetic', 'train', h, tmp_path, **SYNTH)
  assert str(info.value).startswith(f'{record_file} is damaged') and str(info.value).endswith(rebuild)


def test_a_record_file_cut_short_is_named_with_a_rebuild_command_that_a_shell_takes_whole(tmp_path):
  import shlex  # pylint: disable=g-import-not-at-top
  h = hierarchy_lib.synthetic((3, 2))
  data_dir = tmp_path / 'my data'  # a space: the rebuild command must quote it
  source = sources.load_source('synthetic', 'train', h, data_dir, **SYNTH)
  [record_file] = [os.path.join(r, n) for r, _, ns in os.walk(data_dir) for n in ns if '-train.array_record' in n]
  [cache] = [os.path.join(r, n) for r, _, ns in os.walk(data_dir) for n in ns if n == 'train.npz']
  with open(record_file, 'r+b') as f:  # cut at a block boundary, as a copy stopped part way leaves it
    f.truncate(os.path.getsize(record_file) // 65536 // 2 * 65536 or 4096)
  source = sources.load_source('synthetic', 'train', h, data_dir, **SYNTH)  # the labels come from their cache
  with pytest.raises(sources.DataCorruptError) as info:
    [source[i] for i in range(len(source))]
  message = str(info.value)
  assert message.startswith(f'{record_file} is damaged: record ')
  command = message.split('then run: ', 1)[1]
  assert f'--data_dir={data_dir}' in shlex.split(command)
  assert message.split('Rebuild the dataset: delete ', 1)[1].startswith(shlex.quote(os.path.dirname(record_file)))
  os.remove(cache)  # the label scan meets the same records: the same error, not a TypeError
  with pytest.raises(sources.DataCorruptError, match='the file is cut short') as info:
    sources.load_source('synthetic', 'train', h, data_dir, **SYNTH)
  assert str(info.value).startswith(f'{record_file} is damaged') and str(info.value).endswith(command)


def test_a_label_cache_overwritten_or_out_of_range_is_rebuilt_from_the_records(tmp_path, caplog):
  h = hierarchy_lib.synthetic((3, 2))
  expected = sources.load_source('synthetic', 'train', h, tmp_path, **SYNTH).labels
  [cache] = [os.path.join(r, n) for r, _, ns in os.walk(tmp_path) for n in ns if n == 'train.npz']
  good = dict(np.load(cache))
  assert good['label'].any()
  for name, damaged in (('all zeros', {k: np.zeros_like(v) for k, v in good.items()}),
                        ('out of range', {**good, 'label': good['label'] + 1000})):
    np.savez(cache, **damaged)
    with caplog.at_level('WARNING'):
      source = sources.load_source('synthetic', 'train', h, tmp_path, **SYNTH)
    assert f'Label cache {cache} fails its check' in caplog.text, name
    caplog.clear()
    for a, b in zip(dataclasses.astuple(source.labels), dataclasses.astuple(expected)):
      np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.load(cache)['label'], good['label'])


def test_source_is_picklable(synthetic_dir):
  import pickle  # pylint: disable=g-import-not-at-top
  h = hierarchy_lib.synthetic((3, 2))
  source = sources.load_source('synthetic', 'test', h, synthetic_dir, **SYNTH)
  clone = pickle.loads(pickle.dumps(source))
  np.testing.assert_array_equal(clone[3]['image'], source[3]['image'])


# ------------------------------------------------------------------------------ cifar100


def write_fake_cifar100(manual_dir, num_train, num_test, *, consistent=True, seed=0):
  """cifar-100-binary.tar.gz as distributed: records [coarse, fine, 3072 CHW bytes]."""
  h = hierarchy_lib.cifar100()
  rng = np.random.default_rng(seed)
  files = {}
  for name, n in (('train.bin', num_train), ('test.bin', num_test)):
    fine = rng.integers(0, 100, n)
    coarse = h.label_to_superclass[h.source_to_label[fine]]
    if not consistent:
      coarse = (coarse + 1) % 20
    rows = np.concatenate([coarse[:, None], fine[:, None],
                           rng.integers(0, 256, (n, 3072))], axis=1).astype(np.uint8)
    files[name] = rows.tobytes()
  files['coarse_label_names.txt'] = '\n'.join(hierarchy_lib.CIFAR100_COARSE_NAMES).encode()
  files['fine_label_names.txt'] = '\n'.join(hierarchy_lib.CIFAR100_FINE_NAMES).encode()
  os.makedirs(manual_dir, exist_ok=True)
  with tarfile.open(os.path.join(manual_dir, 'cifar-100-binary.tar.gz'), 'w:gz') as tar:
    for name, blob in files.items():
      info = tarfile.TarInfo(f'cifar-100-binary/{name}')
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))
  return files


@pytest.fixture(scope='module')
def cifar_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('cifar')
  files = write_fake_cifar100(root / 'manual', 30, 12)
  prepare.prepare('cifar100', root / 'data', manual_dir=root / 'manual')
  return root / 'data', files


def test_cifar100_prepared_without_tf_and_relabelled(cifar_dir):
  data_dir, files = cifar_dir
  h = hierarchy_lib.cifar100()
  rows = np.frombuffer(files['train.bin'], np.uint8).reshape(30, 3074)
  raw = tfds.data_source('cifar100', split='train', data_dir=os.fspath(data_dir))
  assert len(raw) == 30
  source = sources.load_source('cifar100', 'train', h, data_dir)
  assert len(source) == 30  # CIFAR-100's hierarchy covers every class
  for i in range(30):
    # TFDS reorders records; the original row is identified by the stored 'id'.
    row = rows[int(raw[i]['id'].decode().split('_')[1])]
    ex = source[i]
    np.testing.assert_array_equal(ex['image'], row[2:].reshape(3, 32, 32).transpose(1, 2, 0))
    assert ex['subclass'] == h.source_to_label[row[1]]
    assert ex['superclass'] == row[0]
    assert ex['local'] == h.label_to_local[ex['subclass']]
  k = int(source[0]['superclass'])
  view = sources.load_source('cifar100', 'train', h, data_dir, superclass=k)
  assert len(view) == int((rows[:, 0] == k).sum())


def test_cifar100_coarse_label_must_match_hierarchy(tmp_path):
  write_fake_cifar100(tmp_path / 'manual', 8, 4, consistent=False)
  prepare.prepare('cifar100', tmp_path / 'data', manual_dir=tmp_path / 'manual')
  with pytest.raises(ValueError, match='coarse_label=.*hierarchy.cifar100'):
    sources.load_source('cifar100', 'test', hierarchy_lib.cifar100(), tmp_path / 'data')


def test_missing_dataset_error_gives_the_command(tmp_path):
  with pytest.raises(sources.DatasetNotPreparedError) as error:
    sources.load_source('cifar100', 'train', hierarchy_lib.cifar100(), tmp_path)
  assert (f'python -m tools.prepare --dataset=cifar100 --data_dir={tmp_path}'
          in str(error.value))
  with pytest.raises(sources.DatasetNotPreparedError,
                     match='--dataset=imagenet2012 .*--manual_dir=/m'):
    sources.load_source('imagenet2012', 'train', hierarchy_lib.mixed_10(), tmp_path,
                        manual_dir='/m')


def test_prepare_offline_fails_in_seconds_in_one_line_naming_manual_dir_and_leaves_data_dir_as_it_was(tmp_path):
  data_dir = tmp_path / 'D'
  data_dir.mkdir()
  (data_dir / 'kept').write_text('1')
  # No network, whatever the machine's: every download goes through a proxy on the discard port, which refuses.
  env = dict(os.environ, HTTPS_PROXY='http://127.0.0.1:9', https_proxy='http://127.0.0.1:9')
  start = time.monotonic()
  out = subprocess.run([sys.executable, '-m', 'tools.prepare', '--dataset=cifar100',
                        f'--data_dir={data_dir}'], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
  seconds = time.monotonic() - start
  assert out.returncode == 1
  assert seconds < 60  # TFDS's own download gives up after about 3.5 minutes of retries
  lines = [line for line in out.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: cifar100 cannot be downloaded'), out.stderr
  assert 'cifar-100-binary.tar.gz' in lines[0] and '--manual_dir=' in lines[0]
  assert sorted(os.listdir(data_dir)) == ['kept']


def test_a_failed_download_leaves_no_folder_behind(tmp_path, monkeypatch):
  def fail(self, dl_manager):
    raise ConnectionError('the network went away mid-download')

  monkeypatch.setattr(builders, 'check_download', lambda *a, **k: None)  # the network answered the check...
  monkeypatch.setattr(builders.Cifar100NoTF, '_split_generators', fail)  # ...then failed
  for data_dir in (tmp_path / 'new', tmp_path / 'old'):
    if data_dir.name == 'old':
      data_dir.mkdir()
      (data_dir / 'kept').write_text('1')
    with pytest.raises(ConnectionError):
      prepare.prepare('cifar100', data_dir)
  assert not (tmp_path / 'new').exists()
  assert sorted(os.listdir(tmp_path / 'old')) == ['kept']


def test_preparing_the_synthetic_dataset_says_nothing_of_a_download(tmp_path):
  out = subprocess.run([sys.executable, '-m', 'tools.prepare', '--dataset=synthetic',
                        f'--data_dir={tmp_path}', '--sizes=2,2', '--train_per_class=2', '--test_per_class=1',
                        '--image_size=8'], capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  text = out.stdout + out.stderr
  assert 'split train: 8 examples' in out.stdout
  for noise in ('Downloading', 'downloaded and prepared', 'dataset_info.json', 'custom data configuration',
                'Generating'):
    assert noise not in text


# ------------------------------------------------------------------------------ imagenet2012


@pytest.fixture(scope='module')
def imagenet_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('imagenet')
  h = hierarchy_lib.mixed_10()
  all_wnids = imagenet_wnids()
  inside = [all_wnids[h.superclasses[k].subclasses[0].source_index] for k in (0, 4)]
  outside = [w for i, w in enumerate(all_wnids) if h.source_to_label[i] < 0][:2]
  write_fake_imagenet(root / 'manual', inside + outside, per_class=3, num_val=6)
  prepare.prepare('imagenet2012', root / 'data', manual_dir=root / 'manual', scan_labels=False)
  return root / 'data'


def test_imagenet_filtered_and_relabelled(imagenet_dir):
  h = hierarchy_lib.mixed_10()
  wnid_index = {w: i for i, w in enumerate(imagenet_wnids())}
  raw = tfds.data_source('imagenet2012', split='train', data_dir=os.fspath(imagenet_dir))
  assert len(raw) == 12
  source = sources.load_source('imagenet2012', 'train', h, imagenet_dir)
  assert len(source) == 6  # only the two mixed_10 classes
  kept = []
  for i in range(len(source)):
    ex = source[i]
    record = raw[int(source.labels.record[i])]
    source_index = wnid_index[record['file_name'].decode().split('_')[0]]
    assert record['label'] == source_index
    assert ex['subclass'] == h.source_to_label[source_index] >= 0
    assert ex['superclass'] == h.label_to_superclass[ex['subclass']]
    np.testing.assert_array_equal(ex['image'], record['image'])
    kept.append(int(ex['superclass']))
  assert sorted(set(kept)) == [0, 4]
  dogs = sources.load_source('imagenet2012', 'train', h, imagenet_dir, superclass=0)
  assert len(dogs) == 3


def test_imagenet_label_scan_decodes_no_image_and_is_cached(imagenet_dir, monkeypatch):
  builder = tfds.builder('imagenet2012', data_dir=os.fspath(imagenet_dir))

  def no_decoding(*args, **kwargs):
    raise AssertionError('an image was decoded while scanning labels')

  with monkeypatch.context() as patch:
    patch.setattr(tfds.features.Image, 'decode_example_np', no_decoding)
    labels = sources.cached_labels(builder, 'validation', imagenet_dir)
  assert labels['label'].shape == (6,)
  cache = label_cache.path_of(builder, 'validation', imagenet_dir)
  assert os.path.exists(cache)
  from tensorflow_datasets.core.data_sources import array_record  # pylint: disable=g-import-not-at-top
  with monkeypatch.context() as patch:
    patch.setattr(array_record.ArrayRecordDataSource, '__getitems__', no_decoding)
    patch.setattr(array_record.ArrayRecordDataSource, '__getitem__', no_decoding)
    again = sources.cached_labels(builder, 'validation', imagenet_dir)
  np.testing.assert_array_equal(again['label'], labels['label'])
  # Validation labels come from TFDS's validation_labels.txt, in file-name order.
  expected = tfds.core.tfds_path('datasets/imagenet2012/validation_labels.txt').read_text().split()
  wnid_index = {w: i for i, w in enumerate(imagenet_wnids())}
  raw = tfds.data_source('imagenet2012', split='validation', data_dir=os.fspath(imagenet_dir))
  for i in range(6):
    number = int(raw[i]['file_name'].decode().split('_')[-1].split('.')[0])
    assert labels['label'][i] == wnid_index[expected[number - 1]]


def test_imagenet_missing_split(tmp_path):
  h = hierarchy_lib.mixed_10()
  write_fake_imagenet(tmp_path / 'manual', imagenet_wnids()[:1], per_class=1, num_val=0)
  prepare.prepare('imagenet2012', tmp_path / 'data', manual_dir=tmp_path / 'manual')
  with pytest.raises(sources.DatasetNotPreparedError,
                     match=r"(?s)split 'validation'.*without ILSVRC2012_img_val.tar.*--manual_dir"):
    sources.load_source('imagenet2012', 'validation', h, tmp_path / 'data')


# ------------------------------------------------------------------------------ pre-resized imagenet2012


def test_capped_jpeg_fits_the_side_keeps_aspect_and_leaves_small_ones_untouched():
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from supersub_jax.data import builders  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  smooth = Image.fromarray(rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)).resize((200, 120), Image.BICUBIC)
  buffer = io.BytesIO()
  smooth.save(buffer, format='jpeg', quality=95)
  blob = buffer.getvalue()
  capped = builders.cap_jpeg(blob, 100, 90)
  out = np.asarray(Image.open(io.BytesIO(capped)).convert('RGB'), np.float64)
  assert out.shape == (60, 100, 3)  # longer side at the cap, aspect ratio kept
  reference = np.asarray(smooth.resize((100, 60), Image.BOX), np.float64)  # pillow's area average
  assert np.abs(out - reference).mean() < 3.0
  assert builders.cap_jpeg(blob, 200, 90) == blob  # already within the cap: the same bytes, no second encoding


def test_imagenet_capped_store_is_separate_and_named_by_cap_and_quality(tmp_path):
  h = hierarchy_lib.mixed_10()
  wnids = [imagenet_wnids()[h.superclasses[0].subclasses[0].source_index]]
  write_fake_imagenet(tmp_path / 'manual', wnids, per_class=2, photo_size=(60, 90))
  with pytest.raises(sources.DatasetNotPreparedError, match='--max_side=48 --jpeg_quality=85'):
    sources.load_source('imagenet2012', 'train', h, tmp_path / 'data', max_side=48, jpeg_quality=85)
  prepare.prepare('imagenet2012', tmp_path / 'data', manual_dir=tmp_path / 'manual')
  prepare.prepare('imagenet2012', tmp_path / 'data', manual_dir=tmp_path / 'manual', max_side=48, jpeg_quality=85)
  stock = sources.load_source('imagenet2012', 'train', h, tmp_path / 'data', encoded=True)
  capped = sources.load_source('imagenet2012', 'train', h, tmp_path / 'data', encoded=True, max_side=48,
                               jpeg_quality=85)
  # Its own folder, named by the cap and the quality; a damaged record's advice rebuilds it with both.
  assert 'imagenet2012/max_side48_q85/' in capped._rebuild and 'max_side' not in stock._rebuild
  assert '--max_side=48 --jpeg_quality=85' in capped._rebuild
  assert len(stock) == len(capped) == 2
  import simplejpeg  # pylint: disable=g-import-not-at-top
  for i in range(2):
    assert simplejpeg.decode_jpeg_header(stock[i]['image'])[:2] == (60, 90)
    assert simplejpeg.decode_jpeg_header(capped[i]['image'])[:2] == (32, 48)
    assert stock[i]['subclass'] == capped[i]['subclass']
  with pytest.raises(ValueError, match='max_side=48 caps imagenet2012'):
    prepare.prepare('cifar100', tmp_path / 'data', max_side=48)


def test_prepare_refuses_an_empty_data_dir_instead_of_building_into_the_current_folder(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get('PYTHONPATH', '')]))
  out = subprocess.run([sys.executable, '-m', 'tools.prepare', '--dataset=synthetic', '--data_dir=',
                        '--image_size=16', '--train_per_class=2', '--test_per_class=1', '--sizes=2,2'],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
  assert out.returncode == 1 and 'Traceback' not in out.stderr
  assert out.stderr.splitlines()[-1].startswith('error: --data_dir is empty'), out.stderr[-3000:]
  assert os.listdir(tmp_path) == []
