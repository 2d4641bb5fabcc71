"""Frozen-feature evaluation: logistic regression learns what is linearly there, nothing more; kNN votes."""

import numpy as np
import pytest
import tensorflow as tf

import linear_eval


def _blobs(n, d=16, classes=4, spread=0.5, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(classes, d)) * 2
  labels = rng.integers(0, classes, n)
  return (centres[labels] + rng.normal(size=(n, d)) * spread).astype(np.float32), labels


def test_separable_features_are_classified():
  x, y = _blobs(600)
  result = linear_eval.linear_eval(x[:400], y[:400], x[400:], y[400:], num_classes=4)
  assert result['top_1_accuracy'] > 0.95 and result['l2'] in (0.0, 1e-5, 1e-4, 1e-3, 1e-2)


def test_labels_unrelated_to_features_stay_at_chance():
  x, _ = _blobs(800, seed=1)
  y = np.random.default_rng(2).integers(0, 4, 800)
  result = linear_eval.linear_eval(x[:600], y[:600], x[600:], y[600:], num_classes=4)
  assert result['top_1_accuracy'] < 0.4  # chance is 0.25


def test_logistic_regression_matches_a_numpy_fit_on_a_tiny_problem():
  x = np.array([[0.0], [1.0], [2.0], [3.0]], np.float32)
  y = np.array([0, 0, 1, 1])
  predict = linear_eval.fit_logistic_regression(x, y, 2, l2=0.0, steps=500)
  assert list(predict(x).argmax(1)) == [0, 0, 1, 1]


def test_extract_features_drops_unlabeled_rows():
  class Model:
    def __call__(self, images, training):
      assert not training
      return {'final_avg_pool': tf.reduce_mean(images, axis=[1, 2])}

  images = tf.random.uniform([6, 4, 4, 3])
  one_hot = tf.constant([[1., 0.], [0., 1.], [0., 0.], [1., 0.], [0., 0.], [0., 1.]])
  dataset = tf.data.Dataset.from_tensor_slices((images, one_hot)).batch(4)
  features, labels = linear_eval.extract_features(Model(), dataset)
  assert features.shape == (4, 3) and labels.tolist() == [0, 1, 0, 1]
  np.testing.assert_allclose(features[0], images[0].numpy().mean((0, 1)), rtol=1e-5)
  with pytest.raises(ValueError, match='two classes'):
    linear_eval.linear_eval(features, np.zeros(4, int), features, np.zeros(4, int), 2)


def _knn_reference(bank, bank_labels, query, num_classes, k, temperature):
  """The InstDisc rule written out per query."""
  bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
  scores = np.zeros((len(query), num_classes))
  for i, q in enumerate(query):
    similarity = bank @ (q / np.linalg.norm(q))
    for j in np.argsort(-similarity)[:k]:
      scores[i, bank_labels[j]] += np.exp(similarity[j] / temperature)
  return scores


@pytest.mark.parametrize('k, temperature', [(1, 0.1), (5, 0.1), (20, 0.5), (200, 0.1)])
def test_knn_matches_reference(k, temperature):
  x, y = _blobs(120, d=8, classes=3, spread=2.0, seed=3)
  scores = linear_eval.knn_predict(x[:100], y[:100], x[100:], 3, k=k, temperature=temperature, chunk_size=7)
  np.testing.assert_allclose(scores, _knn_reference(x[:100], y[:100], x[100:], 3, k, temperature), rtol=1e-4)


def test_knn_accuracy_separable_vs_random_labels():
  x, y = _blobs(700, spread=0.5)
  assert linear_eval.knn_eval(x[:500], y[:500], x[500:], y[500:], 4)['top_1_accuracy'] > 0.95
  shuffled = np.random.default_rng(0).permutation(y)
  assert linear_eval.knn_eval(x[:500], shuffled[:500], x[500:], shuffled[500:], 4)['top_1_accuracy'] < 0.4
  with pytest.raises(ValueError, match='temperature'):
    linear_eval.knn_predict(x, y, x, 4, temperature=0.0)


def test_linear_eval_agrees_with_scikit_learns_logistic_regression():
  """An independent reference: scikit-learn's L-BFGS multinomial logistic regression on the same standardised
  features, its C chosen on the same held-out split, reaches the same test accuracy (overlapping classes, so
  the accuracy is far from both chance and 1)."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  from sklearn.preprocessing import StandardScaler  # pylint: disable=g-import-not-at-top
  x, y = _blobs(3000, d=32, classes=10, spread=6.0, seed=3)
  x_train, y_train, x_test, y_test = x[:2000], y[:2000], x[2000:], y[2000:]
  ours = linear_eval.linear_eval(x_train, y_train, x_test, y_test, num_classes=10)['top_1_accuracy']
  order = np.random.default_rng(0).permutation(2000)
  held_out, fit = order[:400], order[400:]
  fitted = lambda c, rows: LogisticRegression(C=c, max_iter=2000).fit(
      StandardScaler().fit(x_train[rows]).transform(x_train[rows]), y_train[rows])
  best_c = max((0.01, 0.1, 1.0, 10.0), key=lambda c: fitted(c, fit).score(
      StandardScaler().fit(x_train[fit]).transform(x_train[held_out]), y_train[held_out]))
  scaler = StandardScaler().fit(x_train)
  reference = fitted(best_c, np.arange(2000)).score(scaler.transform(x_test), y_test)
  assert 0.3 < reference < 0.9, reference
  assert abs(ours - reference) < 0.02, (ours, reference)


def test_an_l2_grid_fitted_side_by_side_equals_one_fit_each():
  x, y = _blobs(500, d=8, classes=3, spread=1.5, seed=4)
  together = linear_eval.fit_logistic_regression(x, y, 3, l2=[0.0, 1e-2, 1.0], steps=100)
  for l2, predict in zip((0.0, 1e-2, 1.0), together):
    alone = linear_eval.fit_logistic_regression(x, y, 3, l2=l2, steps=100)(x)
    np.testing.assert_allclose(predict(x), alone, atol=1e-4 * np.abs(alone).max())
  assert np.abs(together[2](x)).max() < 0.5 * np.abs(together[0](x)).max()  # the penalty did act
