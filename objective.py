"""The losses: SimCLR's contrastive loss (NT-Xent), the supervised loss and SimCLRv2's distillation loss
(train.make_train_step combines them for each training mode). Temperatures are > 0: config.validate checks
--temperature and --distill_temperature.

NT-Xent (SimCLR eq. 1): for a positive pair (i, j) of views of one image, with s = cosine similarity,
    l(i, j) = -log( exp(s(z_i, z_j) / t) / sum_{k != i} exp(s(z_i, z_k) / t) ),
where k runs over the 2N views of the *global* batch. The loss below is, as in the authors' code, the mean over
the local images of l(view1 -> view2) + l(view2 -> view1).
"""

import tensorflow as tf


# Subtracted from self-similarity logits so a view is never its own negative (exp(-1e9) == 0 in float32).
LARGE_NUM = 1e9


def _replica_info() -> tuple[tf.distribute.ReplicaContext, int]:
  """(the current tf.distribute replica context, its number of replicas in sync)."""
  context = tf.distribute.get_replica_context()
  if context is None:
    raise ValueError('contrastive_loss must run in a replica context (inside strategy.run), not in '
                     'the cross-replica context.')
  return context, context.num_replicas_in_sync


def contrastive_loss(hidden: tf.Tensor, hidden_norm: bool = True, temperature: float = 1.0
                     ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """NT-Xent with negatives from every replica.

  Args:
    hidden: `[2N, d]` projection outputs of this replica, [view 1 of N images; view 2 of the same images].
    hidden_norm: L2-normalise `hidden` first (cosine similarity); the paper always does.
    temperature: the softmax temperature t.

  Returns:
    `(loss, logits_ab, labels)`: the scalar loss of this replica's N pairs; `logits_ab` `[N, N_global]`, the
    view-1-to-view-2 logits; `labels` `[N, 2 * N_global]`, one-hot on each positive. Summing
    `loss / num_replicas` over replicas gives the loss of the whole global batch on one device.
  """
  hidden = tf.cast(hidden, tf.float32)  # Logits and softmax in float32, also under mixed precision.
  if hidden_norm:
    hidden = tf.math.l2_normalize(hidden, -1)
  hidden1, hidden2 = tf.split(hidden, 2, 0)
  batch_size = tf.shape(hidden1)[0]

  context, num_replicas = _replica_info()
  if num_replicas > 1:
    # all_gather's gradient routes each replica's share of d(loss)/d(hidden_large) back to its owner.
    hidden1_large = context.all_gather(hidden1, axis=0)
    hidden2_large = context.all_gather(hidden2, axis=0)
    replica_id = tf.cast(tf.cast(context.replica_id_in_sync_group, tf.uint32), tf.int32)
    labels_idx = tf.range(batch_size) + replica_id * batch_size
  else:
    hidden1_large, hidden2_large = hidden1, hidden2
    labels_idx = tf.range(batch_size)
  enlarged_batch_size = tf.shape(hidden1_large)[0]
  labels = tf.one_hot(labels_idx, enlarged_batch_size * 2)
  masks = tf.one_hot(labels_idx, enlarged_batch_size)

  logits_aa = tf.matmul(hidden1, hidden1_large, transpose_b=True) / temperature - masks * LARGE_NUM
  logits_bb = tf.matmul(hidden2, hidden2_large, transpose_b=True) / temperature - masks * LARGE_NUM
  logits_ab = tf.matmul(hidden1, hidden2_large, transpose_b=True) / temperature
  logits_ba = tf.matmul(hidden2, hidden1_large, transpose_b=True) / temperature

  loss_a = tf.nn.softmax_cross_entropy_with_logits(labels, tf.concat([logits_ab, logits_aa], 1))
  loss_b = tf.nn.softmax_cross_entropy_with_logits(labels, tf.concat([logits_ba, logits_bb], 1))
  loss = tf.reduce_mean(loss_a + loss_b)
  return loss, logits_ab, labels


def supervised_loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
  """Mean softmax cross-entropy over the local batch; `labels` one-hot (or soft) `[B, C]`, logits float32."""
  logits = tf.cast(logits, tf.float32)
  return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(tf.cast(labels, tf.float32), logits))


def distillation_loss(teacher_logits: tf.Tensor, student_logits: tf.Tensor, temperature: float = 1.0) -> tf.Tensor:
  """SimCLRv2 eq. 3: -sum_y p_T(y; t) log p_S(y; t), both softmaxes at temperature t, mean over the batch."""
  teacher_probs = tf.nn.softmax(tf.cast(teacher_logits, tf.float32) / temperature)
  return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(
      teacher_probs, tf.cast(student_logits, tf.float32) / temperature))
