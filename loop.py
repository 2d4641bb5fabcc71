"""The outer training loop: how long each compiled inner loop runs, and how a run stops on SIGTERM / SIGINT.

Like Orbit's Controller, the steps run inside a `tf.function` loop (one host round trip per loop, not per step),
and between loops the host writes summaries, progress and checkpoints. Loops end at every checkpoint, monitor
and summary step, and otherwise last about `target_seconds` at the measured speed, so progress appears every
half minute whatever the checkpoint interval, at a cost far below 1% of the step time.

SIGTERM -- what Kubernetes, Slurm, preemptible VMs and TPU maintenance send before stopping a job -- and SIGINT
stop the run after the step in flight: `StopSignals` sets a variable that the inner loop reads before every step,
at once even while the main thread is inside TensorFlow (where Python signal handlers cannot run: the C-level
handler writes to a wakeup pipe that a watcher thread reads). With several workers the flag is all-reduced
before every step, so every worker stops at the same step and the checkpoint of that step is written by all.
`tf.distribute.experimental.PreemptionCheckpointHandler` could only save at its `run` calls -- here, whole
loops -- so it is not used.
"""

import os
import signal
import threading
import time

import tensorflow as tf

TARGET_SECONDS = 30.0
FIRST_LOOP_STEPS = 5  # the first loop also compiles; the second measures the speed


class Stopped(Exception):
  """The run stopped on a signal after `step`, whose checkpoint `save` wrote."""

  def __init__(self, signal_name, step):
    super().__init__(f'{signal_name} at step {step}')
    self.signal_name = signal_name
    self.step = step


class StopSignals:
  """Inside `with`, SIGTERM and SIGINT set `flag` (tf.Variable) at once; a second SIGINT interrupts as usual."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.flag = tf.Variable(False, trainable=False, name='stop_requested')
    self.received = None
    self._previous = {}
    self._handled = 0

  def __enter__(self):
    read_fd, self._write_fd = os.pipe()
    os.set_blocking(self._write_fd, False)
    self._previous_wakeup_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
    self._previous = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}
    self._watcher = threading.Thread(target=self._watch, args=(read_fd,), daemon=True)
    self._watcher.start()
    return self

  def _watch(self, read_fd):
    with os.fdopen(read_fd, 'rb', buffering=0) as wakeups:
      while byte := wakeups.read(1):
        if byte[0] in (int(s) for s in self.SIGNALS):
          self.received = self.received or signal.Signals(byte[0]).name
          self.flag.assign(True)

  def _on_signal(self, signum, frame):  # the Python-level handler, run later in the main thread
    del frame
    self._handled += 1
    if self._handled > 1 and signum == signal.SIGINT:  # a second Ctrl-C: do not wait for the checkpoint
      raise KeyboardInterrupt
    self.received = self.received or signal.Signals(signum).name
    self.flag.assign(True)

  @property
  def requested(self):
    return bool(self.flag.numpy())

  def __exit__(self, *exc):
    signal.set_wakeup_fd(self._previous_wakeup_fd)
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    os.close(self._write_fd)  # the watcher reads EOF and ends
    self._watcher.join(timeout=5)


def should_stop(flag, strategy):
  """The stop flag, agreed by all workers (an all-reduce of one number) when there are several."""
  if strategy.extended._in_multi_worker_mode():  # pylint: disable=protected-access
    per_replica = strategy.run(lambda: tf.cast(flag.read_value(), tf.int32))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None) > 0
  return flag.read_value()


def next_loop_steps(step, train_steps, intervals, seconds_per_step, target_seconds=TARGET_SECONDS):
  """Steps of the next inner loop: to the next multiple of any interval (checkpoint, monitor, summary) or the
  end of training, and at most ~`target_seconds` at `seconds_per_step` (`FIRST_LOOP_STEPS` before it is known)."""
  boundary = min([train_steps] + [(step // k + 1) * k for k in intervals if k and k > 0])
  longest = FIRST_LOOP_STEPS if seconds_per_step is None else max(1, int(target_seconds / seconds_per_step))
  return max(1, min(boundary - step, longest))


def run(run_steps, current_step, train_steps, checkpoint_every, intervals, after_loop, save, stop=None,
        target_seconds=TARGET_SECONDS):
  """Runs `run_steps(n)` loops until `current_step()` reaches `train_steps`.

  `run_steps` returns whether the inner loop stopped early on the (agreed) stop flag -- with several workers,
  possibly raised by another worker's signal. After each loop `after_loop(previous_step, step, seconds)`
  (summaries, progress, monitors); `save(step)` at every multiple of `checkpoint_every`, at the end, and after a
  stop -- then raises `Stopped`.
  """
  step = current_step()
  seconds_per_step = None
  loops = 0
  while step < train_steps:
    steps = next_loop_steps(step, train_steps, (checkpoint_every,) + tuple(intervals), seconds_per_step,
                            target_seconds)
    start = time.perf_counter()
    stopped = bool(run_steps(steps)) or (stop is not None and stop.requested)
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
      raise Stopped(stop.received if stop is not None and stop.received else "another worker's signal", step)
