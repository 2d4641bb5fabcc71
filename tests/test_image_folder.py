"""image_folder.py: a folder's scan and image check, cached between starts (through data.load_source)."""

import json
import logging
import os

import numpy as np
import pytest

import data
import image_files
import image_folder


@pytest.fixture
def checked_files(monkeypatch):
  """The relative paths the image check decodes, start by start (a list per load_source)."""
  starts = []
  check = image_folder._check_files

  def counting(paths):
    starts[-1] += [os.path.relpath(p, os.path.dirname(os.path.dirname(os.path.dirname(p)))) for p in paths]
    return check(paths)

  monkeypatch.setattr(image_folder, '_check_files', counting)

  def load(root, cache_dir, **kwargs):
    starts.append([])
    return data.load_source(str(root), cache_dir=str(cache_dir), **kwargs)

  return starts, load


def _metadata(source):
  labels = {ex['id'].decode(): int(ex['label']) for ex in source.read('train', decode_images=False)
            .as_numpy_iterator()}
  return source.class_names, source.split_sizes, source.image_shape, labels


def test_second_start_on_an_unchanged_folder_decodes_nothing(folder, tmp_path, checked_files, caplog):
  starts, load = checked_files
  image_files.age(folder)
  first = load(folder, tmp_path / 'cache')
  with caplog.at_level(logging.INFO, logger='absl'):
    second = load(folder, tmp_path / 'cache')
  assert len(starts[0]) == 8 and starts[1] == []
  assert '0 files checked, 8 verdicts from the cache' in caplog.text
  assert _metadata(second) == _metadata(first)
  assert len(os.listdir(tmp_path / 'cache')) == 1  # one file per folder, named by a hash of its path


def test_added_removed_and_changed_files_are_noticed(tmp_path, checked_files, caplog):
  starts, load = checked_files
  rng = np.random.default_rng(2)
  root, cache = tmp_path / 'images', tmp_path / 'cache'
  for name in 'abc':
    image_files.write_image(str(root / f'train/cat/{name}.png'), rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
  image_files.age(root)
  assert load(root, cache).image_shape == (16, 16, 3)
  image_files.write_image(str(root / 'train/dog/d.jpg'), rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))  # added
  image_files.age(root)
  source = load(root, cache)
  assert starts[-1] == ['train/dog/d.jpg']
  assert source.split_sizes == {'train': 4} and source.class_names == ('cat', 'dog')
  image_files.write_image(str(root / 'train/cat/a.png'), rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))  # other size
  image_files.age(root)
  source = load(root, cache)
  assert starts[-1] == ['train/cat/a.png'] and source.image_shape is None
  os.remove(root / 'train/dog/d.jpg')  # removed, and its class with it: nothing is decoded
  os.rmdir(root / 'train/dog')
  source = load(root, cache)
  assert starts[-1] == [] and source.split_sizes == {'train': 3} and source.class_names == ('cat',)
  # Same size, other bytes, other (old) mtime: noticed by the mtime alone.
  length = os.path.getsize(root / 'train/cat/b.png')
  (root / 'train/cat/b.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\0' * (length - 8))
  image_files.age(root / 'train/cat/b.png', when=1_500_000_000)
  assert os.path.getsize(root / 'train/cat/b.png') == length
  with caplog.at_level(logging.WARNING):
    source = load(root, cache)
  assert starts[-1] == ['train/cat/b.png']
  assert source.split_sizes == {'train': 2} and 'Skipping 1 corrupt' in caplog.text and 'b.png' in caplog.text
  assert load(root, cache).split_sizes == {'train': 2} and starts[-1] == []  # the verdict is cached too


def test_cached_corrupt_verdicts_are_still_counted_and_named(folder, tmp_path, checked_files, caplog):
  starts, load = checked_files
  (folder / 'train/cat/broken.png').write_bytes(b'\x89PNG\r\n\x1a\nnot really a png')
  image_files.age(folder)
  load(folder, tmp_path / 'cache')
  with caplog.at_level(logging.WARNING):
    source = load(folder, tmp_path / 'cache')
  assert starts[1] == [] and source.split_sizes['train'] == 6
  assert 'Skipping 1 corrupt' in caplog.text and 'broken.png' in caplog.text
  with pytest.raises(data.DataError, match='broken.png'):
    load(folder, tmp_path / 'cache', strict_images=True)
  assert starts[2] == []


def test_files_modified_just_before_a_start_are_checked_again(folder, tmp_path, checked_files):
  # Not aged: a rewrite within the filesystem's timestamp granularity could keep size and mtime.
  starts, load = checked_files
  load(folder, tmp_path / 'cache')
  load(folder, tmp_path / 'cache')
  assert len(starts[0]) == len(starts[1]) == 8


def test_unwritable_cache_only_warns(folder, tmp_path, checked_files, caplog):
  starts, load = checked_files
  (tmp_path / 'not_a_dir').write_text('')  # makedirs fails here even for root, unlike a read-only folder
  image_files.age(folder)
  for _ in range(2):
    with caplog.at_level(logging.WARNING):
      source = load(folder, tmp_path / 'not_a_dir' / 'cache')
    assert source.split_sizes == {'train': 6, 'test': 2}
  assert len(starts[1]) == 8
  assert caplog.text.count('Cannot write the image-folder cache') == 2  # one warning per start


def test_cache_lives_under_xdg_cache_home(folder, tmp_path, monkeypatch):
  image_files.age(folder)
  data.load_source(str(folder))
  assert len(os.listdir(tmp_path / 'xdg_cache/simclr_tf2/image_folders')) == 1
  monkeypatch.setenv('XDG_CACHE_HOME', 'relative/path')  # ignored, as the XDG spec says
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  assert image_folder.default_cache_dir() == str(tmp_path / 'home/.cache/simclr_tf2/image_folders')


def test_damaged_cache_is_ignored(folder, tmp_path, checked_files):
  starts, load = checked_files
  image_files.age(folder)
  load(folder, tmp_path / 'cache')
  (cache_file,) = (tmp_path / 'cache').iterdir()
  cache_file.write_text('{"version": 1, "root": ')
  assert load(folder, tmp_path / 'cache').split_sizes == {'train': 6, 'test': 2}
  assert len(starts[1]) == 8 and json.loads(cache_file.read_text())['version'] == image_folder.CACHE_VERSION


# ----------------------------------------------------------------------------------------------- encoded reads
