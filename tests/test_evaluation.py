"""evaluation.py: classifier evaluation counts what it should."""

import tensorflow as tf

import evaluation


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
  result = evaluation.evaluate_classifier(_FixedLogits(table), dataset, strategy, num_classes=7)
  # row 0: class 0 ranked 1st; row 1: class 0 ranked 7th; row 2: class 4 ranked 5th.
  assert result == {'eval/label_top_1_accuracy': 1 / 3, 'eval/label_top_5_accuracy': 2 / 3, 'eval/num_examples': 3}
  three = evaluation.evaluate_classifier(_FixedLogits([[3, 2, 1], [1, 2, 3]]), tf.data.Dataset.from_tensor_slices(
      (tf.constant([[0.0], [1.0]]), tf.one_hot([0, 0], 3))).batch(2), strategy, num_classes=3)
  assert three == {'eval/label_top_1_accuracy': 0.5, 'eval/num_examples': 2}  # no top-5 of 3 classes
