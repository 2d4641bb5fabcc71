"""SimCLR and SimCLRv2 models in PyTorch, computing what the TensorFlow models compute.

    import simclr_torch
    model = simclr_torch.load('runs/x/torch/1000')                 # an nn.Module in eval mode
    images = simclr_torch.preprocess(uint8_images, 224)            # [N, 3, H, W] -> [N, 3, 224, 224] in [0, 1]
    outputs = model(images)                                        # {'final_avg_pool': [N, 2048], ...}

`python run.py --mode=export --export_format=torch --checkpoint=...` writes the folder: `model.safetensors` (the
weights, named as the authors' TF2 layers are) and `config.json` (the network and its heads). This file needs
only torch and safetensors: copy it into any PyTorch project. The forward pass takes NCHW float images in
[0, 1] (no mean/std normalisation, as in the authors' code) and returns the TF model's endpoints -- spatial ones
NCHW -- with TensorFlow's padding: a strided convolution pads (k-1)//2 before and the rest after, a 'SAME' pool
pads as TensorFlow does (the stem's 3x3/2 max-pool on an even size pads 0 before and 1 after, not
`nn.MaxPool2d(3, 2, padding=1)`'s 1 and 1) and a stride-1 'SAME' average pool leaves the padding out of the mean.
`preprocess` is the authors' evaluation crop: the centred 87.5% (above 32 px), resized with TensorFlow's bicubic
kernel (Keys a = -0.5), not torchvision's (a = -0.75).
"""

import json
import os

import torch
from torch import nn
import torch.nn.functional as F
from safetensors.torch import load_file

BATCH_NORM_EPSILON = 1e-5


def _same_pads(size, kernel, stride):
  """(before, after) padding of TensorFlow's 'SAME' along a side of `size`."""
  total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


