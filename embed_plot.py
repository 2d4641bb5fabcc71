"""A picture of a representation: 2-D PCA projections of features, one panel per encoder, coloured by class.

Written as a PNG with TensorFlow's encoder (no plotting library needed). `run.py --mode=embed_plot` draws a
random encoder next to a trained one, so a user can see what pretraining did before reading any number.
"""

import typing

import numpy as np
import tensorflow as tf

# Ten distinguishable colours (Tableau 10); classes beyond ten reuse them.
PALETTE = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
                    [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]], np.uint8)


def pca_2d(features: np.ndarray) -> np.ndarray:
  """Projection of `features` [N, D] on their two principal components, [N, 2] (centred, SVD)."""
  centred = features - features.mean(axis=0, keepdims=True)
  _, _, components = np.linalg.svd(centred, full_matrices=False)
  return centred @ components[:2].T


def render_panel(points: np.ndarray, labels: np.ndarray, size: int = 400, margin: int = 12, dot: int = 2) -> np.ndarray:
  """An RGB image [size, size, 3] with each point a (2 * dot + 1)-pixel square in its class colour."""
  canvas = np.full((size, size, 3), 255, np.uint8)
  low, high = points.min(axis=0), points.max(axis=0)
  scaled = (points - low) / np.maximum(high - low, 1e-12)
  cols = (margin + scaled[:, 0] * (size - 2 * margin - 1)).round().astype(int)
  rows = (size - 1 - margin - scaled[:, 1] * (size - 2 * margin - 1)).round().astype(int)
  for row, col, label in zip(rows, cols, labels):
    canvas[max(row - dot, 0):row + dot + 1, max(col - dot, 0):col + dot + 1] = PALETTE[label % len(PALETTE)]
  return canvas


def save_embedding_plot(path: str, panels: typing.Sequence[tuple[np.ndarray, np.ndarray]], size: int = 400) -> str:
  """Writes panels side by side (a grey bar between) to `path`; `panels` is a list of (features, labels)."""
  images = []
  for features, labels in panels:
    if len(features) != len(labels) or len(features) < 3:
      raise ValueError(f'Each panel needs >= 3 features with one label each, got {len(features)} and '
                       f'{len(labels)}.')
    images += [render_panel(pca_2d(np.asarray(features, np.float64)), np.asarray(labels), size),
               np.full((size, 4, 3), 160, np.uint8)]
  tf.io.write_file(path, tf.io.encode_png(np.concatenate(images[:-1], axis=1)))
  return path
