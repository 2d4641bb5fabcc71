"""Test-session setup: two logical CPU devices, so tf.distribute tests can run two replicas on any machine.

Logical devices must be configured before TensorFlow initialises its devices, i.e. before any test touches
TensorFlow; pytest imports this file first. Single-device code keeps using /cpu:0 as usual.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as tf  # pylint: disable=g-import-not-at-top

_cpus = tf.config.list_physical_devices('CPU')
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
