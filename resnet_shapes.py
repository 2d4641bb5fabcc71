"""The numbers of the SimCLR ResNets -- depths, blocks per group, endpoint names and every layer's channels --
as the authors' code computes them. No TensorFlow: run settings are checked with these before anything loads,
and resnet.py builds its layers from them.
"""

# Names of the tensors `Resnet(..., return_endpoints=True)` returns, in network order.
ENDPOINTS = ('initial_conv', 'initial_max_pool', 'block_group1', 'block_group2', 'block_group3',
             'block_group4', 'final_avg_pool')

# depth -> (block type, blocks per group).
ARCHITECTURES = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
    200: ('bottleneck', (3, 24, 36, 3)),
}
SUPPORTED_DEPTHS = tuple(sorted(ARCHITECTURES))


def channels(filters: float, width_multiplier: float) -> int:
  """Channels of a layer with `filters` at width 1x (64, 128, 256, 512, a bottleneck's 4x, an SK conv's 2x).

  Truncated, not rounded: the authors' code passes `64 * width_multiplier` (a float) to Keras 2, which truncates
  (width 0.1: 6, 12, 25, 51 channels; a bottleneck's output int(1024 * 0.1) = 102, not 4 * 25).
  """
  return int(filters * width_multiplier)


def sk_attention_width(filters: float, sk_ratio: float, min_dim: int = 32) -> int:
  """Hidden channels of a selective-kernel attention MLP, as the SimCLRv2 code sizes it (`filters`: the
  block's fractional base width, as `BlockGroup` gets it)."""
  return max(int(filters * sk_ratio), min_dim)


def se_width(filters: float, se_ratio: float) -> int:
  """Bottleneck channels of a squeeze-excitation layer, as the SimCLRv2 code sizes it (`filters` as above)."""
  return max(1, int(filters * se_ratio))


def group_widths(width_multiplier: float) -> list[float]:
  """The block groups' base widths as their layers get them: 64, 128, 256, 512 times the multiplier (floats)."""
  return [filters * width_multiplier for filters in (64, 128, 256, 512)]


def selective_kernel_widths(width_multiplier: float) -> list[int]:
  """Channels of each group's selective-kernel 2x conv (both streams) at this width."""
  return [int(2 * filters) for filters in group_widths(width_multiplier)]


def selective_kernels_fit(resnet_depth: int, width_multiplier: float) -> bool:
  """Whether selective kernels can be built at this width: a bottleneck's 2x conv is split into two equal
  streams, so its truncated width must be even (not so at width 0.1: int(2 * 25.6) = 51; the authors' code fails
  too). Basic blocks have none (`sk_ratio` gives them only the ResNet-D stem and shortcut)."""
  return expansion(resnet_depth) == 1 or all(w % 2 == 0 for w in selective_kernel_widths(width_multiplier))


def expansion(resnet_depth: int) -> int:
  """How much wider a block's output is than its base width: 1 for basic blocks, 4 for bottlenecks."""
  return 1 if ARCHITECTURES[resnet_depth][0] == 'basic' else 4


def output_width(resnet_depth: int, width_multiplier: float = 1) -> int:
  """Width of the pooled representation for a depth and width multiplier."""
  return channels(512 * expansion(resnet_depth), width_multiplier)
