"""torch_export.py and simclr_torch.py: the authors' models (../shared/fixtures/authors_tf2, written by their own
tf2 code) and this project's runs in PyTorch and ONNX Runtime, every endpoint to 1e-4 of the TF model's; the
authors' evaluation preprocessing in torch; torchvision's key layout; what a bad export does."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

torch = pytest.importorskip('torch')
ort = pytest.importorskip('onnxruntime')

import architecture  # pylint: disable=g-import-not-at-top,wrong-import-position
import config as config_lib  # pylint: disable=wrong-import-position
import data_util  # pylint: disable=wrong-import-position
import model as model_lib  # pylint: disable=wrong-import-position
import shapes_dataset  # pylint: disable=wrong-import-position
import simclr_torch  # pylint: disable=wrong-import-position
import torch_export  # pylint: disable=wrong-import-position
from model_files import FIXTURE_NAMES, fixture, save_run  # pylint: disable=wrong-import-position

TOLERANCE = 1e-4  # max abs error over max abs value, per endpoint


def nhwc(value):
  value = value.detach().numpy() if isinstance(value, torch.Tensor) else value
  return value.transpose(0, 2, 3, 1) if value.ndim == 4 else value


def worst_error(expected, outputs):
  """{endpoint: max |error| / max |expected|} over the endpoints of `expected` (NHWC), `outputs` NCHW."""
  return {key: float(np.abs(nhwc(outputs[key]) - value).max() / np.abs(value).max()) for key, value in expected.items()}


def run_onnx(path, images_nhwc):
  session = ort.InferenceSession(os.path.join(path, 'model.onnx'), providers=['CPUExecutionProvider'])
  names = [output.name for output in session.get_outputs()]
  return dict(zip(names, session.run(None, {'images': np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))})))


@pytest.mark.parametrize('name', FIXTURE_NAMES)
def test_the_authors_models_in_torch_and_onnx_give_every_endpoint(name, tmp_path):
  """Their SavedModel and their training checkpoint export the same weights; torch and ONNX Runtime reproduce
  every endpoint the authors' own code computed, the classifier's top-1 included."""
  folder, _, inputs, expected = fixture(name)
  paths = [torch_export.export_torch(architecture.inspect(os.path.join(folder, kind)), str(tmp_path / kind))
           for kind in ('saved_model', 'ckpt')]
  for path in paths:
    with torch.no_grad():
      outputs = simclr_torch.load(path)(torch.from_numpy(inputs).permute(0, 3, 1, 2))
    assert set(outputs) == set(expected)
    errors = worst_error(expected, outputs)
    assert max(errors.values()) < TOLERANCE, errors
  onnx = torch_export.export_onnx(architecture.inspect(os.path.join(folder, 'saved_model')), str(tmp_path / 'o'),
                                  image_size=inputs.shape[1])
  outputs = run_onnx(onnx, inputs)
  errors = worst_error(expected, outputs)
  assert max(errors.values()) < TOLERANCE, errors
  if 'logits_sup' in expected:
    assert (outputs['logits_sup'].argmax(1) == expected['logits_sup'].argmax(1)).all()


def random_run(tmp_path, name, train_mode, seed, **settings):
  """A model of this project with seeded random values in every variable (BatchNorm statistics included, so a
  misplaced one shows), written as a training checkpoint of step 7 in tmp_path/name."""
  cfg = config_lib.Config.defaults(train_mode=train_mode, precision='float32', global_bn=False, **settings)
  net = model_lib.build(cfg, 5)
  for i, variable in enumerate(net.variables):
    values = tf.random.stateless_normal(variable.shape, seed=[seed, i], stddev=0.3)
    variable.assign(tf.abs(values) + 0.5 if 'moving_variance' in variable.path else values)
  save_run(net, tmp_path / name, 7, {'train_mode': train_mode, 'ft_proj_selector': cfg.model.ft_proj_selector,
                                     'linear_eval_endpoint': cfg.model.linear_eval_endpoint})
  return net, str(tmp_path / name)


OWN_RUNS = {
    # CIFAR stem, squeeze-excitation, a linear-evaluation head on an earlier block group.
    'cifar_se_linear_eval': ('linear_eval', dict(resnet_depth=18, width_multiplier=0.25, image_size=32, se_ratio=0.25,
                                                 linear_eval_endpoint='block_group3')),
    # Basic blocks with SK (ResNet-D stem and shortcuts), ImageNet stem, an online linear head.
    'resnet_d_pretrain': ('pretrain', dict(resnet_depth=18, width_multiplier=0.125, image_size=40, sk_ratio=0.0625)),
    # Bottlenecks at a fractional width (6, 12, 25, 51 channels) with SE, fine-tuned from projection layer 2.
    'fractional_finetune': ('finetune', dict(resnet_depth=50, width_multiplier=0.1, image_size=48, se_ratio=0.25,
                                             ft_proj_selector=2)),
    # Selective kernels in bottlenecks, a 1-layer linear projection head.
    'sk_bottleneck': ('finetune', dict(resnet_depth=50, width_multiplier=0.125, image_size=33, sk_ratio=0.0625,
                                       proj_head_mode='linear', proj_out_dim=16)),
}


@pytest.mark.parametrize('name', sorted(OWN_RUNS))
def test_this_projects_runs_in_torch_and_onnx_give_every_endpoint(name, tmp_path):
  train_mode, settings = OWN_RUNS[name]
  net, run_dir = random_run(tmp_path, name, train_mode, seed=len(name), **settings)
  size = settings['image_size']
  images = tf.random.stateless_uniform([3, size, size, 3], seed=[1, len(name)])
  expected = {key: value.numpy() for key, value in net(images, training=False).items() if value is not None}
  file = architecture.inspect(run_dir)
  path = torch_export.export_torch(file, run_dir)
  assert path == os.path.join(run_dir, 'torch', '7')
  assert set(os.listdir(path)) == {'model.safetensors', 'config.json', 'simclr_torch.py'}
  with torch.no_grad():
    outputs = simclr_torch.load(path)(torch.from_numpy(images.numpy()).permute(0, 3, 1, 2))
  errors = worst_error(expected, outputs)
  assert set(outputs) == set(expected) and max(errors.values()) < TOLERANCE, errors
  errors = worst_error(expected, run_onnx(torch_export.export_onnx(file, run_dir, image_size=size), images.numpy()))
  assert max(errors.values()) < TOLERANCE, errors


def test_a_fine_tuned_classifier_predicts_the_same_in_tf_torch_and_onnx(tmp_path):
  """The held-out images of the embedded dataset through the authors' evaluation preprocessing, in TF (data_util)
  and in torch (simclr_torch.preprocess, from the uint8 images): the same inputs to 1e-5, then the same predicted
  class for every image in all three runtimes."""
  net, run_dir = random_run(tmp_path, 'classifier', 'finetune', seed=3, resnet_depth=18, width_multiplier=0.25,
                            image_size=40, cifar_stem=False)
  pixels = np.stack([image for _, image, _ in shapes_dataset.generate('test', 64)])  # uint8 [64, 32, 32, 3]
  tf_inputs = data_util.preprocess_for_eval(tf.constant(pixels), 40, 40).numpy()
  torch_inputs = simclr_torch.preprocess(torch.from_numpy(pixels).permute(0, 3, 1, 2), 40)
  np.testing.assert_allclose(nhwc(torch_inputs), tf_inputs, atol=1e-5)
  predicted = net(tf_inputs, training=False)['logits_sup'].numpy().argmax(1)
  assert len(set(predicted)) > 1  # a classifier, not a constant
  file = architecture.inspect(run_dir)
  with torch.no_grad():
    torch_predicted = simclr_torch.load(torch_export.export_torch(file, run_dir))(torch_inputs)['logits_sup']
  onnx_predicted = run_onnx(torch_export.export_onnx(file, run_dir, image_size=40), nhwc(torch_inputs))['logits_sup']
  np.testing.assert_array_equal(torch_predicted.numpy().argmax(1), predicted)
  np.testing.assert_array_equal(onnx_predicted.argmax(1), predicted)


@pytest.mark.parametrize('size, shape', [(224, (300, 400)), (224, (257, 256)), (32, (32, 32)), (24, (40, 30))])
def test_preprocess_is_the_authors_evaluation_crop_and_tensorflows_bicubic(size, shape):
  pixels = np.random.default_rng(size).integers(0, 256, (2, *shape, 3), dtype=np.uint8)
  expected = data_util.preprocess_for_eval(tf.constant(pixels), size, size, crop=size > 32).numpy()
  for images in (torch.from_numpy(pixels).permute(0, 3, 1, 2), torch.from_numpy(pixels / 255.).permute(0, 3, 1, 2)):
    np.testing.assert_allclose(nhwc(simclr_torch.preprocess(images, size)), expected, atol=2e-5)


def torchvision_resnet_keys(depth):
  """{key: shape} of torchvision.models.resnet50/101/152().state_dict(), written out from torchvision's definition
  (Bottleneck: conv1 1x1, conv2 3x3 with the stride, conv3 1x1 to 4x; downsample = 1x1 conv + BN on each
  layer's first block; fc 2048 -> 1000)."""
  blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}[depth]
  keys = {'conv1.weight': (64, 3, 7, 7)}
  bn = lambda prefix, n: {f'{prefix}.weight': (n,), f'{prefix}.bias': (n,), f'{prefix}.running_mean': (n,),
                          f'{prefix}.running_var': (n,), f'{prefix}.num_batches_tracked': ()}
  keys.update(bn('bn1', 64))
  inplanes = 64
  for layer, (count, planes) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
    for b in range(count):
      prefix = f'layer{layer}.{b}'
      keys.update({f'{prefix}.conv1.weight': (planes, inplanes, 1, 1), f'{prefix}.conv2.weight': (planes, planes, 3, 3),
                   f'{prefix}.conv3.weight': (planes * 4, planes, 1, 1)})
      for i, n in ((1, planes), (2, planes), (3, planes * 4)):
        keys.update(bn(f'{prefix}.bn{i}', n))
      if b == 0:
        keys[f'{prefix}.downsample.0.weight'] = (planes * 4, inplanes, 1, 1)
        keys.update(bn(f'{prefix}.downsample.1', planes * 4))
      inplanes = planes * 4
  keys.update({'fc.weight': (1000, 2048), 'fc.bias': (1000,)})
  return keys


