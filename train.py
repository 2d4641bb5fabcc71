"""Training, top to bottom: the model and optimizer of a run, one step, and the `Trainer` -- the compiled inner
loop of steps and the outer loop with its summaries, monitors, checkpoints, signals and time budget.

As in the authors' code (and Orbit's Controller), steps run inside a `tf.function` loop -- one host round trip
per loop, not per step -- and between loops the host writes summaries, progress and checkpoints. Loops end at
every checkpoint, monitor and summary step, and otherwise last about `TARGET_SECONDS` at the measured speed, so
progress appears every half minute whatever the checkpoint interval, at a cost far below 1% of the step time.
With --train_time the number of steps is unknown until the step's speed is measured (`Trainer.fix_budget`).
The losses are objective.py's; the schedule and optimizer optimization.py's; SIGTERM / SIGINT signals.py's.
"""

import math
import shutil
import sys
import tempfile
import time
import typing

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
import optimization
import progress
import rundir
import signals

TARGET_SECONDS = 30.0
FIRST_LOOP_STEPS = 5  # the first loop also compiles; the second measures the speed
MEASURE_SECONDS = 10.0  # a time budget's speed is measured in loops of this length...
SETTLED_SPEED = 0.03  # ... until two agree this closely (relative)...
MAX_MEASURE_FRACTION = 0.1  # ... or this fraction of the budget has passed
REFIT_UNTIL = 0.1  # the last step is fitted again at checkpoints until this fraction of the budget is left


# ------------------------------------------------------------------------------------------- model and optimizer


def build_training(cfg: config_lib.Config, strategy: tf.distribute.Strategy, num_classes: int, num_examples: int,
                   total_steps: typing.Optional[int] = None
                   ) -> tuple[model_lib.SimCLRModel, keras.optimizers.Optimizer, optimization.WarmUpAndDecay]:
  """(model, optimizer, learning-rate schedule) with all variables created (call in strategy.scope()).
  `total_steps`: the steps a time budget fixed, if it did."""
  o = cfg.optim
  cfg = cfg.replace(precision=model_lib.resolve_precision(cfg.model.precision, cfg.run.use_tpu)[0])  # one format
  model = model_lib.build(cfg, num_classes, strategy.num_replicas_in_sync)
  schedule = optimization.schedule(o, num_examples, total_steps)
  optimizer = optimization.build_optimizer(o.optimizer, schedule, o.momentum, o.weight_decay, cfg.model.precision)
  # Built here, not lazily inside the first (distributed) tf.function call, where Keras 3 fails to create its
  # slots ("You must feed a value for placeholder tensor ... fn_with_cond").
  optimizer.build(model.trainable_variables)
  return model, optimizer, schedule


def initialise_from(cfg: config_lib.Config, model: model_lib.SimCLRModel, file: 'architecture.ModelFile',
                    num_classes: int) -> None:
  """Fine-tuning, linear evaluation or pretraining from a model file (architecture.ModelFile): encoder and
  projection head, and the supervised head where it fits (same classes, same input); else the head is new."""
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


def load_teacher(cfg: config_lib.Config, strategy: tf.distribute.Strategy,
                 file: 'architecture.ModelFile') -> typing.Callable:
  """`teacher(images) -> logits` from the --teacher file (its own network; the model flags are the student's)."""
  teacher = model_io.load(cfg, strategy, file, role='Teacher:')
  return lambda images: teacher(images, training=False)['logits_sup']


# ------------------------------------------------------------------------------------------- the step


