"""train.py: how long inner loops run (progress about every 30 s whatever the checkpoint interval), and what
the outer loop does after a stop."""

import pytest

import signals
import train


def test_loops_end_at_every_boundary_and_otherwise_last_about_the_target_time():
  # Before the speed is known (the first loop compiles): a few steps, never past a boundary.
  assert train.next_loop_steps(0, 1000, (300, 0), None) == train.FIRST_LOOP_STEPS
  assert train.next_loop_steps(0, 3, (300,), None) == 3
  # 0.1 s per step: 300 steps make 30 s; capped by the next checkpoint (400), monitor (250) or the end.
  assert train.next_loop_steps(10, 10_000, (10_000,), 0.1) == 300
  assert train.next_loop_steps(200, 10_000, (400, 250), 0.1) == 50
  assert train.next_loop_steps(990, 1000, (10_000,), 0.1) == 10
  assert train.next_loop_steps(7, 1000, (10_000,), 100.0) == 1  # a slow step: one step per loop


class FakeTrainer:
  """Steps that take `seconds_per_step` of a fake clock; records what the outer loop does."""

  def __init__(self, monkeypatch, seconds_per_step, stop_at=None):
    self.step, self.now, self.seconds_per_step, self.stop_at = 0, 0.0, seconds_per_step, stop_at
    self.summaries, self.saved, self.loops = [], [], []
    self.stop = type('Stop', (), {'requested': False, 'received': 'SIGTERM'})()
    monkeypatch.setattr(train.time, 'perf_counter', lambda: self.now)

  def run_steps(self, n):
    self.loops.append(n)
    for _ in range(n):
      if self.stop.requested:
        return True
      self.step += 1
      self.now += self.seconds_per_step
      if self.step == self.stop_at:
        self.stop.requested = True  # arrives while this step is in flight: it completes, the next does not run
    return False


def test_progress_every_30_seconds_whatever_the_checkpoint_interval(monkeypatch):
  trainer = FakeTrainer(monkeypatch, seconds_per_step=0.25)
  train.run_loops(trainer.run_steps, current_step=lambda: trainer.step, train_steps=1000, checkpoint_every=10_000,
                  intervals=(0, 0), after_loop=lambda previous, step, seconds: trainer.summaries.append((step, seconds)),
                  save=trainer.saved.append)
  assert trainer.loops[:3] == [5, 5, 120]  # compile, measure, then 30 s loops
  assert all(seconds <= 30.0 + 1e-9 for _, seconds in trainer.summaries)
  assert trainer.summaries[-1][0] == 1000 and trainer.saved == [1000]  # only the end is a checkpoint


def test_a_stop_request_saves_the_step_reached_and_raises(monkeypatch):
  trainer = FakeTrainer(monkeypatch, seconds_per_step=0.25, stop_at=137)
  with pytest.raises(signals.Stopped) as stopped:
    train.run_loops(trainer.run_steps, current_step=lambda: trainer.step, train_steps=1000, checkpoint_every=100,
                    intervals=(), after_loop=lambda *args: None, save=trainer.saved.append, stop=trainer.stop)
  assert stopped.value.step == 137 and stopped.value.signal_name == 'SIGTERM'
  assert trainer.saved == [100, 137]


def test_a_stop_agreed_with_another_worker_stops_this_one_too(monkeypatch):
  """This worker got no signal (its own flag is down) but its inner loop stopped on the all-reduced flag."""
  trainer = FakeTrainer(monkeypatch, seconds_per_step=0.25)
  trainer.stop.received = None
  calls = []

  def run_steps(n):
    calls.append(n)
    if len(calls) == 3:
      trainer.step += 7
      return True  # the agreed flag stopped the loop after 7 steps
    trainer.run_steps(n)
    return False

  with pytest.raises(signals.Stopped) as stopped:
    train.run_loops(run_steps, current_step=lambda: trainer.step, train_steps=1000, checkpoint_every=100,
                    intervals=(), after_loop=lambda *args: None, save=trainer.saved.append, stop=trainer.stop)
  assert stopped.value.step == 17 and stopped.value.signal_name == "another worker's signal"
  assert trainer.saved == [17] and len(calls) == 3
