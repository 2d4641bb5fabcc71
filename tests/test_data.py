"""Data sources (folders, TFDS, mocked TFDS, the embedded set), label fractions and distributed batches."""

import json
import logging
import os
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import config as config_lib
import data
import data_util
import image_files
import rundir

DATA = config_lib.DataConfig(image_size=32)


def test_folder_source_metadata_and_channels(folder):
  source = data.load_source(str(folder))
  assert source.class_names == ('cat', 'dog')
  assert source.split_sizes == {'train': 6, 'test': 2}
  assert source.image_shape is None  # sizes differ: images are cropped one by one
  examples = list(source.read('train').as_numpy_iterator())
  assert all(ex['image'].shape[-1] == 3 and ex['image'].dtype == np.uint8 for ex in examples)
  labels = {ex['id'].decode(): int(ex['label']) for ex in examples}
  assert labels['train/cat/c.png'] == 0 and labels['train/dog/e.bmp'] == 1


@pytest.mark.parametrize('train_mode, channels', [('pretrain', 6), ('finetune', 3)])
def test_folder_batches(folder, train_mode, channels):
  source = data.load_source(str(folder))
  ds = data.build_dataset(source, 'train', 4, DATA, is_training=True, train_mode=train_mode)
  images, labels = next(iter(ds))
  assert images.shape == (4, 32, 32, channels) and labels.shape == (4, 2)
  assert np.all(labels.numpy().sum(1) == 1)
  assert 0.0 <= images.numpy().min() and images.numpy().max() <= 1.0
  evaluated = [batch for batch in data.build_dataset(source, 'test', 4, DATA, is_training=False)]
  assert sum(int(images.shape[0]) for images, _ in evaluated) == 2


def test_unlabeled_split_pretrains(tmp_path):
  rng = np.random.default_rng(1)
  for i in range(3):
    image_files.write_image(str(tmp_path / f'unlabeled/{i}.png'), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
  source = data.load_source(str(tmp_path))
  assert source.num_classes == 0 and source.image_shape == (32, 32, 3)
  images, labels = next(iter(data.build_dataset(source, 'unlabeled', 2, DATA, True, 'pretrain')))
  assert images.shape == (2, 32, 32, 6)
  assert not labels.numpy().any()  # no label: all-zero one-hot rows, which the supervised loss ignores
  with pytest.raises(data.DataError, match='no labels'):
    data.label_fraction_subset(source, 'unlabeled', 0.5)


def test_corrupt_images_are_skipped_or_named(folder, caplog):
  (folder / 'train/cat/broken.png').write_bytes(b'\x89PNG\r\n\x1a\nnot really a png')
  with caplog.at_level(logging.WARNING):
    source = data.load_source(str(folder))
  assert source.split_sizes['train'] == 6
  assert 'Skipping 1 corrupt' in caplog.text and 'broken.png' in caplog.text
  with pytest.raises(data.DataError, match='broken.png'):
    data.load_source(str(folder), strict_images=True)


@pytest.mark.parametrize('layout, message', [
    ({'train/cat/x.txt': b'not an image'}, 'Class folder .*cat has no images'),
    ({'train/readme.txt': b''}, 'Split folder .*train has no images'),
    ({}, 'has no split folders'),
])
def test_bad_folders_give_one_clear_error(tmp_path, layout, message):
  for rel, content in layout.items():
    os.makedirs(os.path.dirname(tmp_path / rel), exist_ok=True)
    (tmp_path / rel).write_bytes(content)
  with pytest.raises(data.DataError, match=message):
    data.load_source(str(tmp_path))


def test_missing_folder_and_unknown_name():
  with pytest.raises(data.DataError, match='does not exist'):
    data.load_source('/no/such/folder')
  with pytest.raises(data.DataError, match='Unknown dataset'):
    data.load_source('not_a_dataset_name_xyz')


def test_missing_tfds_dataset_fails_fast_naming_the_fixes(tmp_path):
  start = time.monotonic()
  with pytest.raises(data.DataError) as error:
    data.load_source('cifar10', str(tmp_path))
  assert time.monotonic() - start < 20  # not TFDS's ~205 s of download retries
  assert '--data_dir' in str(error.value) and '<root>/<split>/<class>/<image>' in str(error.value)


def test_mocked_tfds_dataset_feeds_batches(tmp_path):
  # Metadata (splits) for a fake cifar10, then TFDS's mock returns random examples of its features.
  builder = tfds.builder('cifar10', data_dir=str(tmp_path))
  info = builder.info
  info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=split, shard_lengths=[n], num_bytes=0, filename_template=None)
      for split, n in (('train', 40), ('test', 20))]))
  os.makedirs(builder.data_dir, exist_ok=True)
  info.write_to_directory(builder.data_dir)
  with tfds.testing.mock_data(num_examples=40, data_dir=str(tmp_path)):
    source = data.load_source('cifar10', str(tmp_path))
    assert source.num_classes == 10 and source.image_shape == (32, 32, 3)
    images, labels = next(iter(data.build_dataset(source, 'train', 8, DATA, True, 'pretrain')))
    assert images.shape == (8, 32, 32, 6) and labels.shape == (8, 10)
    images, labels = next(iter(data.build_dataset(source, 'test', 8, DATA, False)))
    assert images.shape == (8, 32, 32, 3)
    encoded = next(source.read('train', encoded=True).as_numpy_iterator())  # the stored PNG's bytes
    assert set(encoded) == {'encoded', 'label', 'id'} and tf.io.decode_png(encoded['encoded']).shape == (32, 32, 3)