def test_a_plain_resnet_50_is_also_written_under_torchvisions_names(tmp_path):
  """A full-width ResNet-50 fine-tuned on its pooled features (1000 classes) gets torchvision.safetensors with
  exactly resnet50()'s keys and shapes, fc included; simclr_torch computes the same logits from either file when
  its stem pool pads as torchvision's does, and they differ only by that max-pool."""
  net, run_dir = random_run(tmp_path, 'r50', 'finetune', seed=5, resnet_depth=50, width_multiplier=1, image_size=64)
  net_classes = net.supervised_head.linear_layer.dense.kernel.shape[-1]
  path = torch_export.export_torch(architecture.inspect(run_dir), run_dir)
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  ours, theirs = load_file(os.path.join(path, 'model.safetensors')), load_file(os.path.join(path, 'torchvision.safetensors'))
  want = torchvision_resnet_keys(50)
  want.update({'fc.weight': (net_classes, 2048), 'fc.bias': (net_classes,)})
  assert {key: tuple(value.shape) for key, value in theirs.items()} == want
  assert json.load(open(os.path.join(path, 'config.json')))['torchvision'] == 'torchvision.models.resnet50'
  np.testing.assert_array_equal(theirs['layer3.0.downsample.0.weight'],
                                ours['resnet_model.block_groups.2.layers.0.projection_layers.0.conv2d.weight'])
  np.testing.assert_array_equal(theirs['layer4.2.bn3.running_var'],
                                ours['resnet_model.block_groups.3.layers.2.conv_relu_dropblock_layers.5.bn.running_var'])
  np.testing.assert_array_equal(theirs['fc.weight'], ours['supervised_head.linear_layer.dense.weight'])


