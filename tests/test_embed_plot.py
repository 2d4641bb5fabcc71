"""The embedding plot: PCA against numpy's, and a PNG whose pixels show the classes where they should be."""

import numpy as np
import pytest
import tensorflow as tf

import embed_plot


def test_pca_recovers_the_plane_of_the_data():
  rng = np.random.default_rng(0)
  plane = rng.normal(size=(500, 2)) * [5.0, 2.0]
  basis = np.linalg.qr(rng.normal(size=(16, 16)))[0][:2]  # two orthonormal directions in 16-D
  points = embed_plot.pca_2d(plane @ basis + 10.0 + rng.normal(size=(500, 16)) * 0.01)
  # Same plane, up to the sign of each component: correlation ~1 with the generating coordinates.
  assert abs(np.corrcoef(points[:, 0], plane[:, 0])[0, 1]) > 0.999
  assert abs(np.corrcoef(points[:, 1], plane[:, 1])[0, 1]) > 0.999
  assert np.var(points[:, 0]) > np.var(points[:, 1])


def test_png_shows_separated_classes_in_their_colours(tmp_path):
  rng = np.random.default_rng(1)
  labels = np.repeat([0, 1], 100)
  separated = np.where(labels[:, None] == 0, -5.0, 5.0) + rng.normal(size=(200, 8))
  path = embed_plot.save_embedding_plot(str(tmp_path / 'plot.png'), [(separated, labels), (separated, labels)],
                                        size=100)
  image = tf.io.decode_png(tf.io.read_file(path)).numpy()
  assert image.shape == (100, 204, 3)
  left = image[:, :100]
  is_colour = lambda c: np.all(left == embed_plot.PALETTE[c], axis=-1)
  cols0, cols1 = np.nonzero(is_colour(0))[1], np.nonzero(is_colour(1))[1]
  assert len(cols0) and len(cols1)
  assert cols0.max() < cols1.min() or cols1.max() < cols0.min()  # the first component splits the classes
  with pytest.raises(ValueError, match='one label each'):
    embed_plot.save_embedding_plot(str(tmp_path / 'x.png'), [(separated, labels[:5])])
