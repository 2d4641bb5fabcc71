"""What network a model file holds: this project's checkpoints and SavedModel exports, and the SimCLR authors'
TF2 formats, read without their tensors.

Reading works the same way for all four formats. Each keeps its weights in a TF2 object-based checkpoint (a
SavedModel in `variables/variables`) whose object graph is the SimCLR model's own structure:
`model/resnet_model/block_groups/<g>/layers/<b>/...`, `model/_projection_head/linear_layers/<j>/...`,
`model/supervised_head/...`. This project's layers keep the authors' attribute names (resnet.py), so a variable
is identified by its *structural key* -- attribute names, and positions in the layer lists counting only the
items that hold variables (the authors' lists also hold identity, DropBlock and pooling layers) -- and by its
shape. Nothing depends on auto-numbered layer names, on which of several object paths a file's checkpoint key
happens to use (a SavedModel stores most variables under `.../variables/<n>`), or on the TensorFlow version.

`inspect(path)` reads only the object graph and shapes: the format, the global step and the network
(`Architecture`: depth from the blocks per group, width from the convolutions' channels, stem, selective
kernels, squeeze-excitation, projection head and supervised head from their layers). model_io.py reads the
tensors into a model built for it, and writes exports. Every path goes through `tf.io.gfile`, so `gs://` works
like a local path.
"""

import dataclasses
import math
import os
import re
import typing

from absl import logging
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

import model as model_lib
import resnet
import resnet_shapes
import rundir

# The structure of a SimCLR model: attribute names of the authors' tf2 code, which this project's layers keep.
LIST_ATTRIBUTES = frozenset({
    'initial_conv_relu_max_pool', 'block_groups', 'layers', 'shortcut_layers', 'conv2d_bn_layers',
    'projection_layers', 'conv_relu_dropblock_layers', 'linear_layers'})
LAYER_ATTRIBUTES = frozenset({
    'resnet_model', '_projection_head', 'supervised_head', 'linear_layer', 'se_layer', 'conv2d', 'bn', 'bn_relu',
    'dense', 'conv2d_fixed_padding', 'batch_norm_relu', 'batch_norm_relu_1', 'conv2d_0', 'conv2d_1', 'se_reduce',
    'se_expand'})
VARIABLE_ATTRIBUTES = frozenset({'kernel', 'bias', 'gamma', 'beta', 'moving_mean', 'moving_variance'})
ENCODER, PROJECTION_HEAD, SUPERVISED_HEAD = 'resnet_model', '_projection_head', 'supervised_head'
_OBJECT_GRAPH = '_CHECKPOINTABLE_OBJECT_GRAPH'
# What reading a damaged file raises: a truncated data file gives IndexError ("Read less bytes than requested").
UNREADABLE = (tf.errors.OpError, IndexError)
_VARIABLE_VALUE = 'VARIABLE_VALUE'


class ModelFileError(ValueError):
  """A model file that cannot be used as asked; the one-line message names the file."""


def first_line(error: BaseException) -> str:
  """`Class: first line` of an exception, for one-line messages."""
  return f'{error.__class__.__name__}: {str(error).strip().splitlines()[0][:200] if str(error).strip() else ""}'


# ------------------------------------------------------------------------------------------- structure


