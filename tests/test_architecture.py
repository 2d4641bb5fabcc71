"""architecture.py: what network a file holds, read from its object graph -- the authors' fixtures, copies,
flags.json beside a checkpoint, contradicting flags, and files that are not SimCLR models."""

import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

import config as config_lib
import architecture
import model as model_lib
from model_files import FIXTURES, build, fixture, save_run, write_from_keys


def test_a_checkpoint_folder_and_its_prefix_are_the_same_file():
  folder = os.path.join(FIXTURES, 'r18_cifar_pretrain')
  by_folder = architecture.inspect(os.path.join(folder, 'ckpt'))
  by_prefix = architecture.inspect(os.path.join(folder, 'ckpt', 'ckpt-1'))
  assert by_folder.prefix == by_prefix.prefix and by_folder.architecture == by_prefix.architecture
  assert architecture.inspect(folder).kind == 'SavedModel'  # the folder holding saved_model/

def test_the_fine_tuned_head_position_comes_from_the_savedmodel_not_from_flags(tmp_path):
  """SavedModel: found by running it (no flags.json near the copy); checkpoint: from the run's flags.json."""
  folder = os.path.join(FIXTURES, 'r50_sk0_finetune')
  copy = tmp_path / 'copy'
  for sub in ('saved_model', 'ckpt'):
    tf.io.gfile.makedirs(str(copy / sub))
    for path in tf.io.gfile.glob(os.path.join(folder, sub, '*')):
      if tf.io.gfile.isdir(path):
        tf.io.gfile.makedirs(str(copy / sub / os.path.basename(path)))
        for inner in tf.io.gfile.glob(os.path.join(path, '*')):
          tf.io.gfile.copy(inner, str(copy / sub / os.path.basename(path) / os.path.basename(inner)))
      else:
        tf.io.gfile.copy(path, str(copy / sub / os.path.basename(path)))
  assert architecture.inspect(str(copy / 'saved_model')).architecture.ft_proj_selector == 1
  assert architecture.inspect(str(copy / 'ckpt')).architecture.ft_proj_selector == 0  # ambiguous, no flags: 0
  (copy / 'flags.json').write_text(json.dumps({'ft_proj_selector': 1, 'train_mode': 'finetune'}))
  assert architecture.inspect(str(copy / 'ckpt')).architecture.ft_proj_selector == 1

def test_the_authors_selector_minus_one_is_the_heads_last_layer(tmp_path):
  """Their flags.json may say ft_proj_selector=-1 ("the final layer"); every projection layer of ResNet-18 x0.25
  with a 128-d output has the head's input width, so only the flags tell where it reads."""
  keras.utils.set_random_seed(2)
  net = model_lib.SimCLRModel(5, config_lib.ModelConfig(
      resnet_depth=18, width_multiplier=0.25, cifar_stem=True, global_bn=False, ft_proj_selector=-1),
                              train_mode='finetune')
  net(tf.zeros([1, 32, 32, 3]), training=False)
  assert net._projection_head.ft_proj_selector == 3
  save_run(net, tmp_path / 'run', 7, {'ft_proj_selector': -1, 'train_mode': 'finetune'})
  arch = architecture.inspect(str(tmp_path / 'run')).architecture
  assert (arch.ft_proj_selector, arch.num_proj_layers) == (3, 3)
  assert arch.head_fits(5, 'finetune', -1, 'final_avg_pool') and not arch.head_fits(5, 'finetune', 0, None)