def make_train_step(optim: config_lib.OptimConfig, train_mode: str, model: model_lib.SimCLRModel,
                    optimizer: keras.optimizers.Optimizer, strategy: tf.distribute.Strategy,
                    teacher: typing.Optional[typing.Callable] = None) -> typing.Callable:
  """One SimCLR step on one replica (the paper's Algorithm 1, plus the online linear head), or one
  fine-tuning / linear-evaluation / distillation step (`teacher(images) -> logits` for the latter), with the
  losses, optimizer and compilation of `optim`.

  Returns `train_step(images, one_hot_labels) -> {metric name: value}` (`metric_names`), to be run with
  `strategy.run`. Images: `[B, H, W, 3 * views]`; labels `[B, num_classes]`. With --jit_compile the forward and
  backward pass are one XLA computation; the update (which synchronizes replicas through the optimizer) stays
  outside it.
  """
  supervised = model.supervised_head is not None
  mode = config_lib.TRAIN_MODE[train_mode]

  def forward_backward(images, labels):
    with tf.GradientTape() as tape:
      outputs = model(images, training=True)
      loss = 0.0
      values = {}
      if mode.views == 2:
        # NT-Xent on the projections of both views, negatives from every replica.
        contrast_loss, logits_ab, labels_ab = objective.contrastive_loss(
            outputs['proj_head_output'], hidden_norm=optim.hidden_norm, temperature=optim.temperature)
        loss += contrast_loss
        values.update({metrics_lib.CONTRAST_LOSS: contrast_loss,
                       metrics_lib.CONTRAST_ACC: metrics_lib.contrastive_accuracy(logits_ab, labels_ab),
                       metrics_lib.CONTRAST_ENTROPY: metrics_lib.contrastive_entropy(logits_ab)})
        labels = tf.concat([labels, labels], 0)  # the linear head sees both views
      supervised_weight = 1.0
      if mode.teacher:
        # SimCLRv2 eq. 3: cross-entropy to the teacher's temperature-softened predictions.
        teacher_logits = tf.stop_gradient(tf.cast(teacher(images), tf.float32))
        distill_loss = objective.distillation_loss(teacher_logits, outputs['logits_sup'], optim.distill_temperature)
        loss += distill_loss
        values.update({metrics_lib.DISTILL_LOSS: distill_loss,
                       metrics_lib.TEACHER_AGREEMENT: metrics_lib.top_k_accuracy(
                           tf.one_hot(tf.argmax(teacher_logits, 1), teacher_logits.shape[-1]),
                           outputs['logits_sup'], 1)})
        supervised_weight = optim.distill_alpha
      if supervised and supervised_weight:
        supervised_loss = objective.supervised_loss(labels, outputs['logits_sup'])
        loss += supervised_weight * supervised_loss
        values.update({metrics_lib.SUPERVISED_LOSS: supervised_loss,
                       metrics_lib.SUPERVISED_ACC: metrics_lib.top_k_accuracy(labels, outputs['logits_sup'], 1)})
      weight_decay = optimization.weight_decay_loss(model.trainable_variables, optim.weight_decay, optim.optimizer)
      loss += weight_decay
      values.update({metrics_lib.TOTAL_LOSS: loss, metrics_lib.WEIGHT_DECAY: weight_decay})
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


def metric_names(train_mode: str, model: model_lib.SimCLRModel, distill_alpha: float = 0.0) -> list:
  """The names of the values `make_train_step` returns."""
  mode = config_lib.TRAIN_MODE[train_mode]
  names = [metrics_lib.TOTAL_LOSS, metrics_lib.WEIGHT_DECAY]
  if mode.views == 2:
    names += [metrics_lib.CONTRAST_LOSS, metrics_lib.CONTRAST_ACC, metrics_lib.CONTRAST_ENTROPY]
  if mode.teacher:
    names += [metrics_lib.DISTILL_LOSS, metrics_lib.TEACHER_AGREEMENT]
  if model.supervised_head is not None and (not mode.teacher or distill_alpha):
    names += [metrics_lib.SUPERVISED_LOSS, metrics_lib.SUPERVISED_ACC]
  return names


# ------------------------------------------------------------------------------------------- how long


def training_examples(cfg: config_lib.Config, source: data_lib.Source) -> tuple:
  """(number of training examples, ids of the label-fraction subset or None) for these settings."""
  d = cfg.data
  if config_lib.TRAIN_MODE[cfg.run.train_mode].labeled and d.label_fraction < 1:
    subset_ids = data_lib.label_fraction_subset(source, d.train_split, d.label_fraction, d.label_fraction_seed)
    return len(subset_ids), subset_ids
  return source.num_examples(d.train_split), None


def planned_steps(cfg: config_lib.Config, num_examples: int) -> typing.Optional[int]:
  """The steps the run trains: from --train_steps or --train_epochs, or those its time budget fixed (None
  while they are not fixed yet)."""
  o = cfg.optim
  if o.train_seconds:  # a schedule.json without the checkpoints it was fixed for is not this run's
    fixed = rundir.read_schedule(cfg.run.model_dir) if rundir.checkpoint_paths(cfg.run.model_dir) else None
    return fixed['train_steps'] if fixed else None
  return optimization.train_steps(num_examples, o.train_batch_size, o.train_epochs, o.train_steps)


