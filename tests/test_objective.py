"""NT-Xent against a numpy reference, and replica-split invariance on 2 logical CPU devices."""

import numpy as np
import pytest
import tensorflow as tf

import objective


def nt_xent_reference(hidden, hidden_norm=True, temperature=1.0):
  """Straight from SimCLR eq. 1: mean over images of l(2k-1, 2k) + l(2k, 2k-1), with 2N-1 candidates each."""
  hidden = np.asarray(hidden, np.float64)
  if hidden_norm:
    hidden = hidden / np.maximum(np.linalg.norm(hidden, axis=1, keepdims=True), 1e-12)
  n = hidden.shape[0] // 2
  sim = hidden @ hidden.T / temperature
  total = 0.0
  for i in range(2 * n):
    j = (i + n) % (2 * n)  # positive: same image, other view
    others = [k for k in range(2 * n) if k != i]
    log_denominator = np.log(np.sum(np.exp(sim[i, others] - sim[i, others].max()))) + sim[i, others].max()
    total += log_denominator - sim[i, j]
  return total / n


@pytest.mark.parametrize('n, d, temperature, hidden_norm', [
    (1, 4, 1.0, True), (4, 8, 0.5, True), (7, 3, 0.1, True), (16, 128, 0.2, True), (5, 6, 1.0, False),
    (8, 16, 0.5, False)])
def test_contrastive_loss_matches_numpy_reference(n, d, temperature, hidden_norm):
  rng = np.random.default_rng(n * 100 + d)
  scale = 1.0 if hidden_norm else 0.3  # keep unnormalised logits in a range float32 handles exactly enough
  hidden = (rng.normal(size=(2 * n, d)) * scale).astype(np.float32)
  loss, logits_ab, labels = objective.contrastive_loss(
      tf.constant(hidden), hidden_norm=hidden_norm, temperature=temperature)
  np.testing.assert_allclose(loss.numpy(), nt_xent_reference(hidden, hidden_norm, temperature), rtol=1e-5)
  assert logits_ab.shape == (n, n)
  np.testing.assert_array_equal(labels.numpy(), np.eye(n, 2 * n))


def test_perfect_pairs_give_low_loss_and_random_pairs_about_log_2n_minus_1():
  n, d = 32, 64
  rng = np.random.default_rng(0)
  views = rng.normal(size=(n, d)).astype(np.float32)
  identical, _, _ = objective.contrastive_loss(tf.constant(np.concatenate([views, views])),
                                                   temperature=0.05)
  assert identical.numpy() < 0.01
  # At t -> infinity every candidate is equally likely: each direction costs log(2N - 1).
  random, _, _ = objective.contrastive_loss(tf.constant(rng.normal(size=(2 * n, d)).astype(np.float32)),
                                                temperature=1e4)
  np.testing.assert_allclose(random.numpy(), 2 * np.log(2 * n - 1), rtol=1e-4)


def test_supervised_loss_matches_numpy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(6, 5)).astype(np.float32)
  labels = np.eye(5, dtype=np.float32)[rng.integers(0, 5, size=6)]
  log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  expected = -(labels * log_probs).sum(1).mean()
  np.testing.assert_allclose(objective.supervised_loss(labels, logits).numpy(), expected, rtol=1e-6)


def test_two_replicas_equal_one_replica_loss_and_gradients(two_replica_strategy):
  """The global batch split over 2 replicas gives the 1-device loss, gradients, and per-replica labels."""
  n_per_replica, d, temperature = 4, 8, 0.3
  rng = np.random.default_rng(2)
  # Each replica's [view1; view2] block; the 1-device batch is [all view1; all view2].
  blocks = [rng.normal(size=(2 * n_per_replica, d)).astype(np.float32) for _ in range(2)]
  view1 = np.concatenate([b[:n_per_replica] for b in blocks])
  view2 = np.concatenate([b[n_per_replica:] for b in blocks])
  single = tf.Variable(np.concatenate([view1, view2]))
  with tf.GradientTape() as tape:
    loss_single, _, _ = objective.contrastive_loss(single, temperature=temperature)
  grad_single = tape.gradient(loss_single, single).numpy()

  strategy = two_replica_strategy
  hidden_per_replica = strategy.experimental_distribute_values_from_function(
      lambda context: tf.constant(blocks[context.replica_id_in_sync_group]))

  @tf.function
  def replica_step(hidden):
    context = tf.distribute.get_replica_context()
    with tf.GradientTape() as tape:
      tape.watch(hidden)
      loss, logits_ab, labels = objective.contrastive_loss(hidden, temperature=temperature)
      scaled = loss / context.num_replicas_in_sync
    return loss, tape.gradient(scaled, hidden), logits_ab, labels

  losses, grads, logits, labels = strategy.run(replica_step, args=(hidden_per_replica,))
  per_replica = lambda value: [t.numpy() for t in strategy.experimental_local_results(value)]
  np.testing.assert_allclose(np.mean(per_replica(losses)), loss_single.numpy(), rtol=1e-6)
  # Gradients w.r.t. each replica's views, rearranged into the 1-device order.
  grad_blocks = per_replica(grads)
  grad_two = np.concatenate([g[:n_per_replica] for g in grad_blocks] + [g[n_per_replica:] for g in grad_blocks])
  np.testing.assert_allclose(grad_two, grad_single, rtol=1e-5, atol=1e-7)
  # Replica 1's positives sit at columns 4..7 of the gathered batch of 8, i.e. labels are offset.
  labels_1 = per_replica(labels)[1]
  np.testing.assert_array_equal(labels_1, np.eye(8, 16)[n_per_replica:2 * n_per_replica])
  assert per_replica(logits)[1].shape == (n_per_replica, 2 * n_per_replica)


@pytest.mark.parametrize('temperature', [0.5, 1.0, 2.0])
def test_distillation_loss_matches_numpy(temperature):
  rng = np.random.default_rng(int(temperature * 10))
  teacher, student = rng.normal(size=(6, 5)) * 3, rng.normal(size=(6, 5)) * 3
  softmax = lambda z: np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)
  expected = np.mean(-np.sum(softmax(teacher / temperature) * np.log(softmax(student / temperature)), axis=1))
  loss = objective.distillation_loss(tf.constant(teacher, tf.float32), tf.constant(student, tf.float32), temperature)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  # Minimal (the teacher's entropy) when the student equals the teacher.
  same = float(objective.distillation_loss(teacher, teacher, temperature))
  assert same < float(loss)
