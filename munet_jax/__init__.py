"""munet_jax: MUNet semi-supervised video object segmentation in JAX/Flax.

Layers (one direction only): `munet_jax.data` (files -> tf.data; the only place
TensorFlow is imported) -> `munet_jax.models` (pure Flax modules) ->
train / evaluate / inference loops. Importing `munet_jax` imports neither.
"""

__version__ = "0.1.0"