def _structural_keys(root: typing.Any, children: typing.Callable[[typing.Any], typing.Iterable[tuple[str, typing.Any]]],
                     is_variable: typing.Callable[[typing.Any], bool]) -> dict:
  """{structural key: leaf} of the variables below `root` (a model), reached through SimCLR attributes only.

  `children(node)` yields `(name, child)` edges; list items are named `<list>/<i>` (the authors' code, Keras
  3's SavedModels) or `<list>_<i>` (resnet.Layer's checkpoints). A leaf reached by several paths has one key.
  """
  raw = {}
  identity = lambda node: node if isinstance(node, int) else id(node)  # graph node ids, or live objects

  def visit(node, path, on_path):
    pending_index = bool(path) and isinstance(path[-1], str) and path[-1] in LIST_ATTRIBUTES
    for name, child in children(node):
      if identity(child) in on_path:
        continue
      if pending_index:
        segments = (int(name),) if name.isdigit() else None
      elif name in LIST_ATTRIBUTES:
        segments = (name,)
      elif (match := re.fullmatch(r'(.+)_(\d+)', name)) and match.group(1) in LIST_ATTRIBUTES:
        segments = (match.group(1), int(match.group(2)))
      elif is_variable(child) and name.lstrip('_') in VARIABLE_ATTRIBUTES:
        raw[path + (name.lstrip('_'),)] = child
        continue
      elif name in LAYER_ATTRIBUTES:
        segments = (name,)
      else:
        segments = None
      if segments is not None and not is_variable(child):
        visit(child, path + segments, on_path | {identity(child)})

  visit(root, (), {identity(root)})
  # Renumber list positions over the items that hold variables, so both codebases' lists line up.
  seen = {}
  for path in raw:
    for i, segment in enumerate(path):
      if isinstance(segment, int):
        seen.setdefault(path[:i], set()).add(segment)
  rank = {prefix: {index: r for r, index in enumerate(sorted(indices))} for prefix, indices in seen.items()}
  keys = {}
  for path, leaf in raw.items():
    key = '/'.join(str(rank[path[:i]][s]) if isinstance(s, int) else s for i, s in enumerate(path))
    if key in keys and identity(keys[key]) != identity(leaf):
      raise ModelFileError(f'two variables at {key}')
    keys[key] = leaf
  return keys


def model_variables(model: model_lib.SimCLRModel) -> dict:
  """{structural key: variable} of a `model.SimCLRModel`."""
  def children(obj):  # pylint: disable=protected-access
    return obj._trackable_children('checkpoint').items() if hasattr(obj, '_trackable_children') else ()
  # Not isinstance(obj, keras.Variable): in Keras 3.5 that is a subclass the layers' own variables are not of.
  return _structural_keys(model, children, lambda obj: isinstance(obj, tf.Variable) or hasattr(obj, 'assign'))


class _ObjectGraph:
  """The object graph of a TF2 checkpoint: nodes by id, their named children and checkpoint keys."""

  def __init__(self, prefix: str) -> None:
    self.reader = tf.train.load_checkpoint(prefix)
    self.proto = trackable_object_graph_pb2.TrackableObjectGraph()
    self.proto.ParseFromString(self.reader.get_tensor(_OBJECT_GRAPH))
    self.shapes = self.reader.get_variable_to_shape_map()

  def children(self, node_id: int) -> list[tuple[str, int]]:
    return [(child.local_name, child.node_id) for child in self.proto.nodes[node_id].children]

  def checkpoint_key(self, node_id: int) -> typing.Optional[str]:
    for attribute in self.proto.nodes[node_id].attributes:
      if attribute.name == _VARIABLE_VALUE:
        return attribute.checkpoint_key
    return None

  def child(self, node_id: int, name: str) -> typing.Optional[int]:
    return next((c for n, c in self.children(node_id) if n == name), None)

  def variables_below(self, node_id: int) -> set[int]:
    """Every variable node reachable from `node_id` through any edge."""
    found, stack, seen = set(), [node_id], {node_id}
    while stack:
      node = stack.pop()
      if self.checkpoint_key(node) is not None:
        found.add(node)
      for _, child in self.children(node):
        if child not in seen:
          seen.add(child)
          stack.append(child)
    return found


# ------------------------------------------------------------------------------------------- architecture


