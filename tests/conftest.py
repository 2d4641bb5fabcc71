"""Test-session setup: two logical CPU devices, so tf.distribute tests can run two replicas on any machine; the
fixtures several test modules share; image-folder caches private to each test.

Logical devices must be configured before TensorFlow initialises its devices, i.e. before any test touches
TensorFlow; pytest imports this file first. Single-device code keeps using /cpu:0 as usual.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
import runtime  # pylint: disable=g-import-not-at-top
runtime.use_onednn()  # the kernels run.py uses; before TensorFlow loads (subprocesses inherit it)

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

import image_files  # pylint: disable=g-import-not-at-top

_cpus = tf.config.list_physical_devices('CPU')
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)


@pytest.fixture(scope='session')
def two_replica_strategy():
  """One MirroredStrategy over the 2 logical CPUs, shared by every test.

  A process must not create several: their collective ops reuse instance keys and TensorFlow then aborts
  ("Collective instance 100 expected type 0 ... but got type 2").
  """
  devices = [d.name for d in tf.config.list_logical_devices('CPU')[:2]]
  return tf.distribute.MirroredStrategy(devices)


@pytest.fixture(scope='session')
def shapes_data_dir(tmp_path_factory):
  """A data_dir with the embedded dataset prepared once for the whole session (~10 s)."""
  import data  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  data.load_source(data.EMBEDDED_DATASET, data_dir)
  return data_dir


@pytest.fixture(autouse=True)
def _private_cache_home(tmp_path, monkeypatch):
  """Image-folder caches go to the test's own directory, never to ~/.cache."""
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg_cache'))


@pytest.fixture
def folder(tmp_path):
  """train: cats (RGB PNG, grayscale PNG, RGBA PNG), dogs (JPEG, BMP, GIF); test: one of each; mixed sizes."""
  rng = np.random.default_rng(0)
  rgb = lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  root = tmp_path / 'images'
  write = image_files.write_image
  write(str(root / 'train/cat/a.png'), rgb(40, 40))
  write(str(root / 'train/cat/b.png'), rng.integers(0, 256, (36, 44), dtype=np.uint8))  # grayscale
  write(str(root / 'train/cat/c.png'), rng.integers(0, 256, (40, 40, 4), dtype=np.uint8))  # RGBA
  write(str(root / 'train/dog/d.jpg'), rgb(50, 30))
  write(str(root / 'train/dog/e.bmp'), rgb(20, 20))  # smaller than the crop
  write(str(root / 'train/dog/f.gif'), rgb(40, 40)[..., 0])
  write(str(root / 'test/cat/g.png'), rgb(40, 40))
  write(str(root / 'test/dog/h.png'), rgb(40, 40))
  return root
