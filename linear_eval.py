"""Evaluation on frozen features: L2-regularised multinomial logistic regression, and weighted kNN.

The protocol of SimCLR's transfer experiments (appendix B.8): features of the frozen network (BatchNorm in
inference mode, eval preprocessing), a softmax classifier fitted on them, the L2 strength chosen on a
held-out part of the training features. It needs no augmentation and no second training run, so it measures
an encoder in seconds on small datasets -- and it measures a random encoder the same way, which is the
baseline a representation has to beat. The kNN classifier needs no fitting at all, so it is cheap enough to
monitor pretraining with.
"""

import typing

import keras
import numpy as np
import tensorflow as tf


def extract_features(model: keras.Model, dataset: tf.data.Dataset,
                     endpoint: str = 'final_avg_pool') -> tuple[np.ndarray, np.ndarray]:
  """(features [N, D] float32, integer labels [N]) of `model`'s `endpoint` over `dataset` of
  (images, one-hot labels) batches; unlabeled examples (all-zero rows) are dropped. A part of a split is chosen
  by the dataset (`data.sample_ids`), not by stopping early: a split's first examples need not represent it."""
  @tf.function
  def forward(images):
    return model(images, training=False)[endpoint]

  features, labels = [], []
  for images, one_hot in dataset:
    keep = tf.reduce_sum(one_hot, axis=1) > 0
    features.append(tf.boolean_mask(forward(images), keep).numpy())
    labels.append(tf.boolean_mask(tf.argmax(one_hot, axis=1), keep).numpy())
  return np.concatenate(features), np.concatenate(labels)


def fit_logistic_regression(
    features: np.ndarray, labels: np.ndarray, num_classes: int,
    l2: typing.Union[float, typing.Sequence[float]] = 1e-4, steps: int = 300, learning_rate: float = 0.05
) -> typing.Union[typing.Callable[[np.ndarray], np.ndarray], list[typing.Callable[[np.ndarray], np.ndarray]]]:
  """Softmax regression on standardised features, full-batch Adam; returns a `predict(features)` function.

  `l2` may be a sequence: one classifier per value, fitted side by side as one wider product (the same
  result as one fit each, since Adam moves every weight by its own gradients, in a fraction of the time);
  then a list of `predict` functions, in its order.
  """
  l2s = np.atleast_1d(np.asarray(l2, np.float32))
  grid = len(l2s)
  mean = features.mean(0, keepdims=True)
  std = features.std(0, keepdims=True) + 1e-6
  x = tf.constant((features - mean) / std, tf.float32)
  y = tf.tile(tf.one_hot(labels, num_classes)[:, None, :], [1, grid, 1])
  w = keras.Variable(np.zeros([x.shape[1], grid * num_classes], np.float32))
  b = keras.Variable(np.zeros([grid * num_classes], np.float32))
  optimizer = keras.optimizers.Adam(learning_rate)
  optimizer.build([w, b])

  @tf.function
  def fit():  # every step in one call: a Python round trip per step cost more than the step
    for _ in tf.range(steps):
      with tf.GradientTape() as tape:
        logits = tf.reshape(tf.matmul(x, w) + b, [-1, grid, num_classes])
        cross_entropy = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(y, logits), axis=0)
        penalty = tf.reduce_sum(tf.square(tf.reshape(w, [-1, grid, num_classes])), axis=[0, 2])
        loss = tf.reduce_sum(cross_entropy + l2s * penalty)
      optimizer.apply_gradients(zip(tape.gradient(loss, [w, b]), [w, b]))

  fit()
  w_value = w.numpy().reshape([-1, grid, num_classes])
  b_value = b.numpy().reshape([grid, num_classes])
  predicts = [lambda f, g=g: ((f - mean) / std) @ w_value[:, g] + b_value[g] for g in range(grid)]
  return predicts if np.ndim(l2) else predicts[0]


def linear_eval(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                test_labels: np.ndarray, num_classes: int,
                l2_grid: typing.Sequence[float] = (0.0, 1e-5, 1e-4, 1e-3, 1e-2), validation_fraction: float = 0.2,
                seed: int = 0) -> dict:
  """Top-1 accuracy on the test features of a classifier whose L2 is chosen on held-out train features."""
  if len(np.unique(train_labels)) < 2:
    raise ValueError('Linear evaluation needs at least two classes in the training features.')
  order = np.random.default_rng(seed).permutation(len(train_labels))
  held_out = order[:int(len(order) * validation_fraction)]
  fit_part = order[len(held_out):]
  accuracy = lambda predict, f, y: float(np.mean(predict(f).argmax(1) == y))
  candidates = fit_logistic_regression(train_features[fit_part], train_labels[fit_part], num_classes,
                                       list(l2_grid))
  scores = {l2: accuracy(predict, train_features[held_out], train_labels[held_out])
            for l2, predict in zip(l2_grid, candidates)}
  best_l2 = max(scores, key=lambda l2: (scores[l2], l2))
  predict = fit_logistic_regression(train_features, train_labels, num_classes, best_l2)
  return {'top_1_accuracy': accuracy(predict, test_features, test_labels), 'l2': best_l2,
          'validation_accuracy': scores[best_l2]}


def knn_predict(bank_features: np.ndarray, bank_labels: np.ndarray, query_features: np.ndarray, num_classes: int,
                k: int = 200, temperature: float = 0.1, chunk_size: int = 1024) -> np.ndarray:
  """Class scores `[Q, C]` of weighted kNN on cosine similarity (Wu et al. 2018, "Unsupervised Feature Learning
  via Non-Parametric Instance Discrimination"; the monitor of lightly and solo-learn): each of the `k` most
  similar bank features votes for its label with weight exp(similarity / temperature)."""
  if k < 1 or temperature <= 0:
    raise ValueError(f'k must be >= 1 and temperature > 0, got k={k}, temperature={temperature}.')
  bank = tf.math.l2_normalize(tf.constant(bank_features, tf.float32), axis=1)
  labels = tf.constant(bank_labels, tf.int64)
  k = min(k, len(bank_labels))
  scores = []
  for start in range(0, len(query_features), chunk_size):  # bounds the [chunk, N] similarity matrix
    query = tf.math.l2_normalize(tf.constant(query_features[start:start + chunk_size], tf.float32), axis=1)
    similarity, index = tf.math.top_k(tf.matmul(query, bank, transpose_b=True), k)
    votes = tf.one_hot(tf.gather(labels, index), num_classes) * tf.exp(similarity / temperature)[..., None]
    scores.append(tf.reduce_sum(votes, axis=1).numpy())
  return np.concatenate(scores)


def knn_eval(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
             test_labels: np.ndarray, num_classes: int, k: int = 200, temperature: float = 0.1) -> dict:
  """Top-1 accuracy of `knn_predict` with the training features as the bank."""
  scores = knn_predict(train_features, train_labels, test_features, num_classes, k, temperature)
  return {'top_1_accuracy': float(np.mean(scores.argmax(1) == test_labels))}