@dataclasses.dataclass(frozen=True)
class Architecture:
  """The network a file holds, in run.py's flag names. `num_classes` is None without a supervised head; the
  head reads layer `ft_proj_selector` of the projection head, or (linear evaluation) the average-pooled
  encoder endpoint `linear_eval_endpoint`."""
  resnet_depth: int
  width_multiplier: float
  cifar_stem: bool
  sk_ratio: float
  se_ratio: float
  proj_head_mode: str
  num_proj_layers: int
  proj_out_dim: int
  num_classes: typing.Optional[int] = None
  ft_proj_selector: int = 0
  linear_eval_endpoint: typing.Optional[str] = None

  MODEL_FLAGS = ('resnet_depth', 'width_multiplier', 'cifar_stem', 'sk_ratio', 'se_ratio', 'proj_head_mode',
                 'num_proj_layers', 'proj_out_dim')

  def model_flags(self) -> dict:
    return {name: getattr(self, name) for name in self.MODEL_FLAGS}

  def contradictions(self, given: dict) -> list[tuple[str, typing.Any, typing.Any]]:
    """[(flag, given value, file value)] for the flag values in `given` that would build another network."""
    rules = _width_rules(resnet_shapes.expansion(self.resnet_depth))
    conv_widths = lambda w: [resnet_shapes.channels(m, w) for m, _ in rules]
    filters = resnet_shapes.group_widths(self.width_multiplier)
    mode = given.get('proj_head_mode', self.proj_head_mode)
    same = {
        'width_multiplier': lambda w: conv_widths(w) == conv_widths(self.width_multiplier),
        'sk_ratio': lambda r: (r > 0) == (self.sk_ratio > 0) and (
            r == 0 or [resnet_shapes.sk_attention_width(f, r) for f in filters] ==
            [resnet_shapes.sk_attention_width(f, self.sk_ratio) for f in filters]),
        'se_ratio': lambda r: (r > 0) == (self.se_ratio > 0) and (
            r == 0 or [resnet_shapes.se_width(f, r) for f in filters] ==
            [resnet_shapes.se_width(f, self.se_ratio) for f in filters]),
        'proj_head_mode': lambda mode: {'none': 0, 'linear': 1}.get(mode, self.num_proj_layers or -1) ==
                                       self.num_proj_layers,
        'num_proj_layers': lambda n: mode != 'nonlinear' or n == self.num_proj_layers,
        'proj_out_dim': lambda d: self.num_proj_layers == 0 or d == self.proj_out_dim,
    }
    equal = lambda name, value: same[name](value) if name in same else value == getattr(self, name)
    return [(name, value, getattr(self, name)) for name, value in given.items()
            if name in self.MODEL_FLAGS and not equal(name, value)]

  def as_is_flags(self) -> dict:
    """run.py flag values that build this network with its heads as they are (to use it, not to train it)."""
    flags = dict(self.model_flags(), fine_tune_after_block=-1, zero_init_logits_layer=False)
    if self.num_classes is None:
      return dict(flags, train_mode='pretrain', lineareval_while_pretraining=False)
    if self.linear_eval_endpoint:
      return dict(flags, train_mode='linear_eval', linear_eval_endpoint=self.linear_eval_endpoint)
    return dict(flags, train_mode='finetune', ft_proj_selector=self.ft_proj_selector)

  def head_fits(self, num_classes: typing.Optional[int], train_mode: str, ft_proj_selector: int,
                linear_eval_endpoint: typing.Optional[str]) -> bool:
    """Whether the file's supervised head is the one a model of these settings has: same classes, same input."""
    if self.num_classes != num_classes:
      return False
    if train_mode == 'linear_eval':
      reads = None if linear_eval_endpoint in ('final_avg_pool', 'block_group4') else linear_eval_endpoint
      return self.linear_eval_endpoint == reads and (reads is not None or self.ft_proj_selector == 0)
    return self.linear_eval_endpoint is None and self.ft_proj_selector == model_lib.selector_index(
        ft_proj_selector, self.num_proj_layers)

  def describe(self) -> str:
    net = f'ResNet-{self.resnet_depth} x{self.width_multiplier:g}'
    net += f' SK {self.sk_ratio:g}' if self.sk_ratio else ''
    net += f' SE {self.se_ratio:g}' if self.se_ratio else ''
    net += ', CIFAR stem' if self.cifar_stem else ''
    head = (f'projection head {self.num_proj_layers} layer(s) -> {self.proj_out_dim}' if self.num_proj_layers
            else 'no projection head')
    if self.num_classes is None:
      return f'{net}, {head}, no supervised head'
    reads = self.linear_eval_endpoint or f'projection layer {self.ft_proj_selector}'
    return f'{net}, {head}, supervised head {self.num_classes} classes on {reads}'


def _solve_ratio(observed: dict[float, int], rule: typing.Callable[[float, float], int],
                 common: typing.Sequence[float]) -> typing.Optional[float]:
  """The ratio r with rule(filters, r) == value for every observed {filters: value}; `common` ones first."""
  candidates = list(common) + [v / f for f, v in observed.items()] + [(v + 0.5) / f for f, v in observed.items()]
  return next((r for r in candidates if all(rule(f, r) == v for f, v in observed.items())), None)


