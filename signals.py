"""How a run stops on SIGTERM / SIGINT: after the step in flight, with that step checkpointed.

SIGTERM -- what Kubernetes, Slurm, preemptible VMs and TPU maintenance send before stopping a job -- and SIGINT
stop the run after the step in flight: `StopSignals` sets a variable that the inner loop (train.py) reads before
every step, at once even while the main thread is inside TensorFlow (where Python signal handlers cannot run:
the C-level handler writes to a wakeup pipe that a watcher thread reads). With several workers the flag is
all-reduced before every step, so every worker stops at the same step and the checkpoint of that step is written
by all. `tf.distribute.experimental.PreemptionCheckpointHandler` could only save at its `run` calls -- here,
whole loops -- so it is not used.
"""

import os
import signal
import threading
import typing

import tensorflow as tf


class Stopped(Exception):
  """The run stopped on a signal after `step`, whose checkpoint `save` wrote."""

  def __init__(self, signal_name: str, step: int) -> None:
    super().__init__(f'{signal_name} at step {step}')
    self.signal_name = signal_name
    self.step = step


class StopSignals:
  """Inside `with`, SIGTERM and SIGINT set `flag` (tf.Variable) at once; a second SIGINT interrupts as usual."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self) -> None:
    self.flag = tf.Variable(False, trainable=False, name='stop_requested')
    self.received = None
    self._previous = {}
    self._handled = 0

  def __enter__(self) -> 'StopSignals':
    read_fd, self._write_fd = os.pipe()
    os.set_blocking(self._write_fd, False)
    self._previous_wakeup_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
    self._previous = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}
    self._watcher = threading.Thread(target=self._watch, args=(read_fd,), daemon=True)
    self._watcher.start()
    return self

  def _watch(self, read_fd: int) -> None:
    with os.fdopen(read_fd, 'rb', buffering=0) as wakeups:
      while byte := wakeups.read(1):
        if byte[0] in (int(s) for s in self.SIGNALS):
          self.received = self.received or signal.Signals(byte[0]).name
          self.flag.assign(True)

  def _on_signal(self, signum: int, frame: object) -> None:  # the Python-level handler, run later in the main thread
    del frame
    self._handled += 1
    if self._handled > 1 and signum == signal.SIGINT:  # a second Ctrl-C: do not wait for the checkpoint
      raise KeyboardInterrupt
    self.received = self.received or signal.Signals(signum).name
    self.flag.assign(True)

  @property
  def requested(self) -> bool:
    return bool(self.flag.numpy())

  def __exit__(self, *exc: typing.Any) -> None:
    signal.set_wakeup_fd(self._previous_wakeup_fd)
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    os.close(self._write_fd)  # the watcher reads EOF and ends
    self._watcher.join(timeout=5)


def should_stop(flag: tf.Variable, strategy: tf.distribute.Strategy) -> tf.Tensor:
  """The stop flag, agreed by all workers (an all-reduce of one number) when there are several."""
  if strategy.extended._in_multi_worker_mode():  # pylint: disable=protected-access
    per_replica = strategy.run(lambda: tf.cast(flag.read_value(), tf.int32))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None) > 0
  return flag.read_value()
