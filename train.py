"""Training, top to bottom: the model and optimizer of a run, one step, the compiled inner loop of steps, and the
outer loop with its progress, signals and checkpoints.

As in the authors' code (and Orbit's Controller), steps run inside a `tf.function` loop -- one host round trip
per loop, not per step -- and between loops the host writes summaries, progress and checkpoints. Loops end at
every checkpoint, monitor and summary step, and otherwise last about `TARGET_SECONDS` at the measured speed, so
progress appears every half minute whatever the checkpoint interval, at a cost far below 1% of the step time.
The losses are objective.py's; SIGTERM / SIGINT are signals.py's.
"""

import math
import shutil
import tempfile
import time

from absl import logging
import keras
import tensorflow as tf

import config as config_lib
import data as data_lib
import evaluation
import metrics as metrics_lib
import model as model_lib
import model_io
import objective
import progress
import rundir
import signals

TARGET_SECONDS = 30.0
FIRST_LOOP_STEPS = 5  # the first loop also compiles; the second measures the speed


# ------------------------------------------------------------------------------------------- model and optimizer


def build_training(cfg, strategy, num_classes, num_examples):
  """Model, optimizer and learning-rate schedule, with all variables created (call in strategy.scope())."""
  o = cfg.optim
  model = model_lib.build(cfg, num_classes, strategy.num_replicas_in_sync)
  schedule = model_lib.WarmUpAndCosineDecay(
      o.learning_rate, num_examples, o.train_batch_size, o.warmup_epochs, o.train_epochs, o.train_steps or None,
      o.learning_rate_scaling)
  optimizer = model_lib.build_optimizer(o.optimizer, schedule, o.momentum, o.weight_decay, cfg.model.precision)
  # Built here, not lazily inside the first (distributed) tf.function call, where Keras 3 fails to create its
  # slots ("You must feed a value for placeholder tensor ... fn_with_cond").
  optimizer.build(model.trainable_variables)
  return model, optimizer, schedule


def initialise_from(cfg, model, file, num_classes):
  """Fine-tuning, linear evaluation or pretraining from a model file: encoder and projection head, and the
  supervised head where it fits (same classes, same input); else the head is new (logged)."""
  m = cfg.model
  keep = model.supervised_head is not None and file.architecture.head_fits(
      num_classes, cfg.run.train_mode, m.ft_proj_selector, m.linear_eval_endpoint)
  count = model_io.restore(model, file, supervised_head=keep)
  progress.status(f'Initialised from {file.describe()} ({count} variables).')
  if model.supervised_head is not None and not keep:
    theirs = f' (the file\'s: {file.architecture.describe().split(", ")[-1]})' if file.architecture.num_classes else ''
    progress.status(f'Supervised head: new, {num_classes} classes{theirs}' +
                    (', zero-initialised.' if m.zero_init_logits_layer else '.'))
  if m.zero_init_logits_layer and model.supervised_head is not None:
    for variable in model.supervised_head.trainable_variables:
      variable.assign(tf.zeros_like(variable))


def load_teacher(cfg, strategy, file):
  """`teacher(images) -> logits` from the --teacher file (its own network; the model flags are the student's)."""
  teacher = model_io.load(cfg, strategy, file, role='Teacher:')
  return lambda images: teacher(images, training=False)['logits_sup']


# ------------------------------------------------------------------------------------------- the step


