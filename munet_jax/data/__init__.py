"""Datasets and the tf.data input pipeline: the only layer that imports TensorFlow.

Modules here never import flax or the model code.
"""