def checkpoint_interval(cfg: config_lib.Config, num_examples: int) -> int:
  """Steps between checkpoints: --checkpoint_steps, else --checkpoint_epochs epochs."""
  if cfg.run.checkpoint_steps:
    return cfg.run.checkpoint_steps
  return max(1, cfg.run.checkpoint_epochs * num_examples // cfg.optim.train_batch_size)


def next_loop_steps(step: int, train_steps: int, intervals: typing.Sequence[int],
                    seconds_per_step: typing.Optional[float], target_seconds: float = TARGET_SECONDS) -> int:
  """Steps of the next inner loop: to the next multiple of any interval (checkpoint, monitor, summary) or the
  end of training, and at most ~`target_seconds` at `seconds_per_step` (`FIRST_LOOP_STEPS` before it is known)."""
  boundary = min([train_steps] + [(step // k + 1) * k for k in intervals if k and k > 0])
  longest = FIRST_LOOP_STEPS if seconds_per_step is None else max(1, int(target_seconds / seconds_per_step))
  return max(1, min(boundary - step, longest))


def _events_in(start: int, end: int, every: int) -> int:
  """How many times an event of every `every` steps that also happens at the last step happens in (start, end]."""
  if not every or end <= start:
    return 0
  return end // every - start // every + (1 if end % every else 0)


def budget_steps(step: int, elapsed: float, budget: float, seconds_per_step: float, checkpoint_every: int,
                 checkpoint_seconds: float, monitor_every: int = 0, monitor_seconds: float = 0.0) -> int:
  """The last step of a run at `step` after `elapsed` seconds of a `budget`: the most steps whose time, with the
  checkpoints and monitors they bring (each also at the last step), ends within the budget. `step` itself if
  not one more fits."""
  def seconds_at(end):
    return (elapsed + (end - step) * seconds_per_step + _events_in(step, end, checkpoint_every) * checkpoint_seconds +
            _events_in(step, end, monitor_every) * monitor_seconds)

  low, high = step, step + max(0, int((budget - elapsed) / seconds_per_step)) + 1
  while low < high:  # the largest end with seconds_at(end) <= budget; seconds_at grows with end
    middle = (low + high + 1) // 2
    low, high = (middle, high) if seconds_at(middle) <= budget else (low, middle - 1)
  return low


def agreed(strategy: tf.distribute.Strategy, value: float) -> float:
  """`value` as every worker will use it: the workers' mean (each measured its own speed and clock). A
  collective with several workers: every worker calls it at the same step."""
  if not strategy.extended._in_multi_worker_mode():  # pylint: disable=protected-access
    return float(value)
  per_replica = strategy.run(lambda: tf.constant(float(value), tf.float64))
  total = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
  return float(total) / strategy.num_replicas_in_sync


# ------------------------------------------------------------------------------------------- the trainer


class Trainer:
  """One training run, built in `__init__` (data, model, optimizer, checkpoints, restore) and run by `run()`:

    while not at the last step:
      run_steps(n)           the compiled inner loop: n steps, each checking the stop flag first
      after_loop(...)        summaries, the kNN monitor when its step has come, divergence check, progress
      fix_budget(...)        (--train_time, once the speed is measured) the last step, from the time left
      save(step)             at every checkpoint interval, at the end, and after a stop (then signals.Stopped)
      refit_budget(step)     (--train_time, at a checkpoint) the last step again, from the speed since the fix
  """

  def __init__(self, cfg: config_lib.Config, strategy: tf.distribute.Strategy, source: data_lib.Source, chief: bool,
               num_examples: int, subset_ids: typing.Optional[list], files: dict) -> None:
    self.started = time.monotonic()  # a time budget counts from here: building, compiling and all
    self.cfg, self.strategy, self.source, self.chief = cfg, strategy, source, chief
    d, o, r = cfg.data, cfg.optim, cfg.run
    self.budget = o.train_seconds
    self.train_steps = planned_steps(cfg, num_examples)  # None: a time budget's, not fixed yet
    self.checkpoint_every = checkpoint_interval(cfg, num_examples)
    self.monitor_every = cfg.eval.knn_eval_steps if source.num_classes > 1 else 0
    self.intervals = (self.checkpoint_every, self.monitor_every, r.train_summary_steps)
    # Every worker resumes from the chief's checkpoints in model_dir (shared storage when multi-worker); the
    # others must still save (saving can involve collectives), into a local scratch dir deleted at the end.
    self.output_dir = r.model_dir if chief else tempfile.mkdtemp(prefix='simclr-worker-')
    if chief:
      rundir.write_flags(r.model_dir, cfg.flat())
      if subset_ids is not None:
        path = rundir.write_label_subset(r.model_dir, subset_ids, dataset=source.name, split=d.train_split,
                                         fraction=d.label_fraction, seed=d.label_fraction_seed)
        logging.info('Fine-tuning on %d labelled examples (%.3g of %s), ids in %s', num_examples,
                     d.label_fraction, d.train_split, path)
    dataset = data_lib.build_distributed_dataset(strategy, o.train_batch_size, source, d.train_split, settings=d,
                                                 is_training=True, train_mode=r.train_mode, subset_ids=subset_ids)
    with strategy.scope():
      self.model, self.optimizer, self.schedule = build_training(cfg, strategy, max(source.num_classes, 1),
                                                                 num_examples, self.train_steps)
      self.metrics = {name: keras.metrics.Mean(name) for name in metric_names(r.train_mode, self.model,
                                                                             o.distill_alpha)}
    self._warn_of_a_long_warmup()
    progress.status(self._describe_model())
    self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer)
    self.manager = rundir.checkpoint_manager(self.checkpoint, self.output_dir, r.keep_checkpoint_max,
                                             self.optimizer.iterations)
    restored = model_io.restore_latest(self.checkpoint, r.model_dir)
    if restored:
      progress.status(f'Resuming from {restored} (step {self.step}).')
    elif files['checkpoint'] is not None:
      initialise_from(cfg, self.model, files['checkpoint'], max(source.num_classes, 1))
    teacher = load_teacher(cfg, strategy, files['teacher']) if config_lib.TRAIN_MODE[r.train_mode].teacher else None
    self.train_step = make_train_step(o, r.train_mode, self.model, self.optimizer, strategy, teacher)
    self.stop = signals.StopSignals()
    self.seconds_of = {'checkpoint': 0.0, 'monitor': 0.0}
    self._done_at = {'checkpoint': None, 'monitor': None}
    self._trained_since_fix = [0.0, 0]  # seconds, steps
    self._fixed_here = False
    self.writer = tf.summary.create_file_writer(self.output_dir)
    self.iterator = iter(dataset)
    self.bar = progress.Progress(self.step, self.train_steps, o.train_batch_size, metrics_lib.COLUMNS,
                                 pretrain=r.train_mode == 'pretrain',
                                 deadline=self.started + self.budget if self.train_steps is None else None)

  @property
  def step(self) -> int:
    return int(self.optimizer.iterations.numpy())

  def _describe_model(self) -> str:
    m, o = self.cfg.model, self.cfg.optim
    count = lambda variables: sum(int(tf.size(v)) for v in variables
                                  if not v.path.endswith(('moving_mean', 'moving_variance'))) / 1e6
    parameters = count(self.model.resnet_model.weights)
    trained = count(self.model.resnet_model.trainable_weights)
    steps = (f'{self.train_steps} steps' if self.train_steps is not None else
             f'steps for {progress.duration(self.budget)} (their number fixed once their speed is measured)')
    return (f'Model: ResNet-{m.resnet_depth} x{m.width_multiplier:g} ({parameters:.1f}M encoder parameters' +
            (f', {trained:.1f}M trained' if trained != parameters else '') + f'); {steps} of {o.train_batch_size} '
            'images.')

  def _warn_of_a_long_warmup(self) -> None:
    o = self.cfg.optim
    warmup = self.schedule.warmup_steps
    if self.train_steps is not None and warmup >= self.train_steps:
      logging.warning('--warmup_epochs=%g is %d steps, not shorter than the %d training steps: the learning rate '
                      'rises all run and never reaches its peak (as in the authors\' schedule).', o.warmup_epochs,
                      warmup, self.train_steps)

  # ----------------------------------------------------------------------------------------- the outer loop

  def run(self) -> int:
    """Trains to the last step (or until a signal); returns the step reached."""
    step = self.step
    if self.train_steps is None or step < self.train_steps:
      self._write_augmented_views(step)
      progress.status(f'Training from step {step}; the first steps include compiling the training step.')
    seconds_per_step, loops, speeds = None, 0, []
    try:
      with self.stop:
        while self.train_steps is None or step < self.train_steps:
          measuring = self.train_steps is None
          steps = next_loop_steps(step, sys.maxsize if measuring else self.train_steps,
                                  self.intervals + ((self.schedule.warmup_steps,) if measuring else ()),
                                  seconds_per_step, MEASURE_SECONDS if measuring else TARGET_SECONDS)
          start = time.perf_counter()
          stopped = self.run_steps(steps) or self.stop.requested
          seconds = time.perf_counter() - start
          previous, step = step, self.step
          loops += 1
          if loops > 1 and step > previous:  # the first loop includes compilation
            seconds_per_step = seconds / (step - previous)
            if measuring:  # every worker's next loop, and its decision to fix, from the same numbers
              seconds_per_step = agreed(self.strategy, seconds_per_step)
          if step > previous:
            self.after_loop(previous, step, seconds)
          if measuring and loops > 1 and step > previous and not stopped:
            if seconds_per_step * (step - previous) >= 0.5 * MEASURE_SECONDS:  # (agreed) a short loop is noise
              speeds.append(seconds_per_step)
            if self._speed_is_settled(speeds, step):
              self.fix_budget(step, seconds_per_step)
          elif self.budget and not measuring:
            self._trained_since_fix[0] += seconds
            self._trained_since_fix[1] += step - previous
          crossed = step // self.checkpoint_every > previous // self.checkpoint_every
          if (stopped or step == self.train_steps or crossed) and self._done_at['checkpoint'] != step:
            self._timed('checkpoint', self.save, step)
          if self.budget and crossed and not stopped and self.train_steps is not None and step < self.train_steps:
            self.refit_budget(step)
          if stopped:
            raise signals.Stopped(self.stop.received or "another worker's signal", step)
    finally:
      self.writer.close()
      if not self.chief:
        shutil.rmtree(self.output_dir, ignore_errors=True)
    if self._fixed_here:
      spent = time.monotonic() - self.started
      progress.status(f'Trained to step {step} in {spent:,.0f} s of a {self.budget:,.0f} s budget '
                      f'({100 * (spent / self.budget - 1):+.1f}%).')
    return step

  @tf.function
  def _train_loop(self, steps):
    """The inner loop: `steps` steps in one call, each checking the stop flag first."""
    stopped = tf.constant(False)
    for _ in tf.range(steps):
      if signals.should_stop(self.stop.flag, self.strategy):
        stopped = tf.constant(True)
        break
      images, labels = next(self.iterator)
      values = self.strategy.run(self.train_step, args=(images, labels))
      for name, value in values.items():
        self.metrics[name].update_state(self.strategy.reduce('MEAN', value, axis=None))
    return stopped

  def run_steps(self, steps: int) -> bool:
    """Runs `steps` steps; whether they stopped early on the (agreed) stop flag -- with several workers,
    possibly raised by another worker's signal."""
    return bool(self._train_loop(tf.constant(steps)))

  def after_loop(self, previous: int, step: int, seconds: float) -> None:
    """Summaries, the kNN monitor when its step has come, a check for divergence, and the progress line."""
    with self.writer.as_default():
      values = metrics_lib.log_and_write_metrics(self.metrics.values(), step)
      learning_rate = float(self.schedule(step - 1))
      tf.summary.scalar(metrics_lib.LEARNING_RATE, learning_rate, step=step)
      k = self.monitor_every
      if k and (step // k > previous // k or step == self.train_steps) and self._done_at['monitor'] != step:
        values[metrics_lib.KNN_TOP_1] = self._timed('monitor', self.monitor, step)
    self.writer.flush()
    if not all(math.isfinite(v) for v in values.values()):
      raise FloatingPointError(
          f'Training diverged at step {step}: {values}. No checkpoint was written for this state; the last '
          f'good one is {self.manager.latest_checkpoint}. Try a lower --learning_rate or a larger --warmup_epochs.')
    self.bar.update(step, seconds, values, learning_rate)
    for metric in self.metrics.values():
      metric.reset_state()

  def monitor(self, step: int) -> float:
    """The kNN monitor's top-1 now, written to TensorBoard at `step`."""
    value = evaluation.knn_monitor(self.cfg, self.source, self.model)
    with self.writer.as_default():
      tf.summary.scalar(metrics_lib.KNN_TOP_1, value, step=step)
    return value

  def save(self, step: int) -> None:
    self.manager.save(checkpoint_number=step)

  def _speed_is_settled(self, speeds: list, step: int) -> bool:
    """Whether a time budget's step speed is known: past the warmup (whose rates do not depend on the number of
    steps, so it is measured whole: the input pipeline tunes itself over the first minutes), two loops of about
    MEASURE_SECONDS within SETTLED_SPEED of each other; or measuring has taken MAX_MEASURE_FRACTION of the
    budget."""
    if agreed(self.strategy, time.monotonic() - self.started) >= MAX_MEASURE_FRACTION * self.budget:
      return True
    return (step >= self.schedule.warmup_steps and len(speeds) >= 2 and
            abs(speeds[-1] - speeds[-2]) <= SETTLED_SPEED * speeds[-2])

  def _timed(self, what: str, work: typing.Callable, step: int) -> typing.Any:
    """`work(step)` -- a checkpoint or a monitor -- its duration kept in `self.seconds_of[what]` (what a time
    budget accounts for) and its step in `self._done_at[what]` (so that it is not done twice at one step)."""
    start = time.monotonic()
    result = work(step)
    self.seconds_of[what] = time.monotonic() - start
    self._done_at[what] = step
    return result

  def fix_budget(self, step: int, seconds_per_step: float) -> None:
    """--train_time: times a checkpoint and a kNN monitor (both kept: the curve's first point), then fixes the
    last step so that training ends within the budget and lays the schedule over it."""
    if self._done_at['checkpoint'] != step:
      self._timed('checkpoint', self.save, step)
    if self.monitor_every and self._done_at['monitor'] != step:
      self._timed('monitor', self.monitor, step)
      self.writer.flush()
    self._set_last_step(step, seconds_per_step)
    self._fixed_here = True
    progress.status(f'Time budget {progress.duration(self.budget)}: {self.train_steps} steps '
                    f'({seconds_per_step:.3f} s each, measured; a checkpoint {self.seconds_of["checkpoint"]:.1f} s' +
                    (f', a kNN monitor {self.seconds_of["monitor"]:.1f} s' if self.monitor_every else '') +
                    f'), {progress.duration(time.monotonic() - self.started)} used.')
    self._warn_of_a_long_warmup()

  def refit_budget(self, step: int) -> None:
    """At a checkpoint: the last step again, from the speed of the steps since the budget was fixed (a shared
    machine's speed drifts), so that training still ends within the budget; the schedule follows. Not in the
    budget's last REFIT_UNTIL part (the decay is nearly done; a drift there costs little), and not in a resumed
    run, which keeps the steps it fixed (its clock started with the resume)."""
    seconds, steps = self._trained_since_fix
    left = self.budget - (time.monotonic() - self.started)
    if not steps or not self._fixed_here or agreed(self.strategy, left) < REFIT_UNTIL * self.budget:
      return
    self._set_last_step(step, seconds / steps)
    if self.train_steps == step and self.monitor_every and self._done_at['monitor'] != step:
      self._timed('monitor', self.monitor, step)  # the run ends here: its curve gets its last point

  def _set_last_step(self, step: int, seconds_per_step: float) -> None:
    """The last step that ends within the budget from `step` at `seconds_per_step`, agreed by every worker, to
    the schedule, the progress line and model_dir/schedule.json (which a resume keeps)."""
    elapsed = time.monotonic() - self.started
    last = int(agreed(self.strategy, budget_steps(
        step, elapsed, self.budget, seconds_per_step, self.checkpoint_every, self.seconds_of['checkpoint'],
        self.monitor_every, self.seconds_of['monitor'])))
    if last == self.train_steps:
      return
    self.train_steps = last
    self.schedule.set_total_steps(last)
    self.bar.total_steps = last
    if self.chief:
      rundir.write_schedule(self.cfg.run.model_dir, train_time=self.cfg.optim.train_time, train_steps=last,
                            fixed_at_step=step, elapsed_seconds=round(elapsed, 2),
                            seconds_per_step=round(seconds_per_step, 5),
                            checkpoint_seconds=round(self.seconds_of['checkpoint'], 2),
                            monitor_seconds=round(self.seconds_of['monitor'], 2))

  def _write_augmented_views(self, step: int) -> None:
    """A few augmented training inputs to TensorBoard, once, so a user can see what the model sees."""
    if not self.chief:
      return
    images, _ = next(self.iterator)
    local = self.strategy.experimental_local_results(images)[0][:4]
    views = tf.concat(tf.split(local, local.shape[-1] // 3, axis=-1), axis=2)  # views side by side
    with self.writer.as_default():
      tf.summary.image('train/augmented_views', views, step=step, max_outputs=4)


def train(cfg: config_lib.Config, strategy: tf.distribute.Strategy, source: data_lib.Source, chief: bool,
          num_examples: int, subset_ids: typing.Optional[list], files: dict) -> tuple:
  """Trains the run of `cfg`; returns (model, the step reached)."""
  trainer = Trainer(cfg, strategy, source, chief, num_examples, subset_ids, files)
  return trainer.model, trainer.run()
