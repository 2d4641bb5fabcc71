"""Training and evaluation metrics of SimCLR, and where they go: TensorBoard and result.json.

The contrastive accuracy (is the positive the most similar view-2 of all?) and entropy (how peaked the
similarity distribution is) are the cheap health signals of pretraining: accuracy near chance and entropy
near log(N) after warmup mean the representation is not learning.
"""

import json
import os

from absl import logging
import tensorflow as tf


def contrastive_accuracy(logits_ab, labels):
  """Fraction of view-1 rows whose most similar view-2 row is their own positive.

  `logits_ab` is `[N, N_global]`, `labels` `[N, 2 * N_global]` as returned by `objective.add_contrastive_loss`
  (positives lie in its first half).
  """
  hits = tf.equal(tf.argmax(labels, 1), tf.argmax(logits_ab, 1))
  return tf.reduce_mean(tf.cast(hits, tf.float32))


def contrastive_entropy(logits_ab):
  """Mean entropy (nats) of softmax(logits_ab) over rows."""
  probs = tf.nn.softmax(tf.cast(logits_ab, tf.float32))
  return -tf.reduce_mean(tf.reduce_sum(probs * tf.math.log(probs + 1e-8), -1))


def top_k_accuracy(labels, logits, k=1):
  """Fraction of rows whose true class (argmax of one-hot `labels`, or integer labels) is in the top k."""
  labels = tf.convert_to_tensor(labels)
  if labels.shape.rank == 2:
    labels = tf.argmax(labels, 1)
  hits = tf.math.in_top_k(tf.cast(labels, tf.int32), tf.cast(logits, tf.float32), k)
  return tf.reduce_mean(tf.cast(hits, tf.float32))


def log_and_write_metrics(metrics, step, writer=None):
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


def _write_scalars(values, step):
  for name, value in values.items():
    tf.summary.scalar(name, value, step=step)


def evaluate_classifier(model, dataset, strategy, num_classes, max_batches=0):
  """Top-1 accuracy of the model's `logits_sup` on a distributed dataset of (images, one-hot labels), and
  top-5 when there are more than 5 classes (else it is 1 by construction); unlabeled rows do not count.
  Returns {'eval/label_top_k_accuracy': ..., 'eval/num_examples': n}; `max_batches` > 0 stops early."""
  ks = [1] + ([5] if num_classes > 5 else [])

  def replica_step(images, labels):
    logits = model(images, training=False)['logits_sup']
    weights = tf.reduce_sum(labels, 1)
    true = tf.argmax(labels, 1, output_type=tf.int32)
    hits = [tf.reduce_sum(tf.cast(tf.math.in_top_k(true, logits, k), tf.float32) * weights) for k in ks]
    return tf.stack(hits + [tf.reduce_sum(weights)])

  @tf.function
  def step(images, labels):
    return strategy.reduce('SUM', strategy.run(replica_step, args=(images, labels)), axis=None)

  totals = tf.zeros([len(ks) + 1])
  for index, (images, labels) in enumerate(dataset):
    if max_batches and index >= max_batches:
      break
    totals += step(images, labels)
  *hits, count = (float(t) for t in totals.numpy())
  result = {f'eval/label_top_{k}_accuracy': h / max(count, 1) for k, h in zip(ks, hits)}
  return {**result, 'eval/num_examples': int(count)}


def write_results(model_dir, result, step, eval_dir):
  """`result` to model_dir/result.json and result_<step>.json and its `eval/` values to TensorBoard in
  `eval_dir`, merged into an earlier result of the same step (whose other keys, e.g. the linear evaluation
  after pretraining, stay). Returns the keys whose values changed; nothing is written when none did."""
  path = os.path.join(model_dir, f'result_{step}.json')
  previous = {}
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      previous = json.load(f)
  changed = sorted(k for k in set(previous) & set(result) if previous[k] != result[k])
  if previous and not changed and set(result) <= set(previous):
    return []
  with tf.summary.create_file_writer(eval_dir).as_default():
    _write_scalars({k: v for k, v in result.items() if k.startswith('eval/')}, step)
  for name in ('result.json', f'result_{step}.json'):
    with tf.io.gfile.GFile(os.path.join(model_dir, name), 'w') as f:
      json.dump({**previous, **result}, f, indent=1)
  return changed