def _width_rules(expansion: int) -> list[tuple[int, typing.Optional[str]]]:
  """[(width at 1x, key of a conv of that width)] that tell the width multiplier: the stem's last conv (key None),
  each group's first conv and (bottlenecks) its 4x shortcut conv."""
  main, shortcut = (('conv2d_bn_layers', 'shortcut_layers') if expansion == 1 else
                    ('conv_relu_dropblock_layers', 'projection_layers'))
  rules = [(64, None)]
  for g in range(4):
    first = f'{ENCODER}/block_groups/{g}/layers/0/'
    rules.append((64 * 2 ** g, f'{first}{main}/0/conv2d/kernel'))
    if expansion > 1:
      rules.append((64 * 2 ** g * expansion, f'{first}{shortcut}/0/conv2d/kernel'))
  return rules


def _solve_width(observed: typing.Sequence[tuple[int, int]]) -> typing.Optional[float]:
  """The width multiplier with the fewest decimals that gives every observed (width at 1x, channels) as the
  authors' code does (truncating), or None. Width 0.1 gives 6, 12, 25, 51: no single conv tells it."""
  low = max(c / m for m, c in observed)
  high = min((c + 1) / m for m, c in observed)
  for decimals in range(8):
    width = math.ceil(low * 10 ** decimals - 1e-9) / 10 ** decimals
    if width < high and all(resnet_shapes.channels(m, width) == c for m, c in observed):
      return width
  return low if low < high else None


def _infer_architecture(shapes: dict[str, tuple], name: str) -> Architecture:
  """The `Architecture` whose variables have these {structural key: shape}, head position left at 0."""
  def fail(why):
    raise ModelFileError(f'{name} is not a SimCLR model this project can build: {why}.')

  def count(prefix):
    items = {int(k[len(prefix):].split('/')[0]) for k in shapes if k.startswith(prefix)}
    if items != set(range(len(items))):
      fail(f'{prefix} has items {sorted(items)}')
    return len(items)

  blocks = tuple(count(f'{ENCODER}/block_groups/{g}/layers/') for g in range(count(f'{ENCODER}/block_groups/')))
  first = f'{ENCODER}/block_groups/0/layers/0/'
  block = 'basic' if any(k.startswith(first + 'conv2d_bn_layers/') for k in shapes) else 'bottleneck'
  depth = next((d for d, spec in resnet_shapes.ARCHITECTURES.items() if spec == (block, blocks)), None)
  if depth is None:
    fail(f'{block} blocks per group {blocks} are not a ResNet-{"/".join(map(str, resnet_shapes.SUPPORTED_DEPTHS))}')
  stem_conv = ENCODER + r'/initial_conv_relu_max_pool/(\d+)/conv2d/kernel'
  stem = [shapes[key] for key in sorted((k for k in shapes if re.fullmatch(stem_conv, k)),
                                        key=lambda k: int(re.fullmatch(stem_conv, k).group(1)))]
  if not stem:
    fail('it has no stem convolution')
  cifar_stem = len(stem) == 1 and stem[0][0] == 3
  resnet_d = len(stem) == 3
  rules = _width_rules(resnet_shapes.expansion(depth))
  if any(key not in shapes for _, key in rules[1:]):
    fail('a block group\'s first block lacks a convolution')
  observed = [(m, (stem[-1] if key is None else shapes[key])[-1]) for m, key in rules]
  width = _solve_width(observed)
  if width is None:
    fail(f'no width multiplier gives its channels {[c for _, c in observed]}')
  filters = resnet_shapes.group_widths(width)
  in_block = ENCODER + r'/block_groups/\d+/layers/\d+/'
  sk_widths = {filters[int(k.split('/')[2])]: shape[-1] for k, shape in shapes.items()
               if re.fullmatch(in_block + r'conv_relu_dropblock_layers/\d+/conv2d_0/kernel', k)}
  sk_ratio = 0.0
  if sk_widths or resnet_d:
    sk_ratio = _solve_ratio(sk_widths, resnet_shapes.sk_attention_width, (0.0625,)) if sk_widths else 0.0625
    if sk_ratio is None:
      fail(f'no selective-kernel ratio gives attention widths {sk_widths}')
  se_widths = {filters[int(k.split('/')[2])]: shape[-1] for k, shape in shapes.items()
               if re.fullmatch(in_block + r'(se_layer|conv_relu_dropblock_layers/\d+)/se_reduce/kernel', k)}
  se_ratio = _solve_ratio(se_widths, resnet_shapes.se_width, (0.25, 0.0625, 0.125, 0.5)) if se_widths else 0.0
  if se_ratio is None:
    fail(f'no squeeze-excitation ratio gives widths {se_widths}')
  layers = count(f'{PROJECTION_HEAD}/linear_layers/')
  out_dim = shapes[f'{PROJECTION_HEAD}/linear_layers/{layers - 1}/dense/kernel'][-1] if layers else 0
  head = shapes.get(f'{SUPERVISED_HEAD}/linear_layer/dense/kernel')
  return Architecture(
      resnet_depth=depth, width_multiplier=width, cifar_stem=cifar_stem, sk_ratio=sk_ratio, se_ratio=se_ratio,
      proj_head_mode='nonlinear' if layers else 'none', num_proj_layers=layers, proj_out_dim=out_dim or 128,
      num_classes=int(head[-1]) if head else None)


