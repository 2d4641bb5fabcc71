"""What a user sees while a run goes: a status line per phase, a progress line per loop (a bar on a terminal),
and none of the libraries' noise unless asked for.

TensorFlow prints CUDA probing and oneDNN notices from C++ while it loads (before any log level applies),
TFDS and Keras warn about their own deprecations, and tf.data logs internal timings: nothing a user of this
project can act on. `quiet(...)` hides them -- not this project's own warnings, and never an error --
unless `--verbosity` / `-v` / `--logtostderr` / `--alsologtostderr` is given, which brings all of it back.
This module imports no TensorFlow, so run.py can use it before TensorFlow loads.
"""

import contextlib
import logging
import os
import sys
import time
import typing
import warnings

DETAIL_FLAGS = ('--verbosity', '-v', '--v', '--logtostderr', '--alsologtostderr')
# Library modules whose Python warnings are noise to a user of this project.
LIBRARY_MODULES = r'(tensorflow|tensorflow_datasets|keras|tf_keras|absl|google|tensorboard|array_record|etils)(\..*)?'


def wants_detail(argv: typing.Sequence[str]) -> bool:
  """Whether the command line asks for the libraries' logs (absl's verbosity / logtostderr flags)."""
  return any(arg == flag or arg.startswith(flag + '=') for arg in argv[1:] for flag in DETAIL_FLAGS)


@contextlib.contextmanager
def native_stderr_silenced(enabled: bool = True) -> typing.Iterator[None]:
  """Sends what C++ code writes to stderr to /dev/null inside the block (Python exceptions still show)."""
  if not enabled:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


class _ProjectOnly(logging.Filter):
  """Keeps errors, and warnings from files under `root`; drops the libraries' info and warnings."""

  def __init__(self, root: str) -> None:
    super().__init__()
    self.root = os.path.abspath(root) + os.sep

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or (
        record.levelno >= logging.WARNING and os.path.abspath(record.pathname).startswith(self.root) and
        os.sep + '.venv' + os.sep not in record.pathname and 'site-packages' not in record.pathname)


def quiet(project_root: str) -> logging.Filter:
  """Python side of the quiet default: this project's warnings and every error stay, as `LEVEL: message`;
  the libraries' warnings (`warnings` module and log records) and their info lines go. Returns the filter."""
  warnings.filterwarnings('ignore', module=LIBRARY_MODULES)
  keep = _ProjectOnly(project_root)
  for logger in (logging.getLogger(), logging.getLogger('tensorflow')):  # TensorFlow's logger has its own
    for handler in logger.handlers:
      handler.addFilter(keep)
      handler.setFormatter(logging.Formatter('%(levelname)s: %(message)s'))
  return keep


def status(message: str) -> None:
  """One line on stdout, at once: what the run is doing now (preparing data, compiling, ...)."""
  print(message, flush=True)


def duration(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m' if seconds >= 3600 else \
      f'{seconds // 60}m{seconds % 60:02d}s'


class Progress:
  """A progress bar on a terminal, one line per loop otherwise: step, the values of `columns` -- (metric name,
  label, format) -- present in a loop's values, images per second, learning rate and time left.

  In pretraining, `loss` / `acc` are the online linear head's (`head_loss` / `head_acc`): they are not
  what pretraining optimises, and with the encoder's learning rate they can spike early on. `total_steps` may
  be None until a time budget fixes it (`step 5/?`); with a `deadline` (time.monotonic()) the time left counts
  down to it.
  """

  def __init__(self, start_step: int, total_steps: typing.Optional[int], batch_size: int,
               columns: typing.Sequence[tuple[str, str, str]], pretrain: bool = False,
               deadline: typing.Optional[float] = None, stream: typing.Optional[typing.TextIO] = None) -> None:
    self.last_step = start_step
    self.total_steps = total_steps
    self.batch_size = batch_size
    self.pretrain = pretrain
    self.deadline = deadline
    self._columns = [(name, 'head_' + label if pretrain and label in ('loss', 'acc') else label, fmt)
                     for name, label, fmt in columns]
    self.stream = stream or sys.stdout
    self.bar = None
    if self.stream.isatty():
      import keras  # pylint: disable=g-import-not-at-top
      self.bar = keras.utils.Progbar(total_steps, stateful_metrics=[label for _, label, _ in self._columns] +
                                     ['img/s', 'lr'])

  def update(self, step: int, seconds: float, values: dict[str, float], learning_rate: float) -> None:
    steps_done = max(step - self.last_step, 1)
    self.last_step = step
    images_per_sec = steps_done * self.batch_size / max(seconds, 1e-9)
    shown = [(label, values[name], fmt) for name, label, fmt in self._columns if name in values]
    if self.bar is not None:
      self.bar.target = self.total_steps
      self.bar.update(step, [(label, value) for label, value, _ in shown] +
                      [('img/s', images_per_sec), ('lr', learning_rate)])
      return
    if self.deadline is not None:
      eta = max(0.0, self.deadline - time.monotonic())
    else:
      eta = (self.total_steps - step) * seconds / steps_done
    columns = ''.join(f' | {label} {value:{fmt}}' for label, value, fmt in shown)
    total = '?' if self.total_steps is None else self.total_steps
    print(f'step {step}/{total}{columns} | {images_per_sec:.0f} img/s | lr {learning_rate:.3g} | '
          f'ETA {duration(eta)}', file=self.stream, flush=True)