def test_embedded_dataset_batches_and_label_fraction(shapes_data_dir, tmp_path):
  source = data.load_source(data.EMBEDDED_DATASET, shapes_data_dir)
  ids = data.label_fraction_subset(source, 'train', 0.1, seed=0)
  assert len(ids) == 500 and ids == data.label_fraction_subset(source, 'train', 0.1, seed=0)
  assert ids != data.label_fraction_subset(source, 'train', 0.1, seed=1)
  path = rundir.write_label_subset(str(tmp_path), ids, dataset=source.name, fraction=0.1, seed=0)
  assert json.load(open(path))['ids'] == ids
  ds = data.build_dataset(source, 'train', 50, DATA, True, 'finetune', subset_ids=ids, shuffle_buffer=1000)
  counts = np.zeros(10)
  for _, (_, labels) in zip(range(10), ds):  # 10 batches of 50 = one pass over the 500-image subset
    counts += labels.numpy().sum(0)
  assert counts.sum() == 500 and counts.min() >= 30  # balanced subset (50 per class on average)
  one_percent = data.label_fraction_subset(source, 'train', 0.01)
  labels_by_id = {ex['id'].decode(): int(ex['label']) for ex in source.read('train').as_numpy_iterator()}
  assert np.bincount([labels_by_id[i] for i in one_percent]).tolist() == [5] * 10


def test_preparing_the_embedded_dataset_prints_nothing(tmp_path, capfd):
  """TFDS's banner (stdout) and progress bars (stderr) are not a run's output."""
  source = data.load_source(data.EMBEDDED_DATASET, str(tmp_path / 'tfds'))
  assert source.split_sizes == {'train': 5000, 'test': 1000}
  out, err = capfd.readouterr()
  assert out == '' and 'examples/s' not in err and 'Downloading and preparing' not in err


def test_distributed_batches_are_split_and_sharded(two_replica_strategy, shapes_data_dir):
  source = data.load_source(data.EMBEDDED_DATASET, shapes_data_dir)
  dist = data.build_distributed_dataset(two_replica_strategy, 16, source, 'test', settings=DATA, is_training=False)
  images, _ = next(iter(dist))
  per_replica = two_replica_strategy.experimental_local_results(images)
  assert [int(t.shape[0]) for t in per_replica] == [8, 8]
  first, second = (t.numpy().reshape(8, -1) for t in per_replica)
  assert not any((row == second).all(1).any() for row in first)  # no example in both halves
  with pytest.raises(data.DataError, match='not divisible'):
    data.build_distributed_dataset(two_replica_strategy, 15, source, 'test', settings=DATA, is_training=False)


def test_labels_are_read_without_decoding_images(folder, shapes_data_dir):
  for source in (data.load_source(str(folder)), data.load_source(data.EMBEDDED_DATASET, shapes_data_dir)):
    split = 'train'
    full = {ex['id']: int(ex['label']) for ex in source.read(split).as_numpy_iterator()}
    light = list(source.read(split, decode_images=False).as_numpy_iterator())
    assert all(set(ex) == {'id', 'label'} for ex in light)
    assert {ex['id']: int(ex['label']) for ex in light} == full


def test_keep_ids_selects_examples_before_decoding_them(folder, shapes_data_dir):
  """Label fractions read only their examples: the same images and labels as the full read, nothing else."""
  for source in (data.load_source(str(folder)), data.load_source(data.EMBEDDED_DATASET, shapes_data_dir)):
    full = {ex['id']: ex for ex in source.read('train').as_numpy_iterator()}
    keep = sorted(full)[::3]
    kept = list(source.read('train', keep_ids=keep).as_numpy_iterator())
    assert sorted(ex['id'] for ex in kept) == keep
    for ex in kept:
      np.testing.assert_array_equal(ex['image'], full[ex['id']]['image'])
      assert ex['label'] == full[ex['id']]['label']
    light = source.read('train', decode_images=False, keep_ids=keep).as_numpy_iterator()
    assert {ex['id'] for ex in light} == set(keep)


