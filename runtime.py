"""How TensorFlow runs on this machine, settled before TensorFlow is imported.

TensorFlow's x86 wheels carry two sets of CPU kernels for convolutions and matrix products: Eigen's and oneDNN's.
On Linux it turns oneDNN on by default only on CPUs with AVX-512 VNNI / BF16, AVX-VNNI or AMX, so on AVX2-only
CPUs (most laptops, desktops and older AMD servers) a SimCLR step runs on Eigen's kernels at about half the speed
(README, Speed). `use_onednn()` sets `TF_ENABLE_ONEDNN_OPTS=1` where the user has not set it -- a value given in
the environment wins, `0` included -- and must run before the first `import tensorflow` of the process (every
entrypoint imports this module first; child processes inherit the environment). This module imports no
TensorFlow.
"""

import os
import platform

ONEDNN_VARIABLE = 'TF_ENABLE_ONEDNN_OPTS'
# Where TensorFlow's wheels build oneDNN in and its default depends on the CPU's features.
X86_MACHINES = ('x86_64', 'amd64', 'i386', 'i686')
# The CPU features (/proc/cpuinfo names) with which TensorFlow turns oneDNN on by itself on Linux
# (DefaultOneDnnPolicy in tensorflow/core/util/util.cc).
ONEDNN_DEFAULT_FEATURES = ('avx512_vnni', 'avx512_bf16', 'avx_vnni', 'amx_tile', 'amx_int8', 'amx_bf16')

# Who decided the kernels of this process, set by the first use_onednn(): 'project', 'environment' or
# 'tensorflow'.
_decided_by = None


def use_onednn(environ=None, machine=None):
  """Turns on oneDNN's CPU kernels on x86 unless `TF_ENABLE_ONEDNN_OPTS` is already set; returns who decided:
  'environment' (the user's value kept), 'project' (set to 1 here) or 'tensorflow' (not x86: its default).
  For this process (`environ` omitted) the first call decides; later ones (another entrypoint importing
  run.py) return that decision."""
  global _decided_by
  if environ is None and _decided_by is not None:
    return _decided_by
  own = environ is None
  environ = os.environ if own else environ
  machine = (machine or platform.machine()).lower()
  if ONEDNN_VARIABLE in environ:
    decided = 'environment'
  elif machine in X86_MACHINES:
    environ[ONEDNN_VARIABLE] = '1'
    decided = 'project'
  else:
    decided = 'tensorflow'
  if own:
    _decided_by = decided
  return decided


def cpu_features(cpuinfo='/proc/cpuinfo'):
  """The CPU's feature flags (Linux), or None where /proc/cpuinfo cannot be read."""
  try:
    with open(cpuinfo, encoding='utf-8', errors='replace') as f:
      for line in f:
        if line.startswith('flags'):
          return frozenset(line.split(':', 1)[1].split())
  except OSError:
    pass
  return None


def tensorflow_default(features):
  """What TensorFlow would choose by itself on Linux with these CPU features: 'oneDNN' or 'Eigen'; None if
  the features are unknown."""
  if features is None:
    return None
  return 'oneDNN' if features & set(ONEDNN_DEFAULT_FEATURES) else 'Eigen'


def onednn_enabled():
  """Whether TensorFlow runs its oneDNN kernels in this process (imports TensorFlow)."""
  from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-import-not-at-top
  return bool(_pywrap_util_port.IsMklEnabled())


def describe_kernels(features=None):
  """One line: which CPU kernels TensorFlow uses here, who chose them, and what TensorFlow would have chosen
  (for -v and benchmark.py)."""
  value = os.environ.get(ONEDNN_VARIABLE)
  why = {
      'project': f'{ONEDNN_VARIABLE}=1 set by this project',
      'environment': f'{ONEDNN_VARIABLE}={value} from the environment',
  }.get(_decided_by, 'TensorFlow\'s default for this CPU')
  features = cpu_features() if features is None else features
  default = tensorflow_default(features) if platform.system() == 'Linux' else None
  if default == 'oneDNN':
    why += ('; TensorFlow\'s own default here is oneDNN too (this CPU has ' +
            ', '.join(sorted(features & set(ONEDNN_DEFAULT_FEATURES))) + ')')
  elif default == 'Eigen':
    why += ('; TensorFlow\'s own default here is Eigen (this CPU has no AVX-512 VNNI/BF16, AVX-VNNI or AMX), '
            'about half as fast')
  kind = 'oneDNN' if onednn_enabled() else 'Eigen'
  return f'CPU kernels: {kind} ({why}); {platform.machine()}, {os.cpu_count()} CPUs.'
