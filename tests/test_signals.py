"""signals.py: a SIGTERM stops a running compiled loop after the step in flight."""

import os
import signal
import threading
import time

import tensorflow as tf

import signals


def test_sigterm_stops_a_running_compiled_loop_after_the_step_in_flight():
  """The main thread is inside a tf.function (where Python handlers cannot run) when SIGTERM arrives; the loop
  ends before its next step and the previous handlers are back afterwards."""
  before = signal.getsignal(signal.SIGTERM)
  steps_done = tf.Variable(0)
  with signals.StopSignals() as stop:

    @tf.function
    def train_loop(steps):
      for _ in tf.range(steps):
        if signals.should_stop(stop.flag, tf.distribute.get_strategy()):
          break
        tf.py_function(lambda: time.sleep(0.01), [], [])  # a ~10 ms step
        steps_done.assign_add(1)

    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    train_loop(tf.constant(100_000))
    timer.join()
    assert stop.requested and stop.received == 'SIGTERM'
    assert 5 < int(steps_done.numpy()) < 1000
  assert signal.getsignal(signal.SIGTERM) == before
