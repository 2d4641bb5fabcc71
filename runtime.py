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
import typing

ONEDNN_VARIABLE = 'TF_ENABLE_ONEDNN_OPTS'
# Where TensorFlow's wheels build oneDNN in and its default depends on the CPU's features.
X86_MACHINES = ('x86_64', 'amd64', 'i386', 'i686')
# The CPU features (/proc/cpuinfo names) with which TensorFlow turns oneDNN on by itself on Linux
# (DefaultOneDnnPolicy in tensorflow/core/util/util.cc).
ONEDNN_DEFAULT_FEATURES = ('avx512_vnni', 'avx512_bf16', 'avx_vnni', 'amx_tile', 'amx_int8', 'amx_bf16')

# Who decided the kernels of this process, set by the first use_onednn(): 'project', 'environment' or
# 'tensorflow'.
_decided_by = None


def use_onednn(environ: typing.Optional[typing.MutableMapping[str, str]] = None,
               machine: typing.Optional[str] = None) -> str:
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


def cpu_features(cpuinfo: str = '/proc/cpuinfo') -> typing.Optional[frozenset[str]]:
  """The CPU's feature flags (Linux), or None where /proc/cpuinfo cannot be read."""
  try:
    with open(cpuinfo, encoding='utf-8', errors='replace') as f:
      for line in f:
        if line.startswith('flags'):
          return frozenset(line.split(':', 1)[1].split())
  except OSError:
    pass
  return None


def tensorflow_default(features: typing.Optional[typing.AbstractSet[str]]) -> typing.Optional[str]:
  """What TensorFlow would choose by itself on Linux with these CPU features: 'oneDNN' or 'Eigen'; None if
  the features are unknown."""
  if features is None:
    return None
  return 'oneDNN' if features & set(ONEDNN_DEFAULT_FEATURES) else 'Eigen'


def onednn_enabled() -> bool:
  """Whether TensorFlow runs its oneDNN kernels in this process (imports TensorFlow)."""
  from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-import-not-at-top
  return bool(_pywrap_util_port.IsMklEnabled())


def describe_kernels(features: typing.Optional[typing.AbstractSet[str]] = None) -> str:
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


# CPU features (/proc/cpuinfo names) of bfloat16 arithmetic units: Intel AMX, and AVX-512 BF16 (Intel Cooper Lake
# and Sapphire Rapids on, AMD Zen 4 on). Without them oneDNN emulates bfloat16, several times slower than float32.
BF16_CPU_FEATURES = ('amx_bf16', 'avx512_bf16')


def choose_precision(use_tpu: bool = False, gpu_compute_capabilities: typing.Sequence[tuple[int, int]] = (),
                     features: typing.Optional[typing.AbstractSet[str]] = None) -> tuple[str, str]:
  """(Keras dtype policy, why) for `--precision=auto` on this hardware.

  TPUs and CPUs with bfloat16 units: mixed_bfloat16 (float32 variables, optimizer and loss); they compute bf16
  products at several times the float32 rate, and bfloat16 keeps float32's range, so no loss scaling. GPUs:
  mixed_bfloat16 from compute capability 8.0 (Ampere: bf16 tensor cores), mixed_float16 with dynamic loss
  scaling on 7.x (Volta, Turing: float16 tensor cores only), as TensorFlow's mixed-precision guide advises;
  float32 on older GPUs and on CPUs without bfloat16 units. `features`: the CPU's flags (default: this CPU's).
  """
  if use_tpu:
    return 'mixed_bfloat16', 'a TPU computes in bfloat16'
  if gpu_compute_capabilities:
    lowest = min(gpu_compute_capabilities)
    name = f'GPU compute capability {lowest[0]}.{lowest[1]}'
    if lowest >= (8, 0):
      return 'mixed_bfloat16', f'{name} has bfloat16 tensor cores'
    if lowest >= (7, 0):
      return 'mixed_float16', f'{name} has float16 tensor cores, not bfloat16 ones'
    return 'float32', f'{name} has no 16-bit tensor cores'
  features = cpu_features() if features is None else features
  units = sorted((features or set()) & set(BF16_CPU_FEATURES))
  if units and os.environ.get(ONEDNN_VARIABLE) == '0':
    return 'float32', f'{ONEDNN_VARIABLE}=0: Eigen\'s kernels emulate bfloat16, slower than float32'
  if units:
    return 'mixed_bfloat16', f'this CPU has bfloat16 units ({", ".join(units)})'
  return 'float32', 'this CPU has no bfloat16 units (AMX, AVX-512 BF16): bfloat16 would be emulated, slower'
