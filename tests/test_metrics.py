"""Metric values on hand-made inputs, and what the TensorBoard writer really writes."""

import glob
import json

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
  _, logits_ab, labels = objective.add_contrastive_loss(tf.constant(np.concatenate([views, views])))
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


class _FixedLogits:
  """A 'model' whose logits_sup are given rows of a table, by image value."""

  def __init__(self, table):
    self.table = tf.constant(table, tf.float32)

  def __call__(self, images, training=False):
    return {'logits_sup': tf.gather(self.table, tf.cast(images[:, 0], tf.int32))}


def test_evaluate_classifier_counts_labelled_rows_and_reports_top5_only_above_5_classes():
  strategy = tf.distribute.get_strategy()
  table = [[5, 4, 3, 2, 1, 0, -1], [0, 1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1, 0]]
  images = tf.constant([[0.0], [1.0], [2.0], [1.0]])
  labels = tf.one_hot([0, 0, 4, 3], 7) * tf.constant([[1.0], [1.0], [1.0], [0.0]])  # the last is unlabeled
  dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)
  result = metrics.evaluate_classifier(_FixedLogits(table), dataset, strategy, num_classes=7)
  # row 0: class 0 ranked 1st; row 1: class 0 ranked 7th; row 2: class 4 ranked 5th.
  assert result == {'eval/label_top_1_accuracy': 1 / 3, 'eval/label_top_5_accuracy': 2 / 3, 'eval/num_examples': 3}
  three = metrics.evaluate_classifier(_FixedLogits([[3, 2, 1], [1, 2, 3]]), tf.data.Dataset.from_tensor_slices(
      (tf.constant([[0.0], [1.0]]), tf.one_hot([0, 0], 3))).batch(2), strategy, num_classes=3)
  assert three == {'eval/label_top_1_accuracy': 0.5, 'eval/num_examples': 2}  # no top-5 of 3 classes


def test_write_results_keeps_what_it_does_not_recompute_and_says_what_changed(tmp_path):
  first = {'eval/label_top_1_accuracy': 0.5, 'linear_eval/top_1_accuracy': 0.3, 'global_step': 4}
  assert metrics.write_results(str(tmp_path), first, 4, str(tmp_path / 'eval')) == []
  events = glob.glob(str(tmp_path / 'eval' / 'events.out.tfevents.*'))
  assert len(events) == 1
  again = {'eval/label_top_1_accuracy': 0.5, 'global_step': 4}  # an evaluation without the linear evaluation
  assert metrics.write_results(str(tmp_path), again, 4, str(tmp_path / 'eval')) == []
  assert json.load(open(tmp_path / 'result_4.json')) == first  # nothing lost, nothing written
  assert glob.glob(str(tmp_path / 'eval' / 'events.out.tfevents.*')) == events
  second = {'eval/label_top_1_accuracy': 0.6, 'global_step': 4}
  assert metrics.write_results(str(tmp_path), second, 4, str(tmp_path / 'eval')) == ['eval/label_top_1_accuracy']
  for name in ('result.json', 'result_4.json'):
    assert json.load(open(tmp_path / name)) == {**first, **second}
