"""train.py's outer loop: how long inner loops run (progress about every 30 s whatever the checkpoint interval),
what it does after a stop, and how a time budget fixes the number of steps (on a fake clock); what a run
starting from a model file takes from it."""

import types

import numpy as np
import pytest
import tensorflow as tf

import architecture
import config as config_lib
import model as model_lib
import optimization
import signals
import train
from model_files import randomise, save_run


def test_loops_end_at_every_boundary_and_otherwise_last_about_the_target_time():
  # Before the speed is known (the first loop compiles): a few steps, never past a boundary.
  assert train.next_loop_steps(0, 1000, (300, 0), None) == train.FIRST_LOOP_STEPS
  assert train.next_loop_steps(0, 3, (300,), None) == 3
  # 0.1 s per step: 300 steps make 30 s; capped by the next checkpoint (400), monitor (250) or the end.
  assert train.next_loop_steps(10, 10_000, (10_000,), 0.1) == 300
  assert train.next_loop_steps(200, 10_000, (400, 250), 0.1) == 50
  assert train.next_loop_steps(990, 1000, (10_000,), 0.1) == 10
  assert train.next_loop_steps(7, 1000, (10_000,), 100.0) == 1  # a slow step: one step per loop


class FakeStop:
  """signals.StopSignals without signal handlers."""
  requested, received = False, 'SIGTERM'

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    pass


