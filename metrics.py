"""Training metrics of SimCLR, and how they reach TensorBoard and the log.

The contrastive accuracy (is the positive the most similar view-2 of all?) and entropy (how peaked the
similarity distribution is) are the cheap health signals of pretraining: accuracy near chance and entropy
near log(N) after warmup mean the representation is not learning.
"""

import typing

from absl import logging
import tensorflow as tf

# The names of the training values, as TensorBoard and the logs show them: declared here only.
TOTAL_LOSS = 'train/total_loss'
WEIGHT_DECAY = 'train/weight_decay'
CONTRAST_LOSS = 'train/contrast_loss'
CONTRAST_ACC = 'train/contrast_acc'
CONTRAST_ENTROPY = 'train/contrast_entropy'
DISTILL_LOSS = 'train/distill_loss'
TEACHER_AGREEMENT = 'train/teacher_agreement'
SUPERVISED_LOSS = 'train/supervised_loss'
SUPERVISED_ACC = 'train/supervised_acc'
LEARNING_RATE = 'train/learning_rate'
KNN_TOP_1 = 'knn/top_1_accuracy'

# (metric, progress-line label, format) in the order the progress line shows them. Pretraining leads with the
# contrastive loss, what it optimises; the online linear head's `loss` / `acc` are shown as `head_loss` /
# `head_acc` there (progress.Progress).
COLUMNS = (
    (CONTRAST_LOSS, 'contrast_loss', '.3f'),
    (CONTRAST_ACC, 'contrast_acc', '.3f'),
    (DISTILL_LOSS, 'distill_loss', '.3f'),
    (TEACHER_AGREEMENT, 'teacher_agreement', '.3f'),
    (SUPERVISED_LOSS, 'loss', '.3f'),
    (SUPERVISED_ACC, 'acc', '.3f'),
    (KNN_TOP_1, 'knn_top1', '.3f'),
)


def contrastive_accuracy(logits_ab: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
  """Fraction of view-1 rows whose most similar view-2 row is their own positive.

  `logits_ab` is `[N, N_global]`, `labels` `[N, 2 * N_global]` as returned by `objective.contrastive_loss`
  (positives lie in its first half).
  """
  hits = tf.equal(tf.argmax(labels, 1), tf.argmax(logits_ab, 1))
  return tf.reduce_mean(tf.cast(hits, tf.float32))


def contrastive_entropy(logits_ab: tf.Tensor) -> tf.Tensor:
  """Mean entropy (nats) of softmax(logits_ab) over rows (`logits_ab`: `[N, N_global]`)."""
  probs = tf.nn.softmax(tf.cast(logits_ab, tf.float32))
  return -tf.reduce_mean(tf.reduce_sum(probs * tf.math.log(probs + 1e-8), -1))


def top_k_accuracy(labels: tf.Tensor, logits: tf.Tensor, k: int = 1) -> tf.Tensor:
  """Fraction of rows whose true class (argmax of one-hot `labels`, or integer labels) is in the top k."""
  labels = tf.convert_to_tensor(labels)
  if labels.shape.rank == 2:
    labels = tf.argmax(labels, 1)
  hits = tf.math.in_top_k(tf.cast(labels, tf.int32), tf.cast(logits, tf.float32), k)
  return tf.reduce_mean(tf.cast(hits, tf.float32))


def log_and_write_metrics(metrics: typing.Iterable[typing.Any], step: int,
                          writer: typing.Optional[tf.summary.SummaryWriter] = None) -> dict[str, float]:
  """Logs each metric's result, writes it as a TensorBoard scalar, and returns {name: float}.

  Args:
    metrics: iterable of Keras metrics (anything with `.name` and `.result()`).
    step: global step for the summaries and the log line.
    writer: a `tf.summary` writer; None uses the default writer, if any is set.
  """
  values = {metric.name: float(metric.result()) for metric in metrics}
  if writer is not None:
    with writer.as_default():
      _write_scalars(values, step)
  else:
    _write_scalars(values, step)
  for name, value in values.items():
    logging.info('Step: [%d] %s = %f', step, name, value)
  return values


def _write_scalars(values: dict[str, float], step: int) -> None:
  for name, value in values.items():
    tf.summary.scalar(name, value, step=step)