def test_a_checkpoint_folder_copied_from_elsewhere_is_read_from_where_it_is(tmp_path):
  """Its `checkpoint` file names absolute paths where it was written (gone, or still there); or it has none."""
  net = model_lib.SimCLRModel(3, config_lib.ModelConfig(
      resnet_depth=18, width_multiplier=0.125, cifar_stem=True, global_bn=False), train_mode='finetune')
  net(tf.zeros([1, 32, 32, 3]), training=False)
  original, folder = tmp_path / 'original', tmp_path / 'copy'
  save_run(net, original, 9)
  shutil.copytree(original, folder)
  for written_at in (original, '/elsewhere/run'):
    (folder / 'checkpoint').write_text(f'model_checkpoint_path: "{written_at}/ckpt-9"\n')
    assert architecture.inspect(str(folder)).prefix == str(folder / 'ckpt-9')
  (folder / 'checkpoint').unlink()
  file = architecture.inspect(str(folder))
  assert (file.prefix, file.step, file.architecture.width_multiplier) == (str(folder / 'ckpt-9'), 9, 0.125)

def test_contradictions_name_the_flag_and_both_values():
  arch = architecture.inspect(os.path.join(FIXTURES, 'r50_sk1_pretrain', 'ckpt')).architecture
  assert arch.contradictions({'resnet_depth': 50, 'width_multiplier': 0.125, 'sk_ratio': 0.0625}) == []
  assert arch.contradictions({'resnet_depth': 18}) == [('resnet_depth', 18, 50)]
  assert arch.contradictions({'width_multiplier': 0.13}) == [('width_multiplier', 0.13, 0.125)]  # 66 vs 64 channels
  assert arch.contradictions({'width_multiplier': 0.1252}) == []  # the same channels: the same network
  assert arch.contradictions({'sk_ratio': 0.0}) == [('sk_ratio', 0.0, 0.0625)]
  assert arch.contradictions({'sk_ratio': 0.1}) == []  # the same attention widths (32) at this width
  assert arch.contradictions({'proj_head_mode': 'linear'}) == [('proj_head_mode', 'linear', 'nonlinear')]
  assert arch.contradictions({'num_proj_layers': 2}) == [('num_proj_layers', 2, 3)]
  assert arch.contradictions({'proj_head_mode': 'linear', 'num_proj_layers': 1})[0][0] == 'proj_head_mode'
  assert arch.contradictions({'cifar_stem': True}) == [('cifar_stem', True, False)]
  assert arch.contradictions({'learning_rate': 0.1}) == []  # not a model flag

def test_strays_outside_the_known_layers_are_refused(tmp_path):
  folder, _, _, _ = fixture('r18_cifar_pretrain')
  net = build(architecture.inspect(os.path.join(folder, 'ckpt')).architecture)
  variables = {key: v.numpy() for key, v in architecture.model_variables(net).items()}
  variables['resnet_model/block_groups/0/layers/0/dropblock/kernel'] = np.zeros([3])  # a layer we do not know
  with pytest.raises(architecture.ModelFileError, match='outside its known layers'):
    architecture.inspect(write_from_keys(variables, str(tmp_path / 'stray' / 'ckpt-1')))

def test_a_files_head_is_kept_only_where_it_fits():
  arch = architecture.inspect(os.path.join(FIXTURES, 'r50_sk0_finetune', 'ckpt')).architecture  # 10 classes, layer 1
  assert arch.head_fits(10, 'finetune', 1, 'final_avg_pool')
  assert not arch.head_fits(10, 'finetune', 0, 'final_avg_pool')  # another input layer
  assert not arch.head_fits(3, 'finetune', 1, 'final_avg_pool')  # another number of classes
  assert not arch.head_fits(10, 'linear_eval', 1, 'final_avg_pool')  # linear evaluation reads the encoder
  pretrained = architecture.inspect(os.path.join(FIXTURES, 'r18_cifar_pretrain', 'ckpt')).architecture
  assert pretrained.head_fits(10, 'linear_eval', 0, 'final_avg_pool')
  assert not pretrained.head_fits(10, 'linear_eval', 0, 'block_group3')
  assert arch.as_is_flags() == dict(arch.model_flags(), fine_tune_after_block=-1, zero_init_logits_layer=False,
                                    train_mode='finetune', ft_proj_selector=1)
