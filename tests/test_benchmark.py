"""benchmark.py's arithmetic count, on a model small enough to count by hand."""

import keras
import pytest
import tensorflow as tf

import benchmark


def test_conv_gflops_counts_forward_and_both_gradients_from_the_graph():
  model = keras.Sequential([keras.Input([8, 8, 3]),
                            keras.layers.Conv2D(8, 3, padding='same'),
                            keras.layers.Conv2D(16, 3, strides=2, padding='same'),
                            keras.layers.Dense(4)])
  # Stem: 2 * (2 images * 8 * 8 outputs * 8 channels) * (3 * 3 * 3) MACs, forward + kernel gradient only.
  stem = 2 * (2 * 8 * 8 * 8) * 27 * 2
  # Second conv, stride 2: 4 x 4 outputs, 16 channels, 3 * 3 * 8 taps; forward + both gradients.
  second = 2 * (2 * 4 * 4 * 16) * 72 * 3
  assert benchmark.conv_gflops_per_step(model, tf.zeros([2, 8, 8, 3])) == pytest.approx((stem + second) / 1e9)