def _head_positions(arch: Architecture, head_input_width: int) -> list[tuple[int, typing.Optional[str]]]:
  """[(ft_proj_selector, linear_eval_endpoint)] whose features have the supervised head's input width."""
  final = resnet_shapes.output_width(arch.resnet_depth, arch.width_multiplier)
  widths = [final] * arch.num_proj_layers + [arch.proj_out_dim if arch.num_proj_layers else final]
  positions = [(j, None) for j, width in enumerate(widths) if width == head_input_width]
  for g in range(3):  # a linear-evaluation head on an earlier block group (--linear_eval_endpoint)
    width = resnet_shapes.channels(64 * 2 ** g * resnet_shapes.expansion(arch.resnet_depth), arch.width_multiplier)
    if width == head_input_width:
      positions.append((0, f'block_group{g + 1}'))
  return positions


# ------------------------------------------------------------------------------------------- reading


@dataclasses.dataclass(frozen=True)
class ModelFile:
  """What `inspect` found: `tensors` maps structural keys to (checkpoint key, shape) in `prefix`."""
  path: str
  kind: str  # 'SavedModel' or 'training checkpoint'
  authors: bool  # written by the SimCLR authors' code (else by this project)
  prefix: str
  saved_model_dir: typing.Optional[str]
  step: int
  architecture: Architecture
  tensors: dict

  def describe(self) -> str:
    who = "the authors'" if self.authors else "this project's"
    return f'{who} {self.kind} {self.path} (step {self.step}): {self.architecture.describe()}'


def resolve(path: str) -> tuple[str, str, typing.Optional[str]]:
  """(kind, variables prefix, SavedModel dir or None) of a model path: a SavedModel (or the folder holding
  `saved_model/`), a checkpoint prefix `ckpt-N`, or a folder with a `checkpoint` file (its latest)."""
  path = path.rstrip('/') if len(path) > 1 else path
  if tf.io.gfile.exists(os.path.join(path, 'saved_model.pb')):
    return 'SavedModel', os.path.join(path, 'variables', 'variables'), path
  if tf.io.gfile.isdir(path):
    latest = _latest_checkpoint(path)
    if latest:
      return 'training checkpoint', latest, None
    exported = rundir.export_root(path)
    if tf.io.gfile.exists(os.path.join(exported, 'saved_model.pb')):
      return resolve(exported)
    steps = rundir.exported_steps(path)  # this project's model_dir without checkpoints: its newest export
    if steps:
      return resolve(rundir.export_path(path, steps[-1]))
    raise ModelFileError(f'{path} holds no SavedModel (saved_model.pb) and no training checkpoint (a '
                         '"checkpoint" file, or ckpt-N.index).')
  if tf.io.gfile.exists(path + '.index'):
    return 'training checkpoint', path, None
  prefix = re.sub(r'\.(index|data-\d+-of-\d+)$', '', path)
  if prefix != path and tf.io.gfile.exists(prefix + '.index'):
    raise ModelFileError(f'{path} is one file of the checkpoint {prefix}: pass that prefix (or its folder).')
  if tf.io.gfile.exists(path):
    raise ModelFileError(f'{path} is a file, not a checkpoint prefix (ckpt-N), a folder with a "checkpoint" file '
                         'or a SavedModel folder.')
  raise ModelFileError(f'{path} does not exist.')


