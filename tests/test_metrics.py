"""Metric values on hand-made inputs, and what the TensorBoard writer really writes."""

import glob

import keras
import numpy as np
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

import metrics
import objective


def test_contrastive_accuracy_and_entropy():
  labels = tf.one_hot([0, 1, 2], 6)
  logits_ab = tf.constant([[5.0, 0.0, 0.0], [0.0, 0.0, 5.0], [0.0, 0.0, 5.0]])
  assert metrics.contrastive_accuracy(logits_ab, labels).numpy() == np.float32(2 / 3)
  uniform = tf.zeros([4, 8])
  np.testing.assert_allclose(metrics.contrastive_entropy(uniform).numpy(), np.log(8), rtol=1e-5)
  probs = np.exp(logits_ab.numpy()) / np.exp(logits_ab.numpy()).sum(1, keepdims=True)
  np.testing.assert_allclose(metrics.contrastive_entropy(logits_ab).numpy(),
                             -(probs * np.log(probs + 1e-8)).sum(1).mean(), rtol=1e-5)


def test_contrastive_accuracy_from_the_loss_outputs():
  rng = np.random.default_rng(0)
  views = rng.normal(size=(8, 16)).astype(np.float32)
  _, logits_ab, labels = objective.contrastive_loss(tf.constant(np.concatenate([views, views])))
  assert metrics.contrastive_accuracy(logits_ab, labels).numpy() == 1.0


def test_top_k_accuracy_with_one_hot_and_integer_labels():
  logits = tf.constant([[0.1, 0.5, 0.4], [0.8, 0.15, 0.05], [0.2, 0.3, 0.5], [0.5, 0.3, 0.2]])
  labels = np.array([2, 0, 0, 1])
  assert metrics.top_k_accuracy(labels, logits, 1).numpy() == 0.25
  assert metrics.top_k_accuracy(tf.one_hot(labels, 3), logits, 2).numpy() == 0.75
  assert metrics.top_k_accuracy(labels, logits, 3).numpy() == 1.0


def test_log_and_write_metrics_writes_scalars(tmp_path):
  first, second = keras.metrics.Mean('train/loss'), keras.metrics.Mean('train/accuracy')
  first.update_state([1.0, 3.0])
  second.update_state(0.25)
  writer = tf.summary.create_file_writer(str(tmp_path))
  values = metrics.log_and_write_metrics([first, second], step=7, writer=writer)
  writer.flush()
  assert values == {'train/loss': 2.0, 'train/accuracy': 0.25}
  events = event_accumulator.EventAccumulator(glob.glob(str(tmp_path / 'events*'))[0])
  events.Reload()
  written = {tag: [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]
             for tag in events.Tags()['tensors']}
  assert written == {'train/loss': [(7, 2.0)], 'train/accuracy': [(7, 0.25)]}