def test_split_batch_gives_each_replica_its_contiguous_slice(two_replica_strategy):
  batch = tf.reshape(tf.range(12), [6, 2])
  parts = two_replica_strategy.experimental_local_results(data.split_batch(two_replica_strategy, batch))
  assert [p.numpy().tolist() for p in parts] == [batch[:3].numpy().tolist(), batch[3:].numpy().tolist()]


# ----------------------------------------------------------------------------------------------- folder cache


def test_encoded_reads_give_the_files_bytes(folder):
  source = data.load_source(str(folder))
  for ex in source.read('train', encoded=True).as_numpy_iterator():
    assert set(ex) == {'encoded', 'label', 'id'}
    assert ex['encoded'] == (folder / ex['id'].decode()).read_bytes()


def test_jpeg_training_crops_decode_only_their_windows(folder, monkeypatch):
  traced = []
  crop = data_util.decode_and_random_crop
  monkeypatch.setattr(data_util, 'decode_and_random_crop',
                      lambda *args, **kwargs: traced.append(args[1:]) or crop(*args, **kwargs))
  source = data.load_source(str(folder))
  for train_mode, views in (('pretrain', 2), ('finetune', 1)):
    images, _ = next(iter(data.build_dataset(source, 'train', 6, config_lib.DataConfig(image_size=24), True,
                                             train_mode, shuffle_buffer=6)))
    assert images.shape == (6, 24, 24, 3 * views) and traced[-1] == (24, 24, views)
  traced.clear()
  next(iter(data.build_dataset(source, 'test', 2, config_lib.DataConfig(image_size=24), False)))  # decodes whole
  assert not traced


@pytest.fixture
def class_sorted_folder(tmp_path):
  """train: 4 classes of 12, 8, 6 and 4 images (read in that order, as any folder is: sorted by class); test: 3
  of each."""
  rng = np.random.default_rng(0)
  root = tmp_path / 'sorted'
  for split, counts in (('train', (12, 8, 6, 4)), ('test', (3, 3, 3, 3))):
    for c, count in enumerate(counts):
      for i in range(count):
        image_files.write_image(str(root / split / f'class_{c}' / f'{i:02d}.png'), rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
  return root


def test_samples_of_a_class_sorted_split_keep_its_class_proportions(class_sorted_folder):
  source = data.load_source(str(class_sorted_folder))
  label_of = {rel: source.class_names.index(rel.split('/')[1]) for rel in
              (ex['id'].decode() for ex in source.read('train', decode_images=False).as_numpy_iterator())}
  ids = data.sample_ids(source, 'train', 15)
  assert len(ids) == len(set(ids)) == 15 and ids == sorted(ids)
  assert np.bincount([label_of[i] for i in ids]).tolist() == [6, 4, 3, 2]  # 12:8:6:4 halved
  assert data.sample_ids(source, 'train', 15) == ids and data.sample_ids(source, 'train', 15, seed=1) != ids
  # Proportional shares with remainders to the largest fractions: 7 of 30 -> 2.8, 1.87, 1.4, 0.93.
  assert np.bincount([label_of[i] for i in data.sample_ids(source, 'train', 7)]).tolist() == [3, 2, 1, 1]
  assert data.sample_ids(source, 'train', 30) is None and data.sample_ids(source, 'train', None) is None


@pytest.mark.parametrize('same_size', [True, False])
def test_crop_min_area_reaches_every_training_crop(folder, class_sorted_folder, monkeypatch, same_size):
  """--crop_min_area is the lower end of the crop-area range of both crop paths: batched (same-size images)
  and per file (JPEG windows, images of varying sizes)."""
  ranges = []
  sample = data_util.sample_crop_windows
  monkeypatch.setattr(data_util, 'sample_crop_windows',
                      lambda *args, **kwargs: ranges.append(kwargs['area_range']) or sample(*args, **kwargs))
  source = data.load_source(str(class_sorted_folder if same_size else folder))
  next(iter(data.build_dataset(source, 'train', 2, config_lib.DataConfig(image_size=8, crop_min_area=0.35), True,
                               'pretrain')))
  assert ranges and set(ranges) == {(0.35, 1.0)}