def _latest_checkpoint(folder: str) -> typing.Optional[str]:
  """The prefix a folder's `checkpoint` file names -- beside it if the recorded path is elsewhere (a folder copied
  from another machine or bucket keeps the absolute paths it was written with) -- else the folder's newest
  `ckpt-<step>`, else None."""
  state = None
  if tf.io.gfile.exists(os.path.join(folder, 'checkpoint')):
    try:
      state = tf.train.get_checkpoint_state(folder)  # None if unreadable
    except ValueError:
      pass
  named = state.model_checkpoint_path if state else ''
  for prefix in (os.path.join(folder, os.path.basename(named)), named) if named else ():
    if tf.io.gfile.exists(prefix + '.index'):
      return prefix
  paths = rundir.checkpoint_paths(folder)
  return paths[-1] if paths else None


def inspect(path: str) -> ModelFile:
  """Reads what `path` holds -- format, step and network -- from its object graph, without its tensors."""
  kind, prefix, saved_model_dir = resolve(path)
  try:
    graph = _ObjectGraph(prefix)
  except UNREADABLE + (ValueError,) as error:
    raise ModelFileError(f'{path} is not a readable TF2 checkpoint or SavedModel '
                         f'({error.__class__.__name__}: {str(error).splitlines()[0][:200]}).') from None
  model = graph.child(0, 'model')
  if model is None or graph.child(model, ENCODER) is None:
    raise ModelFileError(f'{path} is not a SimCLR model: its object graph has no model/{ENCODER}.')
  leaves = _structural_keys(model, graph.children, lambda node: graph.checkpoint_key(node) is not None)
  placed = set(leaves.values())
  for part in (ENCODER, PROJECTION_HEAD, SUPERVISED_HEAD):
    node = graph.child(model, part)
    stray = graph.variables_below(node) - placed if node is not None else set()
    if stray:
      raise ModelFileError(f'{path} is not a SimCLR model this project can build: {len(stray)} variable(s) of '
                           f'model/{part} are outside its known layers, e.g. {graph.checkpoint_key(min(stray))}.')
  missing = [key for key, node in leaves.items() if graph.checkpoint_key(node) not in graph.shapes]
  if missing:
    raise ModelFileError(f'{path} is incomplete: no value for {len(missing)} variable(s), e.g. {missing[0]}.')
  tensors = {key: (graph.checkpoint_key(node), tuple(graph.shapes[graph.checkpoint_key(node)]))
             for key, node in leaves.items()}
  arch = _infer_architecture({key: shape for key, (_, shape) in tensors.items()}, path)
  # The authors' export keeps `trainable_variables_list` on its root, their training checkpoint `global_step`.
  authors = graph.child(0, 'trainable_variables_list' if kind == 'SavedModel' else 'global_step') is not None
  step = _step(graph, kind, prefix, saved_model_dir)
  file = ModelFile(path, kind, authors, prefix, saved_model_dir, step, arch, tensors)
  if arch.num_classes is not None:
    arch = dataclasses.replace(arch, **_head_position(file, graph))
  return dataclasses.replace(file, architecture=arch)


def _step(graph: _ObjectGraph, kind: str, prefix: str, saved_model_dir: typing.Optional[str]) -> int:
  """The global step: the authors' `global_step` variable, this project's `ckpt-<step>` name, or an export's
  `saved_model/<step>` folder; else 0."""
  node = graph.child(0, 'global_step')
  if node is not None and kind == 'training checkpoint':
    return int(graph.reader.get_tensor(graph.checkpoint_key(node)))
  name = os.path.basename(saved_model_dir if saved_model_dir else prefix)
  number = name.rsplit('-', 1)[-1]
  return int(number) if number.isdigit() else 0