class FixedPaddingConv(nn.Module):
  """A bias-free convolution: strided ones pad (k-1)//2 before and the rest after, stride 1 is 'SAME'."""

  def __init__(self, weight_shape, stride):
    super().__init__()
    out, cin, k, _ = weight_shape
    self.pad = ((k - 1) // 2, k - 1 - (k - 1) // 2) if stride > 1 else None
    self.conv2d = nn.Conv2d(cin, out, k, stride, padding=k // 2 if stride == 1 else 0, bias=False)

  def forward(self, x):
    if self.pad:
      x = F.pad(x, (self.pad[0], self.pad[1], self.pad[0], self.pad[1]))
    return self.conv2d(x)


class BatchNormRelu(nn.Module):
  def __init__(self, channels, relu, dims=2):
    super().__init__()
    self.relu = relu
    self.bn = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(channels, eps=BATCH_NORM_EPSILON, momentum=0.1)

  def forward(self, x):
    x = self.bn(x)
    return F.relu(x) if self.relu else x


def max_pool_same(x, kernel=3, stride=2):
  (top, bottom), (left, right) = (_same_pads(int(s), kernel, stride) for s in x.shape[-2:])  # ints: ONNX's pads
  return F.max_pool2d(F.pad(x, (left, right, top, bottom), value=float('-inf')), kernel, stride)


def avg_pool_same(x):
  """TensorFlow's 2x2 stride-1 'SAME' average pool: the one padded row and column do not count."""
  sums = F.avg_pool2d(F.pad(x, (0, 1, 0, 1)), 2, 1) * 4
  counts = F.avg_pool2d(F.pad(torch.ones_like(x[:1, :1]), (0, 1, 0, 1)), 2, 1) * 4
  return sums / counts


class SelectiveKernel(nn.Module):
  """SimCLRv2's selective-kernel 3x3 convolution: two 3x3 streams mixed by a softmax attention."""

  def __init__(self, weights, key, stride):
    super().__init__()
    self.conv2d_fixed_padding = FixedPaddingConv(weights[key + '.conv2d_fixed_padding.conv2d.weight'].shape, stride)
    self.batch_norm_relu = BatchNormRelu(self.conv2d_fixed_padding.conv2d.out_channels, True)
    mid, cin = weights[key + '.conv2d_0.weight'].shape[:2]
    self.conv2d_0 = nn.Conv2d(cin, mid, 1, bias=False)
    self.batch_norm_relu_1 = BatchNormRelu(mid, True)
    self.conv2d_1 = nn.Conv2d(mid, 2 * cin, 1, bias=False)

  def forward(self, x):
    streams = torch.stack(torch.chunk(self.batch_norm_relu(self.conv2d_fixed_padding(x)), 2, dim=1))
    pooled = streams.sum(0).mean((2, 3), keepdim=True)
    mixing = torch.stack(torch.chunk(self.conv2d_1(self.batch_norm_relu_1(self.conv2d_0(pooled))), 2, dim=1))
    return (streams * torch.softmax(mixing, dim=0)).sum(0)


class SqueezeExcitation(nn.Module):
  def __init__(self, weights, key):
    super().__init__()
    mid, channels = weights[key + '.se_reduce.weight'].shape[:2]
    self.se_reduce, self.se_expand = nn.Conv2d(channels, mid, 1), nn.Conv2d(mid, channels, 1)

  def forward(self, x):
    return torch.sigmoid(self.se_expand(F.relu(self.se_reduce(x.mean((2, 3), keepdim=True))))) * x


class Block(nn.Module):
  """A basic (ResNet-18/34) or bottleneck block, with the projection shortcut on a group's first block (ResNet-D:
  average pool, then a 1x1 convolution) and optional selective kernel and squeeze-excitation."""

  def __init__(self, weights, key, config, stride, first):
    super().__init__()
    basic = config['block'] == 'basic'
    self.names = ('conv2d_bn_layers', 'shortcut_layers') if basic else ('conv_relu_dropblock_layers',
                                                                          'projection_layers')
    self.stride, self.resnet_d = stride, config['resnet_d']
    main = f'{key}.{self.names[0]}'
    shortcut = nn.ModuleList()
    if first:
      conv = FixedPaddingConv(weights[f'{key}.{self.names[1]}.0.conv2d.weight'].shape, 1 if self.resnet_d else stride)
      shortcut.extend([conv, BatchNormRelu(conv.conv2d.out_channels, False)])
    strides = [stride, 1] if basic else [1, 'sk' if config['sk_ratio'] else stride, 1]
    layers = nn.ModuleList()
    for n, conv_stride in enumerate(strides):
      if conv_stride == 'sk':
        layers.append(SelectiveKernel(weights, f'{main}.{len(layers)}', stride))
        continue
      conv = FixedPaddingConv(weights[f'{main}.{len(layers)}.conv2d.weight'].shape, conv_stride)
      layers.extend([conv, BatchNormRelu(conv.conv2d.out_channels, relu=n < len(strides) - 1)])
    se_key = f'{key}.se_layer' if basic else f'{main}.{len(layers)}'
    se = SqueezeExcitation(weights, se_key) if se_key + '.se_reduce.weight' in weights else None
    if se is not None and not basic:
      layers.append(se)
    self.se_layer = se if basic else None
    setattr(self, self.names[0], layers)
    setattr(self, self.names[1], shortcut)

  def forward(self, x):
    shortcut = x
    layers = getattr(self, self.names[1])
    if len(layers):
      if self.resnet_d:
        shortcut = F.avg_pool2d(F.pad(x, (0, 1, 0, 1)), 2, 2) if self.stride > 1 else avg_pool_same(x)
      shortcut = layers[1](layers[0](shortcut))
    for layer in getattr(self, self.names[0]):
      x = layer(x)
    if self.se_layer is not None:
      x = self.se_layer(x)
    return F.relu(x + shortcut)


class ResNet(nn.Module):
  def __init__(self, weights, config):
    super().__init__()
    key = 'resnet_model.initial_conv_relu_max_pool'
    strides = {'cifar': [1], 'imagenet': [2], 'resnet_d': [2, 1, 1]}[config['stem']]
    self.initial_conv_relu_max_pool = nn.ModuleList()
    for i, stride in enumerate(strides):
      conv = FixedPaddingConv(weights[f'{key}.{2 * i}.conv2d.weight'].shape, stride)
      self.initial_conv_relu_max_pool.extend([conv, BatchNormRelu(conv.conv2d.out_channels, True)])
    self.max_pool = config['stem'] != 'cifar'
    self.block_groups = nn.ModuleList()
    for g, blocks in enumerate(config['blocks_per_group']):
      group = nn.Module()
      group.layers = nn.ModuleList(
          Block(weights, f'resnet_model.block_groups.{g}.layers.{b}', config, (1, 2, 2, 2)[g] if b == 0 else 1, b == 0)
          for b in range(blocks))
      self.block_groups.append(group)

  def forward(self, x):
    endpoints = {}
    stem = self.initial_conv_relu_max_pool
    for i in range(0, len(stem), 2):
      x = stem[i](x)
      endpoints['initial_conv'] = x
      x = stem[i + 1](x)
    endpoints['initial_max_pool'] = x = max_pool_same(x) if self.max_pool else x
    for g, group in enumerate(self.block_groups):
      for block in group.layers:
        x = block(x)
      endpoints[f'block_group{g + 1}'] = x
    endpoints['final_avg_pool'] = x.mean((2, 3))
    return endpoints


class LinearLayer(nn.Module):
  def __init__(self, weights, key, bn):
    super().__init__()
    out, cin = weights[key + '.dense.weight'].shape
    self.dense = nn.Linear(cin, out, bias=key + '.dense.bias' in weights)
    self.bn_relu = BatchNormRelu(out, False, dims=1) if bn else None

  def forward(self, x):
    x = self.dense(x)
    return self.bn_relu(x) if self.bn_relu is not None else x


class SimCLR(nn.Module):
  """Encoder, projection head and (where the model has one) supervised head; `forward(images)` returns the
  endpoints of the TensorFlow model (`config['endpoints']`)."""

  def __init__(self, weights, config):
    super().__init__()
    self.config = config
    self.resnet_model = ResNet(weights, config)
    self.projection_head = nn.Module()
    self.projection_head.linear_layers = nn.ModuleList(
        LinearLayer(weights, f'projection_head.linear_layers.{j}', True) for j in range(config['proj_layers']))
    head = config['supervised_head']
    self.supervised_head = None
    if head:
      self.supervised_head = nn.Module()
      self.supervised_head.linear_layer = LinearLayer(weights, 'supervised_head.linear_layer', False)

  def forward(self, images):
    outputs = self.resnet_model(images)
    hiddens = [outputs['final_avg_pool']]
    layers = self.projection_head.linear_layers
    for j, layer in enumerate(layers):
      hiddens.append(F.relu(layer(hiddens[-1])) if j < len(layers) - 1 else layer(hiddens[-1]))
    outputs.update(proj_head_input=hiddens[0], proj_head_output=hiddens[-1])
    head = self.config['supervised_head']
    if head:
      features = outputs[head['endpoint']] if head['endpoint'] else hiddens[head['proj_layer']]
      features = features.mean((2, 3)) if features.dim() == 4 else features
      outputs['logits_sup'] = self.supervised_head.linear_layer(features)
    return outputs


def load(path, device='cpu'):
  """The model in `path` (config.json + model.safetensors), in eval mode (BatchNorm on its moving statistics)."""
  with open(os.path.join(path, 'config.json'), encoding='utf-8') as f:
    config = json.load(f)
  weights = load_file(os.path.join(path, 'model.safetensors'), device=str(device))
  model = SimCLR(weights, config)
  model.load_state_dict(weights, strict=True)
  return model.to(device).eval()


def _bicubic_matrix(in_size, out_size):
  """[out_size, in_size] weights of TensorFlow's bicubic resize along one axis (half-pixel centres, Keys cubic
  with a = -0.5 tabulated at 1/1024, taps outside the image dropped and the rest renormalised)."""
  a, table_size = -0.5, 1024
  x = torch.arange(table_size + 1, dtype=torch.float64) / table_size
  near = (((a + 2) * x - (a + 3)) * x * x + 1).float()  # |distance| in [0, 1]
  x = x + 1
  far = (((a * x - 5 * a) * x + 8 * a) * x - 4 * a).float()  # |distance| in [1, 2]
  centres = (torch.arange(out_size, dtype=torch.float32) + 0.5) * torch.tensor(in_size / out_size) - 0.5
  floor = torch.floor(centres)
  offset = torch.round((centres - floor) * table_size).long()  # lrintf: ties to even, as torch.round
  taps = torch.stack([far[offset], near[offset], near[table_size - offset], far[table_size - offset]], 1)
  index = floor.long()[:, None] + torch.arange(-1, 3)[None, :]
  taps = taps * ((index >= 0) & (index < in_size))
  taps = taps / taps.sum(1, keepdim=True)
  return torch.zeros(out_size, in_size).scatter_add_(1, index.clamp(0, in_size - 1), taps)


def preprocess(images, size, crop_proportion=0.875):
  """The authors' evaluation view: `[N, 3, H, W]` (or `[3, H, W]`) images, uint8 or float in [0, 1], all one
  size -> float32 `[N, 3, size, size]` in [0, 1]: the centred `crop_proportion` of the shorter side (images of 32
  px or less are not cropped, as the authors do), resized bicubically as TensorFlow does, clipped to [0, 1]."""
  images = images[None] if images.dim() == 3 else images
  height, width = images.shape[-2:]
  if size > 32:
    side = round(crop_proportion * min(height, width))  # ties to even, as tf.math.rint
    top, left = (height - side + 1) // 2, (width - side + 1) // 2
    images = images[..., top:top + side, left:left + side]
  values = images.float()  # uint8 values are resized as they are, then scaled, as TensorFlow does
  if values.shape[-2:] != (size, size):
    rows, columns = (_bicubic_matrix(n, size).to(values.device) for n in values.shape[-2:])
    values = rows @ values @ columns.T
  if images.dtype == torch.uint8:
    values = values * (1.0 / 255.0)
  return values.clamp(0.0, 1.0)