def test_no_torchvision_file_where_the_network_is_not_torchvisions(tmp_path):
  _, run_dir = random_run(tmp_path, 'r50_sk', 'finetune', seed=6, resnet_depth=50, width_multiplier=0.125,
                          image_size=32, cifar_stem=False, sk_ratio=0.0625)
  path = torch_export.export_torch(architecture.inspect(run_dir), run_dir)
  assert not os.path.exists(os.path.join(path, 'torchvision.safetensors'))
  assert json.load(open(os.path.join(path, 'config.json')))['torchvision'] is None


def test_an_export_replaces_its_earlier_self_and_a_failed_one_leaves_nothing_loadable(tmp_path, monkeypatch):
  _, run_dir = random_run(tmp_path, 'run', 'pretrain', seed=7, resnet_depth=18, width_multiplier=0.125, image_size=32)
  file = architecture.inspect(run_dir)
  path = torch_export.export_torch(file, run_dir)
  (tmp_path / 'run' / 'torch' / '7' / 'stale.txt').write_text('from an earlier export')
  assert torch_export.export_torch(file, run_dir) == path and not os.path.exists(os.path.join(path, 'stale.txt'))

  def full_disk(*args, **kwargs):
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr('safetensors.numpy.save_file', full_disk)
  other = str(tmp_path / 'other')
  with pytest.raises(architecture.ModelFileError) as error:
    torch_export.export_torch(file, other)
  assert str(error.value) == (f'cannot write the export {other}/torch/7: OSError: [Errno 28] No space left on '
                              'device')
  assert not os.path.exists(os.path.join(other, 'torch', '7')) and not os.path.exists(os.path.join(other, 'torch',
                                                                                                   '7.tmp'))