def _head_position(file: ModelFile, graph: _ObjectGraph) -> dict:
  """Where the file's supervised head reads, when its input width leaves several layers possible: found by
  running the SavedModel, or from the flags.json of the run that wrote the checkpoint."""
  arch = file.architecture
  width = file.tensors[f'{SUPERVISED_HEAD}/linear_layer/dense/kernel'][1][0]
  positions = _head_positions(arch, width)
  if not positions:
    raise ModelFileError(f'{file.path}: its supervised head reads {width} features, which no layer of '
                         f'{arch.describe()} has.')
  chosen = None
  if len(positions) > 1 and file.saved_model_dir:
    try:
      chosen = _probe_head_position(file, graph, positions)
    except ModelFileError:
      raise
    except (tf.errors.OpError, ValueError, TypeError, KeyError) as error:  # a SavedModel that does not run so
      logging.warning('%s: could not run it to find its head\'s input (%s).', file.path, first_line(error))
  if len(positions) > 1 and chosen is None:
    chosen = _head_position_from_flags(file, positions)
  if chosen is None:
    chosen = positions[0]
    if len(positions) > 1:
      logging.warning('%s: assuming its supervised head reads %s (no flags.json beside it says which of %s).',
                      file.path, chosen[1] or f'projection layer {chosen[0]}', positions)
  return {'ft_proj_selector': chosen[0], 'linear_eval_endpoint': chosen[1]}


def _head_position_from_flags(file: ModelFile, positions: list[tuple]) -> typing.Optional[tuple]:
  folder = os.path.dirname(file.prefix)
  for run_dir in (folder, os.path.dirname(folder)):
    try:
      flags = rundir.read_flags(run_dir)
    except ValueError:
      continue
    if flags is None:
      continue
    endpoint = flags.get('linear_eval_endpoint') if flags.get('train_mode') == 'linear_eval' else None
    selector = model_lib.selector_index(int(flags.get('ft_proj_selector', 0)), file.architecture.num_proj_layers)
    position = (0 if endpoint else selector, endpoint if endpoint != 'final_avg_pool' else None)
    if position in positions:
      return position
  return None


def _probe_head_position(file: ModelFile, graph: _ObjectGraph, positions: list[tuple]) -> tuple:
  """Runs the SavedModel on a few images and recomputes its logits from each candidate layer's features."""
  loaded = tf.saved_model.load(file.saved_model_dir)
  size = 32 if file.architecture.cifar_stem else 64
  images = tf.random.stateless_uniform([2, size, size, 3], seed=[1, 2])
  outputs = {k: v.numpy().astype(np.float64) for k, v in loaded(images, trainable=False).items()}
  value = lambda key: graph.reader.get_tensor(file.tensors[key][0]).astype(np.float64)
  hiddens = [outputs['proj_head_input']]
  for j in range(file.architecture.num_proj_layers):
    layer = f'{PROJECTION_HEAD}/linear_layers/{j}/'
    h = hiddens[-1] @ value(layer + 'dense/kernel')
    if layer + 'dense/bias' in file.tensors:
      h += value(layer + 'dense/bias')
    bn = layer + 'bn_relu/bn/'
    h = (h - value(bn + 'moving_mean')) / np.sqrt(value(bn + 'moving_variance') + resnet.BATCH_NORM_EPSILON)
    h = h * value(bn + 'gamma') + (value(bn + 'beta') if bn + 'beta' in file.tensors else 0.0)
    hiddens.append(np.maximum(h, 0.0) if j < file.architecture.num_proj_layers - 1 else h)
  head = f'{SUPERVISED_HEAD}/linear_layer/dense/'
  errors = {}
  for selector, endpoint in positions:
    features = outputs[endpoint].mean((1, 2)) if endpoint else hiddens[selector]
    logits = features @ value(head + 'kernel') + value(head + 'bias')
    errors[(selector, endpoint)] = np.abs(logits - outputs['logits_sup']).max() / (
        np.abs(outputs['logits_sup']).max() + 1e-12)
  best = min(positions, key=lambda p: errors[p])
  if errors[best] > 1e-3:
    raise ModelFileError(f'{file.path}: its logits_sup match no candidate input of its supervised head '
                         f'(relative errors {errors}).')
  return best
