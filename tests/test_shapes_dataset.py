"""The embedded dataset: deterministic, balanced, and colour is a nuisance rather than a label."""

import numpy as np

import data
import shapes_dataset


def _sample(split, count):
  images, labels = zip(*[(image, label) for _, image, label in shapes_dataset.generate(split, count)])
  return np.stack(images), np.array(labels)


def test_deterministic_and_balanced():
  first, labels = _sample('train', 60)
  again, _ = _sample('train', 60)
  np.testing.assert_array_equal(first, again)
  test, _ = _sample('test', 60)
  assert not np.array_equal(first, test)  # splits are drawn from different streams
  assert first.shape == (60, 32, 32, 3) and first.dtype == np.uint8
  assert np.bincount(labels).tolist() == [6] * 10


def test_colour_does_not_predict_the_class():
  images, labels = _sample('train', 1000)
  train, test = slice(0, 800), slice(800, 1000)

  def nearest_centroid_accuracy(features):
    centroids = np.stack([features[train][labels[train] == c].mean(0) for c in range(10)])
    distances = ((features[test][:, None] - centroids[None]) ** 2).sum(-1)
    return np.mean(distances.argmin(1) == labels[test])

  mean_colour = images.reshape(len(images), -1, 3).mean(1)
  assert nearest_centroid_accuracy(mean_colour) < 0.2  # chance is 0.1
  # The same classifier on the fraction of pixels that differ from the corner colour (shape area) does
  # better: the information is in the geometry.
  corner = images[:, :1, :1, :].astype(float)
  area = (np.abs(images - corner).sum(-1) > 60).mean((1, 2))[:, None]
  assert nearest_centroid_accuracy(area) > nearest_centroid_accuracy(mean_colour)


def test_prepared_through_tfds(shapes_data_dir):
  source = data.load_source(data.EMBEDDED_DATASET, shapes_data_dir)
  assert source.split_sizes == shapes_dataset.SPLIT_SIZES
  assert source.class_names == shapes_dataset.CLASS_NAMES and source.image_shape == (32, 32, 3)
  read = {(ex['image'].tobytes(), int(ex['label'])) for ex in source.read('test').as_numpy_iterator()}
  generated = {(image.tobytes(), label) for _, image, label in shapes_dataset.generate('test')}
  assert read == generated
