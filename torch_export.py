"""Any model this project reads -- its own runs, the SimCLR authors' SavedModels and tf2 checkpoints -- for PyTorch
and ONNX Runtime, computing what the TensorFlow model computes.

`--export_format=torch` writes `<model_dir>/torch/<step>/`: `model.safetensors` (the weights, read straight from
the file, no TensorFlow model built: a full-width ResNet-50 in seconds), `config.json` (the network, its heads
and endpoints), `simclr_torch.py` (the module that builds the network from those two; torch and safetensors are
all it needs) and, for a plain ResNet-50/101/152, `torchvision.safetensors` under torchvision's key names.
Writing needs numpy and safetensors only. `--export_format=onnx` writes `<model_dir>/onnx/<step>/model.onnx`
(dynamic batch) with `torch.onnx.export` of that module: it needs torch and onnx.

Names: a weight's torch name is its structural key (architecture.py) with '/' as '.', the layout PyTorch's
(convolutions [out, in, kh, kw], dense layers [out, in]) and BatchNorm's `running_mean` / `running_var`.
"""

import json
import os
import shutil
import tempfile
import typing
import warnings

import numpy as np
import tensorflow as tf

import architecture
import resnet_shapes
import rundir

ROOT = os.path.dirname(os.path.abspath(__file__))
TORCH_MODULE = os.path.join(ROOT, 'simclr_torch.py')
FORMAT_VERSION = 'simclr_torch 1'
# TF variable names -> torch's.
_LEAVES = {'kernel': 'weight', 'bias': 'bias', 'gamma': 'weight', 'beta': 'bias', 'moving_mean': 'running_mean',
           'moving_variance': 'running_var'}
# torchvision.models.resnet50/101/152 (v1.5: the stride on the 3x3 convolution, as in SimCLR's bottleneck).
TORCHVISION_DEPTHS = (50, 101, 152)


def torch_name(key: str) -> str:
  """A structural key's torch name: `_projection_head/linear_layers/0/dense/kernel` ->
  `projection_head.linear_layers.0.dense.weight`."""
  parts = key.split('/')
  parts[0] = parts[0].lstrip('_')
  parts[-1] = _LEAVES[parts[-1]]
  return '.'.join(parts)


def torch_state(file: architecture.ModelFile) -> dict[str, np.ndarray]:
  """{torch name: numpy array} of every variable of `file` (architecture.ModelFile), in PyTorch's layouts, with
  what PyTorch's BatchNorm has and TF's may not: a zero beta where TF's has none (center=False), and
  `num_batches_tracked`."""
  reader = tf.train.load_checkpoint(file.prefix)
  state = {}
  try:
    for key, (checkpoint_key, _) in sorted(file.tensors.items()):
      value = reader.get_tensor(checkpoint_key).astype(np.float32)
      if key.endswith('kernel'):
        value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
      state[torch_name(key)] = np.ascontiguousarray(value)
  except architecture.UNREADABLE as error:
    raise architecture.ModelFileError(f'{file.path} cannot be read ({architecture.first_line(error)}).') from None
  for name in [n for n in state if n.endswith('.running_mean')]:
    bn = name[:-len('running_mean')]
    state.setdefault(bn + 'bias', np.zeros_like(state[name]))
    state[bn + 'num_batches_tracked'] = np.zeros([], np.int64)
  return state


def torch_config(file: architecture.ModelFile) -> dict:
  """config.json: what simclr_torch.SimCLR builds (channel counts come from the weights' shapes)."""
  arch = file.architecture
  block, blocks = resnet_shapes.ARCHITECTURES[arch.resnet_depth]
  head = None
  if arch.num_classes is not None:
    endpoint = arch.linear_eval_endpoint if arch.linear_eval_endpoint not in (None, 'final_avg_pool') else None
    head = {'num_classes': arch.num_classes, 'proj_layer': None if endpoint else arch.ft_proj_selector,
            'endpoint': endpoint}
  return {
      'format': FORMAT_VERSION,
      'network': arch.describe(),
      'source': file.describe(),
      'step': file.step,
      'resnet_depth': arch.resnet_depth,
      'width_multiplier': arch.width_multiplier,
      'block': block,
      'blocks_per_group': list(blocks),
      'stem': 'cifar' if arch.cifar_stem else 'resnet_d' if arch.sk_ratio > 0 else 'imagenet',
      'resnet_d': arch.sk_ratio > 0,
      'sk_ratio': arch.sk_ratio,
      'se_ratio': arch.se_ratio,
      'proj_layers': arch.num_proj_layers,
      'proj_out_dim': arch.proj_out_dim if arch.num_proj_layers else None,
      'supervised_head': head,
      'endpoints': list(resnet_shapes.ENDPOINTS) + ['proj_head_input', 'proj_head_output'] + (
          ['logits_sup'] if head else []),
      'input': 'NCHW float32 images in [0, 1], not normalised; spatial endpoints are NCHW',
      'image_size': 32 if arch.cifar_stem else 224,
  }