class FakeTrainer(train.Trainer):
  """The real outer loop (`run`, `fix_budget`) over steps that take `seconds_per_step` of a fake clock, with
  monitors and checkpoints that take their own time; records what the loop does."""

  def __init__(self, monkeypatch, seconds_per_step, train_steps=1000, checkpoint_every=10_000, stop_at=None,
               budget=0.0, monitor_every=0, monitor_seconds=0.0, checkpoint_seconds=0.0, compile_seconds=0.0):
    self.now = 0.0
    monkeypatch.setattr(train.time, 'perf_counter', lambda: self.now)
    monkeypatch.setattr(train.time, 'monotonic', lambda: self.now)
    self.started, self.chief, self.strategy = 0.0, False, tf.distribute.get_strategy()
    self.output_dir = '/nonexistent/worker-scratch'  # a non-chief's scratch directory, removed at the end
    self.budget, self.train_steps = budget, None if budget else train_steps
    self.checkpoint_every, self.monitor_every = checkpoint_every, monitor_every
    self.intervals = (checkpoint_every, monitor_every, 0)
    self.cfg = config_lib.Config.defaults(train_time=f'{budget}s' if budget else '')
    self.schedule = optimization.WarmUpAndDecay(1.0, 0, optimization.UNKNOWN_TOTAL_STEPS)
    self.bar = types.SimpleNamespace(total_steps=self.train_steps)
    self.writer = types.SimpleNamespace(close=lambda: None, flush=lambda: None)
    self.stop = FakeStop()
    self.seconds_per_step, self.stop_at, self.compile_seconds = seconds_per_step, stop_at, compile_seconds
    self.monitor_seconds, self.checkpoint_seconds = monitor_seconds, checkpoint_seconds
    self._step, self.summaries, self.saved, self.loops, self.monitored = 0, [], [], [], []
    self.seconds_of, self._trained_since_fix, self._fixed_here = {'checkpoint': 0.0, 'monitor': 0.0}, [0.0, 0], False
    self._done_at = {'checkpoint': None, 'monitor': None}

  @property
  def step(self):
    return self._step

  def _write_augmented_views(self, step):
    pass

  def run_steps(self, steps):
    self.loops.append(steps)
    if len(self.loops) == 1:
      self.now += self.compile_seconds
    for _ in range(steps):
      if self.stop.requested:
        return True
      self._step += 1
      self.now += self.seconds_per_step
      if self._step == self.stop_at:
        self.stop.requested = True  # arrives while this step is in flight: it completes, the next does not run
    return False

  def after_loop(self, previous, step, seconds):
    self.summaries.append((step, seconds))
    k = self.monitor_every
    if k and (step // k > previous // k or step == self.train_steps):
      self._timed('monitor', self.monitor, step)

  def monitor(self, step):
    self.monitored.append(step)
    self.now += self.monitor_seconds
    return 0.5

  def save(self, step):
    self.saved.append(step)
    self.now += self.checkpoint_seconds


def test_progress_every_30_seconds_whatever_the_checkpoint_interval(monkeypatch):
  trainer = FakeTrainer(monkeypatch, seconds_per_step=0.25)
  assert trainer.run() == 1000
  assert trainer.loops[:3] == [5, 5, 120]  # compile, measure, then 30 s loops
  assert all(seconds <= 30.0 + 1e-9 for _, seconds in trainer.summaries)
  assert trainer.summaries[-1][0] == 1000 and trainer.saved == [1000]  # only the end is a checkpoint


def test_a_stop_request_saves_the_step_reached_and_raises(monkeypatch):
  trainer = FakeTrainer(monkeypatch, seconds_per_step=0.25, checkpoint_every=100, stop_at=137)
  with pytest.raises(signals.Stopped) as stopped:
    trainer.run()
  assert stopped.value.step == 137 and stopped.value.signal_name == 'SIGTERM'
  assert trainer.saved == [100, 137]


def test_a_stop_agreed_with_another_worker_stops_this_one_too(monkeypatch):
  """This worker got no signal (its own flag is down) but its inner loop stopped on the all-reduced flag."""
  trainer = FakeTrainer(monkeypatch, seconds_per_step=0.25, checkpoint_every=100)
  trainer.stop.received = None
  run_steps = trainer.run_steps

  def agreed_stop(n):
    if len(trainer.loops) == 2:
      trainer.loops.append(n)
      trainer._step += 7
      return True  # the agreed flag stopped the loop after 7 steps
    return run_steps(n)

  trainer.run_steps = agreed_stop
  with pytest.raises(signals.Stopped) as stopped:
    trainer.run()
  assert stopped.value.step == 17 and stopped.value.signal_name == "another worker's signal"
  assert trainer.saved == [17] and len(trainer.loops) == 3


def test_budget_steps_fill_the_time_left_with_steps_checkpoints_and_monitors():
  # 100 s used, 900 s left at 0.5 s per step: 1800 steps without overheads.
  assert train.budget_steps(40, 100.0, 1000.0, 0.5, checkpoint_every=10_000, checkpoint_seconds=0.0) == 1840
  # A checkpoint every 500 steps (+ the last) at 10 s each and a monitor every 400 (+ the last) at 20 s each:
  # 1,560 steps (780 s) + checkpoints at 500, 1000, 1500, 1600 (40 s) + monitors at 400 .. 1600 (80 s) = 900 s.
  last = train.budget_steps(40, 100.0, 1000.0, 0.5, 500, 10.0, 400, 20.0)
  events = train._events_in  # pylint: disable=protected-access
  spent = lambda end: 100 + (end - 40) * 0.5 + events(40, end, 500) * 10 + events(40, end, 400) * 20
  assert spent(last) <= 1000.0 < spent(last + 1) and last == 1600
  assert train.budget_steps(40, 1200.0, 1000.0, 0.5, 500, 10.0) == 40  # already over: end now


def test_a_time_budget_fixes_its_steps_once_measured_and_ends_within_it(monkeypatch):
  """The real outer loop on a fake clock: 20 s of compiling, 0.2 s steps, a 3 s checkpoint every 1000 steps and
  a 15 s kNN monitor every 500: the steps are fixed once two loops of MEASURE_SECONDS agree on the speed, the
  schedule is laid over them, and the run ends within 1% of its 10-minute budget."""
  trainer = FakeTrainer(monkeypatch, seconds_per_step=0.2, budget=1200.0, checkpoint_every=1000,
                        checkpoint_seconds=3.0, monitor_every=500, monitor_seconds=15.0, compile_seconds=20.0)
  last = trainer.run()
  assert trainer.loops[:4] == [5, 5, 50, 50]  # compile, a first speed, then two loops of MEASURE_SECONDS
  fixed_at = 110
  assert trainer.monitored[0] == fixed_at and trainer.saved[0] == fixed_at  # timed when the steps were fixed
  assert last == trainer.train_steps == trainer.schedule.total_steps == trainer.bar.total_steps
  assert trainer.saved[-1] == last and trainer.monitored[-1] == last
  assert 0.99 * 1200 <= trainer.now <= 1200.0, trainer.now


def test_a_speed_that_keeps_changing_is_fixed_after_a_tenth_of_the_budget(monkeypatch):
  """An input pipeline that keeps speeding up (5% per loop, beyond SETTLED_SPEED): the steps are fixed once
  measuring has taken MAX_MEASURE_FRACTION of the budget, at the speed last measured."""
  trainer = FakeTrainer(monkeypatch, seconds_per_step=0.5, budget=1000.0, checkpoint_every=10_000)
  run_steps, fix_budget, fixed = trainer.run_steps, trainer.fix_budget, []

  def faster(n):
    if trainer.train_steps is None and trainer.loops:
      trainer.seconds_per_step *= 0.95  # each measuring loop faster than the last; once fixed, steady
    return run_steps(n)

  trainer.run_steps = faster
  trainer.fix_budget = lambda step, seconds_per_step: fixed.append(trainer.now) or fix_budget(step, seconds_per_step)
  trainer.run()
  assert train.MAX_MEASURE_FRACTION * 1000 <= fixed[0] <= train.MAX_MEASURE_FRACTION * 1000 + train.MEASURE_SECONDS
  assert 0.99 * 1000 <= trainer.now <= 1000.0


def test_a_time_budget_follows_a_machine_that_slows_down(monkeypatch):
  """Steps 25% slower from a third of the budget on (a shared machine's other tenants): the last step is fitted
  again at every checkpoint from the speed since it was fixed, and the run still ends within 2% of the budget
  (fixed once, it would end 20% late)."""
  trainer = FakeTrainer(monkeypatch, seconds_per_step=0.2, budget=3000.0, checkpoint_every=500,
                        checkpoint_seconds=1.0, compile_seconds=10.0)
  run_steps = trainer.run_steps

  def slower(n):
    if trainer.now > 1000:
      trainer.seconds_per_step = 0.25
    return run_steps(n)

  trainer.run_steps = slower
  first = []
  fix = trainer.fix_budget
  trainer.fix_budget = lambda step, seconds: fix(step, seconds) or first.append(trainer.train_steps)
  last = trainer.run()
  assert last < first[0] and 0.98 * 3000 <= trainer.now <= 3000 * 1.02, (first, last, trainer.now)
  assert trainer.schedule.total_steps == last


def test_a_time_budget_measures_through_the_warmup_whose_rates_need_no_step_count(monkeypatch):
  """With a warmup of 300 steps the steps are fixed at its end, not before: the rates of the warmup do not
  depend on the number of steps, and the input pipeline has tuned itself by then."""
  trainer = FakeTrainer(monkeypatch, seconds_per_step=0.2, budget=3000.0, checkpoint_every=10_000)
  trainer.schedule = optimization.WarmUpAndDecay(1.0, 300, optimization.UNKNOWN_TOTAL_STEPS)
  fix, fixed = trainer.fix_budget, []
  trainer.fix_budget = lambda step, seconds: fixed.append(step) or fix(step, seconds)
  trainer.run()
  assert fixed == [300] and 0.99 * 3000 <= trainer.now <= 3000


@pytest.mark.parametrize('classes', [7, 5])
def test_a_run_from_a_model_file_takes_its_supervised_head_where_it_fits(tmp_path, classes):
  """Fine-tuning from a fine-tuned run: the encoder and projection head are the file's; the supervised head too
  when it has the same classes (7), else it is new (5)."""
  cfg = config_lib.Config.defaults(train_mode='finetune', resnet_depth=18, width_multiplier=0.125, image_size=16,
                                   global_bn=False)
  source = model_lib.build(cfg, 7)
  source(tf.zeros([1, 16, 16, 3]), training=False)
  randomise(source, 1, variance_offset=2.0)  # every weight away from its initial value
  save_run(source, tmp_path / 'run', 3, {'train_mode': 'finetune'})
  model = model_lib.build(cfg, classes)
  model(tf.zeros([1, 16, 16, 3]), training=False)
  train.initialise_from(cfg, model, architecture.inspect(str(tmp_path / 'run')), classes)
  for a, b in zip(source.resnet_model.variables + source._projection_head.variables,  # pylint: disable=protected-access
                  model.resnet_model.variables + model._projection_head.variables):  # pylint: disable=protected-access
    np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
  theirs, ours = source.supervised_head.variables[0].numpy(), model.supervised_head.variables[0].numpy()
  if classes == 7:
    np.testing.assert_array_equal(ours, theirs)
  else:
    assert ours.shape == (theirs.shape[0], 5) and not np.allclose(ours, theirs[:, :5])