def make_train_step(optim, train_mode, model, optimizer, strategy, teacher=None):
  """One SimCLR step on one replica (the paper's Algorithm 1, plus the online linear head), or one
  fine-tuning / linear-evaluation / distillation step (`teacher(images) -> logits` for the latter), with the
  losses, optimizer and compilation of `optim` (an OptimConfig).

  Returns `train_step(images, one_hot_labels) -> {metric name: value}`, to be run with `strategy.run`.
  With --jit_compile the forward and backward pass are one XLA computation; the update (which synchronizes
  replicas through the optimizer) stays outside it.
  """
  supervised = model.supervised_head is not None

  def forward_backward(images, labels):
    with tf.GradientTape() as tape:
      outputs = model(images, training=True)
      loss = 0.0
      values = {}
      if train_mode == 'pretrain':
        # NT-Xent on the projections of both views, negatives from every replica.
        contrast_loss, logits_ab, labels_ab = objective.add_contrastive_loss(
            outputs['proj_head_output'], hidden_norm=optim.hidden_norm, temperature=optim.temperature)
        loss += contrast_loss
        values.update({'train/contrast_loss': contrast_loss,
                       'train/contrast_acc': metrics_lib.contrastive_accuracy(logits_ab, labels_ab),
                       'train/contrast_entropy': metrics_lib.contrastive_entropy(logits_ab)})
        labels = tf.concat([labels, labels], 0)  # the linear head sees both views
      supervised_weight = 1.0
      if train_mode == 'distill':
        # SimCLRv2 eq. 3: cross-entropy to the teacher's temperature-softened predictions.
        teacher_logits = tf.stop_gradient(tf.cast(teacher(images), tf.float32))
        distill_loss = objective.add_distillation_loss(teacher_logits, outputs['logits_sup'],
                                                       optim.distill_temperature)
        loss += distill_loss
        values.update({'train/distill_loss': distill_loss,
                       'train/teacher_agreement': metrics_lib.top_k_accuracy(
                           tf.one_hot(tf.argmax(teacher_logits, 1), teacher_logits.shape[-1]),
                           outputs['logits_sup'], 1)})
        supervised_weight = optim.distill_alpha
      if supervised and supervised_weight:
        supervised_loss = objective.add_supervised_loss(labels, outputs['logits_sup'])
        loss += supervised_weight * supervised_loss
        values.update({'train/supervised_loss': supervised_loss,
                       'train/supervised_acc': metrics_lib.top_k_accuracy(labels, outputs['logits_sup'], 1)})
      weight_decay = model_lib.weight_decay_loss(model.trainable_variables, optim.weight_decay, optim.optimizer)
      loss += weight_decay
      values.update({'train/total_loss': loss, 'train/weight_decay': weight_decay})
      # Gradients are summed over replicas, so each replica contributes its share of the mean; under
      # mixed_float16 the loss is also scaled up (the optimizer scales the gradients back).
      scaled_loss = optimizer.scale_loss(loss / strategy.num_replicas_in_sync)
    return tape.gradient(scaled_loss, model.trainable_variables), values

  if optim.jit_compile:
    forward_backward = tf.function(forward_backward, jit_compile=True)

  def train_step(images, labels):
    grads, values = forward_backward(images, labels)
    # Fine-tuning from an early projection layer leaves the later ones without gradient: skip them.
    optimizer.apply_gradients([(g, v) for g, v in zip(grads, model.trainable_variables) if g is not None])
    return values

  return train_step


def metric_names(train_mode, model, distill_alpha=0.0):
  """The names of the values `make_train_step` returns."""
  names = ['train/total_loss', 'train/weight_decay']
  if train_mode == 'pretrain':
    names += ['train/contrast_loss', 'train/contrast_acc', 'train/contrast_entropy']
  if train_mode == 'distill':
    names += ['train/distill_loss', 'train/teacher_agreement']
  if model.supervised_head is not None and (train_mode != 'distill' or distill_alpha):
    names += ['train/supervised_loss', 'train/supervised_acc']
  return names


# ------------------------------------------------------------------------------------------- the outer loop