def torchvision_state(state: dict[str, np.ndarray], config: dict) -> typing.Optional[dict[str, np.ndarray]]:
  """The encoder (and a classifier on its pooled features, `fc`) under torchvision.models.resnet50/101/152's key
  names, or None when the network is not one of those (CIFAR stem, selective kernels, squeeze-excitation, other
  widths or depths). torchvision's stem max-pool pads 1 on each side where TensorFlow pads 0 and 1: replace it
  (`model.maxpool = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.MaxPool2d(3, 2))`) for the same outputs."""
  if (config['resnet_depth'] not in TORCHVISION_DEPTHS or config['width_multiplier'] != 1 or
      config['stem'] != 'imagenet' or config['se_ratio']):
    return None
  renamed = {}
  for name, value in state.items():
    parts = name.split('.')
    if name.startswith('resnet_model.initial_conv_relu_max_pool.'):
      new = ('conv1.' if parts[2] == '0' else 'bn1.') + parts[-1]
    elif name.startswith('resnet_model.block_groups.'):
      g, b, kind, i = parts[2], parts[4], parts[5], int(parts[6])
      prefix = f'layer{int(g) + 1}.{b}.'
      if kind == 'projection_layers':
        new = prefix + f'downsample.{i}.' + parts[-1]
      else:
        new = prefix + (f'conv{i // 2 + 1}.' if i % 2 == 0 else f'bn{i // 2 + 1}.') + parts[-1]
    elif name.startswith('supervised_head.') and config['supervised_head'] and not (
        config['supervised_head']['endpoint'] or config['supervised_head']['proj_layer']):
      new = 'fc.' + parts[-1]
    else:
      continue
    renamed[new] = value
  return renamed


def _write(model_dir: str, step: int, export_format: str, keep: int, write: typing.Callable[[str], None]) -> str:
  """`write(folder)` into a local temporary folder, copied (tf.io.gfile: gs:// too) into rundir.replace_export of
  `<model_dir>/<format>/<step>/`, the newest `keep` kept; a full disk (or any other write error) is one line
  naming the export, with nothing left under its name."""
  final = rundir.export_path(model_dir, step, export_format)

  def write_and_copy(folder):
    local = tempfile.mkdtemp(prefix='simclr-export-')
    try:
      write(local)
      for name in sorted(os.listdir(local)):
        tf.io.gfile.copy(os.path.join(local, name), os.path.join(folder, name), overwrite=True)
    finally:
      shutil.rmtree(local, ignore_errors=True)

  try:
    rundir.replace_export(final, write_and_copy)
  except (OSError, tf.errors.OpError) as error:
    if tf.io.gfile.exists(final + '.tmp'):
      tf.io.gfile.rmtree(final + '.tmp')
    raise architecture.ModelFileError(f'cannot write the export {final}: {architecture.first_line(error)}') from None
  rundir.keep_newest_exports(model_dir, keep, export_format)
  return final


def export_torch(file: architecture.ModelFile, model_dir: str, keep: int = 1) -> str:
  """Writes `<model_dir>/torch/<step>/` for `file` (architecture.ModelFile); returns the path."""
  try:
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise architecture.ModelFileError('--export_format=torch needs safetensors (requirements.txt): pip install '
                                      'safetensors') from None
  state, config = torch_state(file), torch_config(file)
  torchvision = torchvision_state(state, config)
  config['torchvision'] = (f'torchvision.models.resnet{config["resnet_depth"]}' if torchvision else None)

  def write(folder):
    save_file(state, os.path.join(folder, 'model.safetensors'), metadata={'format': FORMAT_VERSION})
    if torchvision:
      save_file(torchvision, os.path.join(folder, 'torchvision.safetensors'), metadata={'format': 'torchvision'})
    with open(os.path.join(folder, 'config.json'), 'w', encoding='utf-8') as f:
      json.dump(config, f, indent=1)
    shutil.copy(TORCH_MODULE, os.path.join(folder, 'simclr_torch.py'))

  return _write(model_dir, file.step, 'torch', keep, write)


def export_onnx(file: architecture.ModelFile, model_dir: str, keep: int = 1,
                image_size: typing.Optional[int] = None) -> str:
  """Writes `<model_dir>/onnx/<step>/model.onnx` for `file`: simclr_torch's module through torch.onnx.export,
  one input `images` [batch, 3, S, S] -- S: `image_size`, by default 32 for the CIFAR stem and 224 otherwise;
  the padding of the stem's 'SAME' max-pool is fixed for it -- and the endpoints as named outputs."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import onnx  # pylint: disable=g-import-not-at-top,unused-import
    import simclr_torch  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise architecture.ModelFileError(f'--export_format=onnx needs PyTorch and onnx ({error}): pip install torch '
                                      'onnx onnxscript safetensors') from None
  state, config = torch_state(file), torch_config(file)
  weights = {name: torch.from_numpy(value) for name, value in state.items()}
  model = simclr_torch.SimCLR(weights, config)
  model.load_state_dict(weights, strict=True)
  model.eval()
  names = config['endpoints']

  class Outputs(torch.nn.Module):  # ONNX has no dict outputs: the endpoints in config.json's order
    def __init__(self):
      super().__init__()
      self.model = model

    def forward(self, images):
      outputs = self.model(images)
      return tuple(outputs[name] for name in names)

  size = config['image_size'] = image_size or config['image_size']

  def write(folder):
    with torch.no_grad(), warnings.catch_warnings():
      warnings.simplefilter('ignore')  # the tracer's notes that the padding is fixed for this size
      torch.onnx.export(Outputs(), (torch.zeros(2, 3, size, size),), os.path.join(folder, 'model.onnx'),
                        input_names=['images'], output_names=names, dynamo=False, opset_version=17,
                        dynamic_axes={'images': {0: 'batch'}, **{name: {0: 'batch'} for name in names}})
    with open(os.path.join(folder, 'config.json'), 'w', encoding='utf-8') as f:
      json.dump(config, f, indent=1)

  return _write(model_dir, file.step, 'onnx', keep, write)