def next_loop_steps(step, train_steps, intervals, seconds_per_step, target_seconds=TARGET_SECONDS):
  """Steps of the next inner loop: to the next multiple of any interval (checkpoint, monitor, summary) or the
  end of training, and at most ~`target_seconds` at `seconds_per_step` (`FIRST_LOOP_STEPS` before it is known)."""
  boundary = min([train_steps] + [(step // k + 1) * k for k in intervals if k and k > 0])
  longest = FIRST_LOOP_STEPS if seconds_per_step is None else max(1, int(target_seconds / seconds_per_step))
  return max(1, min(boundary - step, longest))


def run_loops(inner_loop, *, current_step, train_steps, checkpoint_every, intervals, after_loop, save, stop=None,
              target_seconds=TARGET_SECONDS):
  """Runs `inner_loop(steps)` until `current_step()` reaches `train_steps`.

  `inner_loop` returns whether it stopped early on the (agreed) stop flag -- with several workers, possibly
  raised by another worker's signal. After each loop `after_loop(previous_step, step, seconds)` (summaries,
  progress, monitors); `save(step)` at every multiple of `checkpoint_every`, at the end, and after a stop --
  then raises `signals.Stopped`.
  """
  step = current_step()
  seconds_per_step = None
  loops = 0
  while step < train_steps:
    steps = next_loop_steps(step, train_steps, (checkpoint_every,) + tuple(intervals), seconds_per_step,
                            target_seconds)
    start = time.perf_counter()
    stopped = bool(inner_loop(steps)) or (stop is not None and stop.requested)
    seconds = time.perf_counter() - start
    previous, step = step, current_step()
    loops += 1
    if loops > 1 and step > previous:  # the first loop includes compilation
      seconds_per_step = seconds / (step - previous)
    if step > previous:
      after_loop(previous, step, seconds)
    if stopped or step == train_steps or step // checkpoint_every > previous // checkpoint_every:
      save(step)
    if stopped:
      raise signals.Stopped(stop.received if stop is not None and stop.received else "another worker's signal",
                            step)


# ------------------------------------------------------------------------------------------- a training run


def training_examples(cfg, source):
  """(number of training examples, ids of the label-fraction subset or None) for these settings."""
  d = cfg.data
  if cfg.run.train_mode in config_lib.LABELED_MODES and d.label_fraction < 1:
    subset_ids = data_lib.label_fraction_subset(source, d.train_split, d.label_fraction, d.label_fraction_seed)
    return len(subset_ids), subset_ids
  return source.num_examples(d.train_split), None


def final_step(optim, num_examples):
  return model_lib.get_train_steps(num_examples, optim.train_batch_size, optim.train_epochs, optim.train_steps)


def checkpoint_interval(cfg, num_examples):
  """Steps between checkpoints: --checkpoint_steps, else --checkpoint_epochs epochs."""
  if cfg.run.checkpoint_steps:
    return cfg.run.checkpoint_steps
  return max(1, cfg.run.checkpoint_epochs * num_examples // cfg.optim.train_batch_size)


def train(cfg, strategy, source, chief, num_examples, subset_ids, files):
  """The training loop of the authors' code -- compiled inner loops of steps, checkpoints between them --
  with progress about every 30 s, and a checkpoint of the step in flight on SIGTERM / SIGINT. Returns the
  model and the step reached."""
  d, o, r = cfg.data, cfg.optim, cfg.run
  train_steps = final_step(o, num_examples)
  warmup_steps = model_lib.get_warmup_steps(o.warmup_epochs, num_examples, o.train_batch_size)
  if warmup_steps >= train_steps:
    logging.warning('--warmup_epochs=%g is %d steps, not shorter than the %d training steps: the learning rate '
                    'rises all run and never reaches its peak (as in the authors\' schedule).', o.warmup_epochs,
                    warmup_steps, train_steps)
  output_dir = r.model_dir if chief else tempfile.mkdtemp(prefix='simclr-worker-')
  if chief:
    rundir.write_flags(r.model_dir, cfg.flat())
    if subset_ids is not None:
      path = rundir.write_label_subset(r.model_dir, subset_ids, dataset=source.name, split=d.train_split,
                                       fraction=d.label_fraction, seed=d.label_fraction_seed)
      logging.info('Fine-tuning on %d labelled examples (%.3g of %s), ids in %s', num_examples,
                   d.label_fraction, d.train_split, path)

  dataset = data_lib.build_distributed_dataset(
      strategy, o.train_batch_size, source, d.train_split, is_training=True, train_mode=r.train_mode,
      image_size=d.image_size, color_jitter_strength=d.color_jitter_strength, use_blur=d.use_blur,
      crop_min_area=d.crop_min_area, cache=d.cache_dataset, subset_ids=subset_ids)
  with strategy.scope():
    model, optimizer, schedule = build_training(cfg, strategy, max(source.num_classes, 1), num_examples)
    loop_metrics = {name: keras.metrics.Mean(name) for name in metric_names(r.train_mode, model, o.distill_alpha)}
  count = lambda variables: sum(int(tf.size(v)) for v in variables
                                if not v.path.endswith(('moving_mean', 'moving_variance'))) / 1e6
  parameters, trained = count(model.resnet_model.weights), count(model.resnet_model.trainable_weights)
  progress.status(f'Model: ResNet-{cfg.model.resnet_depth} x{cfg.model.width_multiplier:g} ({parameters:.1f}M '
                  'encoder parameters' + (f', {trained:.1f}M trained' if trained != parameters else '') +
                  f'); {train_steps} steps of {o.train_batch_size} images.')

  # Every worker resumes from the chief's checkpoints in model_dir (shared storage when multi-worker); the
  # others must still save (saving can involve collectives), into a local scratch dir deleted at the end.
  checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
  manager = rundir.checkpoint_manager(checkpoint, output_dir, r.keep_checkpoint_max, optimizer.iterations)
  restored = model_io.restore_latest(checkpoint, r.model_dir)
  if restored:
    progress.status(f'Resuming from {restored} (step {optimizer.iterations.numpy()}).')
  elif files['checkpoint'] is not None:
    initialise_from(cfg, model, files['checkpoint'], max(source.num_classes, 1))
  teacher = load_teacher(cfg, strategy, files['teacher']) if r.train_mode == 'distill' else None
  train_step = make_train_step(o, r.train_mode, model, optimizer, strategy, teacher)
  stop = signals.StopSignals()

  @tf.function
  def train_loop(iterator, steps):
    """The inner loop: `steps` steps in one call, each checking the stop flag first."""
    stopped = tf.constant(False)
    for _ in tf.range(steps):
      if signals.should_stop(stop.flag, strategy):
        stopped = tf.constant(True)
        break
      images, labels = next(iterator)
      values = strategy.run(train_step, args=(images, labels))
      for name, value in values.items():
        loop_metrics[name].update_state(strategy.reduce('MEAN', value, axis=None))
    return stopped

  writer = tf.summary.create_file_writer(output_dir)
  iterator = iter(dataset)
  step = int(optimizer.iterations.numpy())
  bar = progress.Progress(step, train_steps, o.train_batch_size, pretrain=r.train_mode == 'pretrain')
  if step < train_steps:
    _write_augmented_views(writer, iterator, strategy, step, chief)
    progress.status(f'Training from step {step}; the first steps include compiling the training step.')

  def inner_loop(steps):
    return train_loop(iterator, tf.constant(steps))

  def current_step():
    return int(optimizer.iterations.numpy())

  def after_loop(previous, step, seconds):
    """Summaries, the kNN monitor when its step has come, a check for divergence, and the progress line."""
    with writer.as_default():
      values = metrics_lib.log_and_write_metrics(loop_metrics.values(), step)
      learning_rate = float(schedule(step - 1))
      tf.summary.scalar('train/learning_rate', learning_rate, step=step)
      knn = cfg.eval.knn_eval_steps
      if knn and (step // knn > previous // knn or step == train_steps) and source.num_classes > 1:
        values['knn/top_1_accuracy'] = evaluation.knn_monitor(cfg, source, model)
        tf.summary.scalar('knn/top_1_accuracy', values['knn/top_1_accuracy'], step=step)
    writer.flush()
    if not all(math.isfinite(v) for v in values.values()):
      raise FloatingPointError(
          f'Training diverged at step {step}: {values}. No checkpoint was written for this state; the last '
          f'good one is {manager.latest_checkpoint}. Try a lower --learning_rate or a larger --warmup_epochs.')
    bar.update(step, seconds, values, learning_rate)
    for metric in loop_metrics.values():
      metric.reset_state()

  def save(step):
    manager.save(checkpoint_number=step)

  try:
    with stop:
      run_loops(inner_loop, current_step=current_step, train_steps=train_steps,
                checkpoint_every=checkpoint_interval(cfg, num_examples),
                intervals=(cfg.eval.knn_eval_steps, r.train_summary_steps), after_loop=after_loop, save=save,
                stop=stop)
  finally:
    writer.close()
    if not chief:
      shutil.rmtree(output_dir, ignore_errors=True)
  return model, current_step()


def _write_augmented_views(writer, iterator, strategy, step, chief):
  """A few augmented training inputs to TensorBoard, once, so a user can see what the model sees."""
  if not chief:
    return
  images, _ = next(iterator)
  local = strategy.experimental_local_results(images)[0][:4]
  views = tf.concat(tf.split(local, local.shape[-1] // 3, axis=-1), axis=2)  # views side by side
  with writer.as_default():
    tf.summary.image('train/augmented_views', views, step=step, max_outputs=4)
